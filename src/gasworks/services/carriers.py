"""Meters behind carrier platforms: register a meter's platform device; take each platform push once.

A push has already passed the platform's own check at the entrypoint (CTWing: the secret in the
URL). What it says is then believed only as far as the device it came from: the device must be
registered, on the product it was registered with, and the frame inside must be addressed to the
meter that device is bound to. The frame, read where the push arrived (the platform's push parser
in adapters/meters/carriers: `cjt188.read_uplink`), is then opened like any other uplink (its MAC, key
version and counter, when the meter's model seals frames; `carrier_authenticated=True` lets a
model without MAC through only here). A command's platform status moves a sent command to
"delivered" (its module has it) and never further: only the meter's own frame applies a purchase.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import structlog

from gasworks.domain.accounts import MeterKind
from gasworks.domain.carriers import (
    REACHED_MODULE,
    CarrierDevice,
    CarrierPush,
    PlatformCommandStatus,
    PushKind,
    check_registration,
)
from gasworks.domain.delivery import CommandState
from gasworks.domain.errors import Conflict, GasworksError, InvariantViolated, NotFound
from gasworks.services.delivery import handle_uplink, refuse_unreadable_frame
from gasworks.services.unit_of_work import UnitOfWork

log = structlog.get_logger(__name__)

TAKEN = "TAKEN"
IN_PROGRESS = "PUSH_IN_PROGRESS"
PUSH_KEYS_KEPT_S = 7 * 86_400  # CTWing retries within minutes; a week of keys recognises any retry


class CommandNotYetKnown(GasworksError):
    """A status for a platform command gasworks has no record of (yet: the send that created it may
    still be committing). Not taken: the platform is asked to come back, and retries a few times."""

    code = "CARRIER_COMMAND_NOT_YET_KNOWN"
    http_status = 503


@dataclass(frozen=True)
class PushOutcome:
    taken: bool  # False: refused (and recorded); the platform is still answered 200, retrying cannot help
    code: str  # TAKEN, or why it was refused
    what: str
    duplicate: bool = False  # a retry of a push already taken: nothing done again


def register_device(device: CarrierDevice, uow: UnitOfWork, *, actor: str, ttl_margin_s: int) -> CarrierDevice:
    """Bind a platform device to an IoT meter: from now on its commands go through that platform."""
    check_registration(device, ttl_margin_s=ttl_margin_s)
    with uow:
        link = uow.meters.get(device.serial, lock=True)
        if link is None or link.kind != MeterKind.IOT:
            raise NotFound(f"no IoT meter {device.serial[:20]!r}", code="METER_NOT_FOUND")
        if not uow.carriers.add_device(device):
            raise Conflict(f"meter {device.serial} is on a platform already, or {device.platform} device {device.device_id} is bound to another meter", code="CARRIER_DEVICE_TAKEN")
        uow.audit.append(
            at=uow.clock.now(), actor=actor, action="carrier.device.register", subject=f"meter:{device.serial}",
            detail={"platform": device.platform.value, "device_id": device.device_id, "product_id": device.product_id, "imei": device.imei, "report_interval_s": device.report_interval_s},
        )  # fmt: skip
        uow.commit()
    return device


def take_push(push: CarrierPush, new_uow: Callable[[], UnitOfWork]) -> PushOutcome:
    """Claim the push by its key (a platform's retry finds it claimed), take it, remember the outcome."""
    with new_uow() as uow:
        fresh, outcome = uow.carriers.claim_push(push.platform, push.dedup_key, at=uow.clock.now(), kind=push.message_type, device_id=push.device_id)
        uow.commit()
    if not fresh:
        if outcome is None:  # the first copy is being taken right now: let the platform come back
            return PushOutcome(False, IN_PROGRESS, "the same push is being taken now", duplicate=True)
        return PushOutcome(outcome == TAKEN, outcome, "a retry of a push already taken: nothing done again", duplicate=True)
    try:
        result = _take(push, new_uow)
    except Exception:
        with new_uow() as uow:  # not taken (not yet known, or unexpected): the platform's retry is taken afresh
            uow.carriers.release_push(push.platform, push.dedup_key)
            uow.commit()
        raise
    with new_uow() as uow:
        uow.carriers.settle_push(push.platform, push.dedup_key, result.code)
        uow.commit()
    return result


def _take(push: CarrierPush, new_uow: Callable[[], UnitOfWork]) -> PushOutcome:
    with new_uow() as uow:
        device = uow.carriers.device_by_id(push.platform, push.device_id)
    if device is None:
        return _refuse(new_uow, push, "UNKNOWN_CARRIER_DEVICE", f"{push.platform} device {push.device_id} is registered to no meter")
    if push.product_id != "-" and push.product_id != device.product_id:
        return _refuse(new_uow, push, "CARRIER_PRODUCT_MISMATCH", f"device {push.device_id} is registered under product {device.product_id}, the push says {push.product_id}")
    match push.kind:
        case PushKind.DATA_REPORT:
            return _take_frame(push, device, new_uow)
        case PushKind.COMMAND_RESPONSE:
            return _take_command_status(push, device, new_uow)
        case PushKind.ONLINE_OFFLINE:
            with new_uow() as uow:
                assert push.online is not None
                uow.carriers.set_online(push.platform, push.device_id, push.online, uow.clock.now())
                uow.commit()
            # The module attached or left: not a report from the meter, so no wake window and no delivery state moves.
            return PushOutcome(True, TAKEN, f"module {'online' if push.online else 'offline'}")
    return PushOutcome(True, TAKEN, f"{push.message_type[:40]} ignored")


def _take_frame(push: CarrierPush, device: CarrierDevice, new_uow: Callable[[], UnitOfWork]) -> PushOutcome:
    assert push.frame is not None
    if push.frame_serial is not None and push.frame_serial != device.serial:
        return _refuse(
            new_uow, push, "CARRIER_SERIAL_MISMATCH",
            f"{push.platform} device {push.device_id} is meter {device.serial}; its frame claims meter {push.frame_serial}",
        )  # fmt: skip
    if push.uplink is None:  # read where the push arrived and found unreadable: refused and recorded under the device's meter
        if push.frame_unreadable is None:
            raise InvariantViolated(f"{push.platform} push {push.dedup_key}: its frame was neither read nor refused where it arrived")
        code, reason = push.frame_unreadable
        outcome = refuse_unreadable_frame(device.serial, code, reason, push.frame, new_uow())
    else:
        outcome = handle_uplink(device.serial, push.uplink, new_uow(), carrier_authenticated=True)
    if not outcome.accepted:
        return PushOutcome(False, outcome.what.split(":", 1)[0][:40], outcome.what)
    if outcome.commands_waiting:  # the meter is listening now: a worker sends at once (NOTIFY on PostgreSQL)
        with new_uow() as uow:
            uow.meter_commands.announce(device.serial)
            uow.commit()
    return PushOutcome(True, TAKEN, outcome.what)


def _take_command_status(push: CarrierPush, device: CarrierDevice, new_uow: Callable[[], UnitOfWork]) -> PushOutcome:
    assert push.task_id is not None
    with new_uow() as uow:
        now = uow.clock.now()
        command = uow.carriers.command(push.platform, push.task_id)
        if command is None:
            raise CommandNotYetKnown(f"{push.platform} command {push.task_id} for device {push.device_id} is not (yet) known to gasworks")
        if command.serial != device.serial:
            return _refuse(new_uow, push, "UNKNOWN_CARRIER_COMMAND", f"{push.platform} command {push.task_id} was created by gasworks for another device than {push.device_id}")
        if push.status is None:
            return PushOutcome(True, TAKEN, f"command status {push.status_text!r} is not one gasworks knows: kept as it was")
        uow.carriers.set_command_status(push.platform, command.command_id, push.status, now)
        what = f"platform command {command.command_id}: {push.status.value.lower()}"
        if push.status in REACHED_MODULE:
            link = uow.meters.get(device.serial, lock=True)  # the meter first, as everywhere
            for sent in uow.meter_commands.for_meter(device.serial, states=frozenset({CommandState.SENT}), route=MeterKind.IOT):
                if sent.frame_seq == command.frame_seq:
                    note = f"{push.platform}: delivered to the meter's module; applied only when the meter's own frame shows it"
                    sent.move_to(CommandState.DELIVERED, now, note)
                    sent.window_sends = max(sent.window_sends, 1)  # not sent again before a report newer than this delivery
                    sent.next_send_at = (link.awake_until if link is not None else None) or now  # nor looked at again this wake
                    uow.meter_commands.save(sent, now)
                    what += f" (command #{sent.id} delivered, not yet applied)"
        elif push.status in (PlatformCommandStatus.EXPIRED, PlatformCommandStatus.FAILED):
            what += ": the meter's next report opens a window and the command is sent again"
        uow.commit()
    return PushOutcome(True, TAKEN, what)


def _refuse(new_uow: Callable[[], UnitOfWork], push: CarrierPush, code: str, reason: str) -> PushOutcome:
    with new_uow() as uow:
        uow.rejections.add(
            at=uow.clock.now(), channel_id=push.platform.value, code=code, message=reason[:500], remote_addr="",
            request_summary={"message_type": push.message_type[:40], "device_id": push.device_id, "timestamp_ms": push.timestamp_ms, "dedup_key": push.dedup_key,
                             "frame_hex": push.frame[:96].hex() if push.frame else None},
        )  # fmt: skip
        uow.commit()
    log.warning("carrier_push_refused", platform=push.platform.value, device_id=push.device_id, code=code, reason=reason)
    return PushOutcome(False, code, reason)


def forget_old_pushes(uow: UnitOfWork) -> int:
    """Keys of pushes too old for any retry to come back: the watchdog drops them, so the table stays bounded."""
    with uow:
        forgotten = uow.carriers.forget_pushes_before(uow.clock.now() - timedelta(seconds=PUSH_KEYS_KEPT_S))
        uow.commit()
        return forgotten


def get_device(serial: str, uow: UnitOfWork) -> CarrierDevice:
    """The meter's platform registration and its module's last known state."""
    with uow:
        device = uow.carriers.device_of(serial)
    if device is None:
        raise NotFound(f"meter {serial[:20]!r} is on no carrier platform", code="NOT_ON_A_PLATFORM")
    return device
