"""The kiosk registry (圈存 self-service machines and counters) and "where is the nearest one"."""

import math
import re

from gasworks.domain.channels import ChannelKind
from gasworks.domain.errors import Conflict, InvalidInput
from gasworks.domain.kiosks import Kiosk, KioskStatus
from gasworks.services.channels import require_channel
from gasworks.services.unit_of_work import UnitOfWork

_KIOSK_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,39}$")
_OPENING_HOURS = re.compile(r"^(|24h|([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-4]):[0-5]\d)$")
NEAREST_MAX = 3
EARTH_RADIUS_M = 6_371_000


def add_kiosk(kiosk: Kiosk, uow: UnitOfWork, *, actor: str) -> Kiosk:
    if not _KIOSK_ID.match(kiosk.id):
        raise InvalidInput("kiosk id: 2 to 40 lowercase letters, digits or dashes", code="INVALID_KIOSK_ID")
    if not (-90 <= kiosk.latitude <= 90 and -180 <= kiosk.longitude <= 180):
        raise InvalidInput(f"({kiosk.latitude}, {kiosk.longitude}) is not a latitude and longitude", code="INVALID_LOCATION")
    if not _OPENING_HOURS.match(kiosk.opening_hours):
        raise InvalidInput('opening hours: "HH:MM-HH:MM" (e.g. "07:00-22:00"), "24h", or empty', code="INVALID_OPENING_HOURS")
    if kiosk.status not in {s.value for s in KioskStatus}:
        raise InvalidInput(f"kiosk status must be one of {', '.join(KioskStatus)}", code="INVALID_KIOSK_STATUS")
    with uow:
        channel = require_channel(uow, kiosk.channel_id)
        if channel.kind not in (ChannelKind.KIOSK, ChannelKind.COUNTER):
            raise Conflict(f"channel {channel.id} is a {channel.kind} channel, not a kiosk or counter", code="NOT_A_DEVICE_CHANNEL")
        if not uow.kiosks.add(kiosk, uow.clock.now()):
            raise Conflict(f"kiosk {kiosk.id} exists", code="KIOSK_EXISTS")
        uow.audit.append(at=uow.clock.now(), actor=actor, action="kiosk.add", subject=f"kiosk:{kiosk.id}", detail={"community": kiosk.community})
        uow.commit()
    return kiosk


def set_kiosk_status(kiosk_id: str, status: KioskStatus, uow: UnitOfWork, *, actor: str) -> None:
    with uow:
        if uow.kiosks.set_status(kiosk_id, status.value) != 1:
            raise InvalidInput(f"no kiosk {kiosk_id!r}", code="KIOSK_NOT_FOUND")
        uow.audit.append(at=uow.clock.now(), actor=actor, action="kiosk.status", subject=f"kiosk:{kiosk_id}", detail={"status": status.value})
        uow.commit()


def list_kiosks(uow: UnitOfWork, *, status: str | None = None) -> list[Kiosk]:
    with uow:
        return uow.kiosks.list(status=status)


def distance_m(a: tuple[float, float], b: tuple[float, float]) -> int:
    """Great-circle distance (haversine), whole metres."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return round(2 * EARTH_RADIUS_M * math.asin(math.sqrt(h)))


def nearest_working(kiosks: list[Kiosk], *, home: tuple[float, float] | None, community: str) -> list[tuple[Kiosk, int | None]]:
    """Working kiosks nearest the home; without a position, those in the resident's community first."""
    working = [k for k in kiosks if k.status == KioskStatus.WORKING]
    if home is not None:
        ranked = sorted(((k, distance_m(home, (k.latitude, k.longitude))) for k in working), key=lambda kd: kd[1])
        return [(k, d) for k, d in ranked[:NEAREST_MAX]]
    same_first = sorted(working, key=lambda k: (k.community != community, k.id))
    return [(k, None) for k in same_first[:NEAREST_MAX]]
