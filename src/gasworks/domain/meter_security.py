"""Meter frame security as plain data: model profiles, key versions, per-direction frame counters.

Every frame between gasworks and a meter is sealed: it carries the version of the meter's key, a
counter for its direction (meter -> gasworks "uplink", gasworks -> meter "downlink") and a MAC over
the whole frame (layout in `adapters/meters/cjt188.py`). Which MAC is the meter model's business:
CJ/T 188-2018 cites SM4 (GM/T 0002), so SM4-CMAC is the default; some models use AES-128-CMAC; a
model without a MAC is taken only through an authenticated carrier platform. The scheme is part of
the meter's model profile (domain/meter_models.py).

The rules written here, checked by `adapters/meters/frame_security.py` on both ends:
- a frame under a key version the receiver does not hold is refused (FRAME_KEY_VERSION_UNKNOWN);
- a frame whose MAC does not verify is refused (FRAME_MAC_INVALID);
- a frame whose counter is not above the last one taken in its direction is refused (FRAME_REPLAYED);
- counters never go back and never wrap: at COUNTER_MAX the meter needs a new key and fresh counters.
"""

from dataclasses import dataclass, field
from datetime import datetime

from gasworks.domain.errors import GasworksError
from gasworks.domain.meter_messages import MeterMessage
from gasworks.domain.meter_models import BUILT_IN_MODELS, MeterModel, built_in_model
from gasworks.domain.meter_models import DEFAULT_METER_MODEL as DEFAULT_METER_MODEL  # re-exported: older imports name it here
from gasworks.domain.meter_models import MacScheme as MacScheme

KEY_BYTES = 16  # SM4 and AES-128 keys
MAC_BYTES = 8  # the first 8 bytes of the CMAC (NIST SP 800-38B truncation to 64 bits)
COUNTER_BYTES = 4
COUNTER_MAX = 2**32 - 1
KEY_VERSION_MAX = 255  # one byte on the wire


class FrameRefused(GasworksError):
    """A frame well formed on the wire that we will not believe; `code` says why (recorded, never applied)."""

    code = "FRAME_REFUSED"
    http_status = 400


class UnknownMeterModel(GasworksError):
    code = "UNKNOWN_METER_MODEL"
    http_status = 422


def model_profile(name: str) -> MeterModel:
    """A built-in profile by name (the stored ones are read through the meter_models repository)."""
    profile = built_in_model(name)
    if profile is None:
        raise UnknownMeterModel(f"no built-in meter model {name[:40]!r}; built in: {', '.join(sorted(BUILT_IN_MODELS))}")
    return profile


@dataclass
class MeterFrameSecurity:
    """gasworks' side of one meter's frame security: its model, key versions and both counters.

    `active_key_version` seals downlinks and is the one the meter is known to hold. A rotation adds
    `pending_key_version`: during the overlap uplinks under either version are taken; the first
    valid uplink under the pending version completes the rotation (it becomes active, the old one
    is retired and refused from then on).
    """

    serial: str
    profile: MeterModel  # the meter's model (meters.model), which names its MAC scheme
    active_key_version: int | None  # None for a model without MAC
    pending_key_version: int | None = None
    uplink_counter_seen: int = 0  # the highest uplink counter taken
    downlink_counter_sent: int = 0  # the last downlink counter used
    rotated_at: datetime | None = None
    events: list[str] = field(default_factory=list)

    @property
    def model(self) -> str:
        return self.profile.name

    def usable_versions(self) -> tuple[int, ...]:
        return tuple(v for v in (self.active_key_version, self.pending_key_version) if v is not None)

    def check_uplink(self, *, key_version: int, counter: int) -> None:
        """Refuse an uplink under a key we do not accept or with a counter not above the last one."""
        if key_version not in self.usable_versions():
            raise FrameRefused(
                f"meter {self.serial} frame under key version {key_version}; accepted: {list(self.usable_versions()) or 'none'}",
                code="FRAME_KEY_VERSION_UNKNOWN",
            )
        if counter <= self.uplink_counter_seen:
            raise FrameRefused(f"meter {self.serial} uplink counter {counter} is not above {self.uplink_counter_seen}: replayed", code="FRAME_REPLAYED")

    def take_uplink(self, *, key_version: int, counter: int, at: datetime) -> None:
        """A verified uplink: remember its counter; a frame under the pending key completes a rotation."""
        self.check_uplink(key_version=key_version, counter=counter)
        self.uplink_counter_seen = counter
        if key_version == self.pending_key_version:
            self.events.append(f"key version {key_version} in use by the meter: version {self.active_key_version} retired")
            self.active_key_version, self.pending_key_version, self.rotated_at = key_version, None, at

    def next_downlink_counter(self) -> int:
        if self.downlink_counter_sent >= COUNTER_MAX:
            raise FrameRefused(f"meter {self.serial} downlink counter exhausted: issue a new key", code="FRAME_COUNTER_EXHAUSTED")
        self.downlink_counter_sent += 1
        return self.downlink_counter_sent

    def start_rotation(self) -> int:
        """A new key version; the current one stays valid until the meter is heard using the new one."""
        if self.pending_key_version is not None:
            raise FrameRefused(
                f"meter {self.serial} is already rotating to key version {self.pending_key_version}; finish it first",
                code="KEY_ROTATION_IN_PROGRESS",
            )
        current = self.active_key_version or 0
        if current >= KEY_VERSION_MAX:
            raise FrameRefused(f"meter {self.serial} has used every key version up to {KEY_VERSION_MAX}", code="KEY_VERSIONS_EXHAUSTED")
        self.pending_key_version = current + 1
        return self.pending_key_version

    def finish_rotation(self, at: datetime) -> int:
        """The operator confirms the meter holds the new key (e.g. written on site): the old one is refused now."""
        if self.pending_key_version is None:
            raise FrameRefused(f"meter {self.serial} has no key rotation in progress", code="NO_KEY_ROTATION")
        self.events.append(f"key version {self.pending_key_version} made active by an operator: version {self.active_key_version} retired")
        self.active_key_version, self.pending_key_version, self.rotated_at = self.pending_key_version, None, at
        return self.active_key_version


@dataclass
class MeterFrameCounters:
    """The meter's side (firmware): the key it holds and both counters, kept across power loss."""

    key_version: int
    uplink_counter_sent: int = 0
    downlink_counter_seen: int = 0

    def next_uplink_counter(self) -> int:
        if self.uplink_counter_sent >= COUNTER_MAX:
            raise FrameRefused("uplink counter exhausted: the meter needs a new key", code="FRAME_COUNTER_EXHAUSTED")
        self.uplink_counter_sent += 1
        return self.uplink_counter_sent

    def take_downlink(self, *, key_version: int, counter: int) -> None:
        if key_version != self.key_version:
            raise FrameRefused(f"downlink under key version {key_version}; this meter holds {self.key_version}", code="FRAME_KEY_VERSION_UNKNOWN")
        if counter <= self.downlink_counter_seen:
            raise FrameRefused(f"downlink counter {counter} is not above {self.downlink_counter_seen}: replayed", code="FRAME_REPLAYED")
        self.downlink_counter_seen = counter


class SiteKeyMismatch(GasworksError):
    """A meter key was sealed under another site key than this server's: configuration is wrong."""

    code = "SITE_KEY_MISMATCH"
    http_status = 500


@dataclass(frozen=True)
class OpenedUplink:
    """An uplink whose MAC, key version and counter were checked: what the meter said, and the counter it used."""

    message: MeterMessage
    key_version: int | None  # None: a model without MAC, through an authenticated carrier platform
    counter: int | None


class FrameNotSealed(Exception):
    """A downlink cannot be sealed (no key for the meter): it is not sent; the command stays where it is."""
