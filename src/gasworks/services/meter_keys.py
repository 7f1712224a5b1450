"""Meter keys: made at registration, exported once for the installer, rotated by operators.

A meter key never leaves gasworks except through `export_key` / `rotate_key`, which return it for
writing into the meter (factory or field tool) and are audited. At rest it is sealed under the site
key (adapters/db/meter_keys.py).
"""

import secrets
from dataclasses import dataclass

from gasworks.domain.accounts import MeterKind
from gasworks.domain.errors import Conflict, NotFound
from gasworks.domain.meter_models import MeterModel
from gasworks.domain.meter_security import DEFAULT_METER_MODEL, KEY_BYTES, MacScheme, MeterFrameSecurity, UnknownMeterModel
from gasworks.services.unit_of_work import UnitOfWork


@dataclass(frozen=True)
class MeterKey:
    """One version of a meter's key, in clear: for writing into the meter, never for logs."""

    serial: str
    model: str
    scheme: MacScheme
    key_version: int
    key: bytes


def stored_model(uow: UnitOfWork, name: str) -> MeterModel:
    """A meter model profile from the meter_models table, or UnknownMeterModel naming the known ones."""
    profile = uow.meter_models.get(name)
    if profile is None:
        known = ", ".join(m.name for m in uow.meter_models.list())
        raise UnknownMeterModel(f"no meter model {name[:40]!r}; known: {known or 'none'} (add one with `gasworks meters models add`)")
    return profile


def register_meter(uow: UnitOfWork, *, serial: str, model: str) -> None:
    """Inside the caller's unit of work (account opening): the meter's model, security record and first key."""
    profile = stored_model(uow, model)
    now = uow.clock.now()
    uow.meters.set_model(serial, profile)
    uow.meter_keys.add_security(MeterFrameSecurity(serial=serial, profile=profile, active_key_version=1 if profile.seals_frames else None))
    if profile.seals_frames:
        uow.meter_keys.add_key(serial, 1, secrets.token_bytes(KEY_BYTES), now)


def _security(uow: UnitOfWork, serial: str) -> MeterFrameSecurity:
    uow.meters.get(serial, lock=True)  # the meter first, as everywhere
    security = uow.meter_keys.get_security(serial, lock=True)
    if security is None:
        raise NotFound(f"meter {serial} has no frame security record (not an IoT meter, or registered before meter keys)", code="METER_NOT_KEYED")
    if not security.profile.seals_frames:
        raise Conflict(f"meter {serial} is a {security.model}: its model has no MAC and no key", code="MODEL_HAS_NO_KEY")
    return security


def _key(uow: UnitOfWork, security: MeterFrameSecurity, version: int) -> MeterKey:
    key = uow.meter_keys.key(security.serial, version)
    if key is None:
        raise NotFound(f"meter {security.serial} has no key version {version} in use", code="KEY_VERSION_NOT_FOUND")
    return MeterKey(security.serial, security.model, security.profile.mac_scheme, version, key)


def export_key(serial: str, uow: UnitOfWork, *, actor: str) -> MeterKey:
    """The key the meter should hold: the pending one during a rotation, else the active one. Audited."""
    with uow:
        security = _security(uow, serial)
        version = security.pending_key_version or security.active_key_version
        assert version is not None
        key = _key(uow, security, version)
        uow.audit.append(at=uow.clock.now(), actor=actor, action="meter.key.export", subject=f"meter:{serial}", detail={"key_version": version})
        uow.commit()
        return key


def rotate_key(serial: str, uow: UnitOfWork, *, actor: str, model: str | None = None) -> MeterKey:
    """A new key version for the meter, returned for writing into it.

    An IoT meter registered before meter keys existed gets its first key (version 1), of `model` if
    given, else of the model it has, else the default model.

    Overlap: until the meter is heard under the new version (or an operator finishes the rotation),
    uplinks under the old and the new version are taken and downlinks stay under the old one, which
    the meter still holds. The first valid uplink under the new version retires the old one.
    """
    with uow:
        now = uow.clock.now()
        link = uow.meters.get(serial, lock=True)
        if link is not None and link.kind == MeterKind.IOT and uow.meter_keys.get_security(serial) is None:
            model = model or link.model or DEFAULT_METER_MODEL  # the operator's word, else the model it has
            register_meter(uow, serial=serial, model=model)
            uow.audit.append(at=now, actor=actor, action="meter.key.issue", subject=f"meter:{serial}", detail={"key_version": 1, "model": model})
            security = _security(uow, serial)
            key = _key(uow, security, 1)
            uow.commit()
            return key
        security = _security(uow, serial)
        version = security.start_rotation()
        uow.meter_keys.add_key(serial, version, secrets.token_bytes(KEY_BYTES), now)
        uow.meter_keys.save_security(security)
        uow.audit.append(at=now, actor=actor, action="meter.key.rotate", subject=f"meter:{serial}", detail={"key_version": version})
        key = _key(uow, security, version)
        uow.commit()
        return key


def finish_rotation(serial: str, uow: UnitOfWork, *, actor: str) -> int:
    """An operator confirms the meter holds the new key: the old version is refused from now on."""
    with uow:
        now = uow.clock.now()
        security = _security(uow, serial)
        version = security.finish_rotation(now)
        uow.meter_keys.retire_other_keys(serial, version, now)
        uow.meter_keys.save_security(security)
        uow.audit.append(at=now, actor=actor, action="meter.key.rotation_finished", subject=f"meter:{serial}", detail={"key_version": version})
        uow.commit()
        return version


@dataclass(frozen=True)
class KeyStatus:
    serial: str
    model: str
    scheme: MacScheme
    active_key_version: int | None
    pending_key_version: int | None
    uplink_counter_seen: int
    downlink_counter_sent: int


def key_status(serial: str, uow: UnitOfWork) -> KeyStatus:
    with uow:
        security = uow.meter_keys.get_security(serial)
        if security is None:
            raise NotFound(f"meter {serial} has no frame security record", code="METER_NOT_KEYED")
        return KeyStatus(
            serial, security.model, security.profile.mac_scheme, security.active_key_version, security.pending_key_version,
            security.uplink_counter_seen, security.downlink_counter_sent,
        )  # fmt: skip
