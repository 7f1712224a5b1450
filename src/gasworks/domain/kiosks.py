"""A kiosk where residents top up IC cards; the resident's page names the nearest working one."""

from dataclasses import dataclass


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
