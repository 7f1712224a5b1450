"""Kiosks and counters where card meters' purchases are written: whether one takes cards now, and
where it is; the resident's page names the nearest working one."""

from dataclasses import dataclass
from enum import StrEnum


class KioskStatus(StrEnum):
    WORKING = "working"
    OUT_OF_ORDER = "out_of_order"
    CLOSED = "closed"


@dataclass(frozen=True)
class Kiosk:
    id: str
    name: str
    channel_id: str
    community: str
    address: str
    latitude: float
    longitude: float
    status: str
    opening_hours: str = ""  # as people read them, "07:00-22:00" or "24h"; "" not known
