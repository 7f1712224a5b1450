"""Meters behind carrier platforms: device registrations, pushes claimed once, commands created there."""

from datetime import datetime

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from gasworks.adapters.db import tables as t
from gasworks.domain.carriers import CarrierDevice, CarrierPlatform, PlatformCommand, PlatformCommandStatus

TAKING = None  # a push claimed and not yet answered (the process died, or another request is on it)


class Carriers:
    def __init__(self, c: Connection) -> None:
        self.c = c

    # ---- devices --------------------------------------------------------------------------------

    def add_device(self, device: CarrierDevice) -> bool:
        """False when the meter is on a platform already, or the platform's device is bound to another meter."""
        try:
            with self.c.begin_nested():
                self.c.execute(insert(t.carrier_devices).values(**{**device.__dict__, "platform": device.platform.value}))
        except IntegrityError:
            return False
        return True

    def device_by_id(self, platform: CarrierPlatform, device_id: str) -> CarrierDevice | None:
        cd = t.carrier_devices
        row = self.c.execute(select(cd).where(cd.c.platform == platform.value, cd.c.device_id == device_id)).mappings().first()
        return _device(row) if row else None

    def device_of(self, serial: str) -> CarrierDevice | None:
        row = self.c.execute(select(t.carrier_devices).where(t.carrier_devices.c.serial == serial)).mappings().first()
        return _device(row) if row else None

    def set_online(self, platform: CarrierPlatform, device_id: str, online: bool, at: datetime) -> None:
        cd = t.carrier_devices
        self.c.execute(update(cd).where(cd.c.platform == platform.value, cd.c.device_id == device_id).values(online=online, online_changed_at=at))

    def count_devices(self, platform: CarrierPlatform) -> int:
        return int(self.c.execute(select(func.count()).select_from(t.carrier_devices).where(t.carrier_devices.c.platform == platform.value)).scalar_one())

    # ---- pushes, each taken once ----------------------------------------------------------------

    def claim_push(self, platform: CarrierPlatform, dedup_key: str, *, at: datetime, kind: str, device_id: str) -> tuple[bool, str | None]:
        """(True, None) when this push is new and now ours to take; (False, outcome) for a retry of one
        already claimed (outcome None while it is still being taken)."""
        try:
            with self.c.begin_nested():
                self.c.execute(insert(t.carrier_pushes).values(platform=platform.value, dedup_key=dedup_key, received_at=at, kind=kind[:40], device_id=device_id[:64]))
        except IntegrityError:
            cp = t.carrier_pushes
            outcome = self.c.execute(select(cp.c.outcome).where(cp.c.platform == platform.value, cp.c.dedup_key == dedup_key)).scalar_one_or_none()
            return False, outcome
        return True, None

    def settle_push(self, platform: CarrierPlatform, dedup_key: str, outcome: str) -> None:
        cp = t.carrier_pushes
        self.c.execute(update(cp).where(cp.c.platform == platform.value, cp.c.dedup_key == dedup_key).values(outcome=outcome[:40]))

    def release_push(self, platform: CarrierPlatform, dedup_key: str) -> None:
        """A push we failed to take (an unexpected error): the platform's retry is taken afresh."""
        cp = t.carrier_pushes
        self.c.execute(delete(cp).where(cp.c.platform == platform.value, cp.c.dedup_key == dedup_key, cp.c.outcome.is_(None)))

    def forget_pushes_before(self, before: datetime) -> int:
        """Retries stop after minutes; keys older than `before` can no longer come back."""
        return self.c.execute(delete(t.carrier_pushes).where(t.carrier_pushes.c.received_at < before)).rowcount

    # ---- commands created on a platform ---------------------------------------------------------

    def add_command(self, command: PlatformCommand) -> None:
        self.c.execute(insert(t.carrier_commands).values(**{**command.__dict__, "platform": command.platform.value, "status": command.status.value}))

    def command(self, platform: CarrierPlatform, command_id: str) -> PlatformCommand | None:
        cc = t.carrier_commands
        row = self.c.execute(select(cc).where(cc.c.platform == platform.value, cc.c.command_id == command_id)).mappings().first()
        return _command(row) if row else None

    def latest_command(self, serial: str, frame_seq: int) -> PlatformCommand | None:
        cc = t.carrier_commands
        query = select(cc).where(cc.c.serial == serial, cc.c.frame_seq == frame_seq).order_by(cc.c.created_at.desc()).limit(1)
        row = self.c.execute(query).mappings().first()
        return _command(row) if row else None

    def set_command_status(self, platform: CarrierPlatform, command_id: str, status: PlatformCommandStatus, at: datetime) -> None:
        cc = t.carrier_commands
        self.c.execute(update(cc).where(cc.c.platform == platform.value, cc.c.command_id == command_id).values(status=status.value, status_at=at))


def _device(row) -> CarrierDevice:  # noqa: ANN001 - a row mapping
    return CarrierDevice(**{**row, "platform": CarrierPlatform(row["platform"])})


def _command(row) -> PlatformCommand:  # noqa: ANN001 - a row mapping
    return PlatformCommand(**{**row, "platform": CarrierPlatform(row["platform"]), "status": PlatformCommandStatus(row["status"])})
