"""Meters behind an NB-IoT carrier platform (CTWing first), as plain data and rules.

A meter registered on a platform is reached through that platform's northbound API instead of
MQTT: gasworks creates a command there, the platform caches it until the meter's module wakes,
and the platform pushes the meter's reports, the command's status and the module's online and
offline events to our HTTP push URL. Three rules are written here:

- The time to live of a cached command is explicit: the meter's report interval plus a margin.
  A platform's default (CTWing: 7,200 s) is shorter than a daily report interval, so a purchase
  sent with it would expire before the meter ever woke.
- Platform states are mapped honestly: "delivered" means the module received the frame, never that
  the meter applied it. A purchase is applied only when the meter's own frame shows its serial.
- Nothing a push says about a meter is believed beyond the device it came from: a device is bound
  to one meter serial, and a frame claiming another meter's serial is refused.
"""

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from gasworks.domain.errors import InvalidInput
from gasworks.domain.frames import UplinkFrame

CTWING_TTL_S_MAX = 864_000  # CTWing accepts 0 to 864,000 s; 0 means "do not cache"
CTWING_TTL_S_DEFAULT = 7_200  # what CTWing uses when a command names no TTL: never relied on
REPORT_INTERVAL_S_MIN = 60
DEVICE_ID_CHARS_MAX = 64
PRODUCT_ID_CHARS_MAX = 32
IMEI_CHARS_MAX = 20


class CarrierPlatform(StrEnum):
    CTWING = "ctwing"
    ONENET = "onenet"  # push shape documented; not implemented yet


class PushKind(StrEnum):
    DATA_REPORT = "dataReport"  # the meter's frame, base64 in payload.APPdata
    COMMAND_RESPONSE = "commandResponse"  # the platform's status of a command it holds
    ONLINE_OFFLINE = "deviceOnlineOfflineReport"  # the module attached or detached
    OTHER = "other"  # any other message type: taken and ignored, so the platform stops retrying


class PlatformCommandStatus(StrEnum):
    """CTWing's command states as it names them in commandResponse pushes."""

    SAVED = "SAVED"  # cached on the platform, waiting for the module
    SENT = "SENT"  # handed to the radio network
    DELIVERED = "DELIVERED"  # the module received it: the meter has not necessarily applied it
    SUCCESSFUL = "SUCCESSFUL"  # the module answered at the transport level: still not the meter's word
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"  # no answer in time: does not prove the module did not get it
    EXPIRED = "EXPIRED"  # its TTL passed before the module woke: it never left the platform
    CANCELLED = "CANCELLED"


# The module has the frame; the meter's own frame (acknowledgement or report) still has to show the serial.
REACHED_MODULE = frozenset({PlatformCommandStatus.DELIVERED, PlatformCommandStatus.SUCCESSFUL})
# Still cached on the platform: a second copy of the same command would only queue behind it.
STILL_CACHED = frozenset({PlatformCommandStatus.SAVED, PlatformCommandStatus.SENT})


def platform_status(text: str) -> PlatformCommandStatus | None:
    try:
        return PlatformCommandStatus(text.strip().upper())
    except ValueError:
        return None


@dataclass(frozen=True)
class CarrierDevice:
    """One meter's registration on a platform: the platform's device id, bound to one meter serial."""

    serial: str
    platform: CarrierPlatform
    device_id: str
    product_id: str
    imei: str
    report_interval_s: int  # how often this meter's model reports: its commands are cached at least this long
    registered_at: datetime
    online: bool | None = None  # the module's state as the platform last pushed it (not the meter's report)
    online_changed_at: datetime | None = None


def check_registration(device: CarrierDevice, *, ttl_margin_s: int) -> None:
    if not device.device_id or len(device.device_id) > DEVICE_ID_CHARS_MAX or not device.device_id.isprintable():
        raise InvalidInput(f"a platform device id is 1 to {DEVICE_ID_CHARS_MAX} printable characters", code="INVALID_DEVICE_ID")
    if not device.product_id or len(device.product_id) > PRODUCT_ID_CHARS_MAX or not device.product_id.isalnum():
        raise InvalidInput(f"a platform product id is 1 to {PRODUCT_ID_CHARS_MAX} letters or digits", code="INVALID_PRODUCT_ID")
    if len(device.imei) > IMEI_CHARS_MAX or not (device.imei == "" or device.imei.isdigit()):
        raise InvalidInput(f"an IMEI is up to {IMEI_CHARS_MAX} digits", code="INVALID_IMEI")
    command_ttl_s(device.report_interval_s, ttl_margin_s=ttl_margin_s)


def command_ttl_s(report_interval_s: int, *, ttl_margin_s: int, ttl_s_max: int = CTWING_TTL_S_MAX) -> int:
    """How long the platform must cache a command for this meter: one report interval and a margin.

    Refused (not clamped) when that is beyond what the platform accepts: a meter that reports less
    often than the platform can cache would silently never receive its purchase.
    """
    if report_interval_s < REPORT_INTERVAL_S_MIN:
        raise InvalidInput(f"a report interval is at least {REPORT_INTERVAL_S_MIN} s", code="INVALID_REPORT_INTERVAL")
    if ttl_margin_s < 0:
        raise InvalidInput("the TTL margin cannot be negative", code="INVALID_TTL_MARGIN")
    ttl_s = report_interval_s + ttl_margin_s
    if ttl_s > ttl_s_max:
        raise InvalidInput(
            f"report interval {report_interval_s} s + margin {ttl_margin_s} s = {ttl_s} s is more than the platform caches ({ttl_s_max} s)",
            code="TTL_BEYOND_PLATFORM",
        )
    return ttl_s


@dataclass(frozen=True)
class CarrierPush:
    """One push from a platform, parsed and bounded; `dedup_key` identifies it across the platform's retries."""

    platform: CarrierPlatform
    kind: PushKind
    message_type: str
    device_id: str
    product_id: str
    timestamp_ms: int
    dedup_key: str
    frame: bytes | None = None  # dataReport: the meter's frame as received (payload.APPdata, base64-decoded)
    uplink: UplinkFrame | None = None  # dataReport: that frame read where the push arrived (None: it could not be read)
    frame_unreadable: tuple[str, str] | None = None  # (code, reason) when it could not be read: refused as such, under the device's meter
    task_id: str | None = None  # commandResponse: which command
    status: PlatformCommandStatus | None = None  # commandResponse: its state
    status_text: str = ""  # commandResponse: the platform's words, kept even when not a known state
    online: bool | None = None  # deviceOnlineOfflineReport: eventType 1 online, 0 offline

    @property
    def frame_serial(self) -> str | None:
        """The meter address the frame claims (None: not a readable frame)."""
        return self.uplink.serial if self.uplink is not None else None


@dataclass(frozen=True)
class PlatformCommand:
    """A command gasworks created on a platform, to map its later status pushes to the meter's command."""

    platform: CarrierPlatform
    command_id: str
    serial: str
    frame_seq: int  # the CJ/T 188 SER of the frame inside: the meter command it carries
    ttl_s: int
    created_at: datetime
    status: PlatformCommandStatus
    status_at: datetime

    def still_cached(self, now: datetime) -> bool:
        return self.status in STILL_CACHED and (now - self.created_at).total_seconds() < self.ttl_s
