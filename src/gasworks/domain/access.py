"""Who calls the API: an API key's record (its role, and the one channel a device key may act for)."""

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    name: str
    role: str
    channel_id: str | None
    created_at: datetime
    revoked_at: datetime | None
