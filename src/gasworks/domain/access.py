"""Who calls the API: the roles an API key carries, and a key's record (its role, and the one channel a device key may act for)."""

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Role(StrEnum):
    OPERATOR = "operator"  # runs the utility: accounts, orders, holds
    AUDITOR = "auditor"  # reads everything, changes nothing
    DEVICE = "device"  # a kiosk or counter, acting for one channel


@dataclass(frozen=True)
class ApiKeyRecord:
    id: str
    name: str
    role: str
    channel_id: str | None
    created_at: datetime
    revoked_at: datetime | None
