"""Meters' keys and frame counters, and the site key that seals the keys at rest.

Each meter key is stored AES-256-GCM-encrypted under the site key (12-byte random nonce, then the
ciphertext and its 16-byte tag; the associated data binds it to its meter and key version, so a
sealed key moved to another meter or version does not open). The site key comes from
configuration (`GASWORKS_SITE_KEY`: 32 bytes as 64 hex digits or base64). Without it, a random
one is generated into the database on first use (`site_secrets`, name `meter_key_kek`): the
embedded default, for development only, since the keys then sit beside what they protect.
"""

import base64
import binascii
import hashlib
import os
from collections.abc import Callable
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, func, insert, select, update

from gasworks.adapters.db import tables as t
from gasworks.adapters.db.delivery import SiteSecrets, model_of
from gasworks.domain.errors import InvalidInput
from gasworks.domain.meter_models import MeterModel
from gasworks.domain.meter_security import MeterFrameSecurity, SiteKeyMismatch

SITE_KEY_BYTES = 32
DEV_SITE_KEY_NAME = "meter_key_kek"
NONCE_BYTES = 12


def parse_site_key(text: str) -> bytes | None:
    """`GASWORKS_SITE_KEY` as bytes (64 hex digits or base64 of 32 bytes); None when not set."""
    text = text.strip()
    if not text:
        return None
    try:
        raw = bytes.fromhex(text) if len(text) == 2 * SITE_KEY_BYTES else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        raw = b""
    if len(raw) != SITE_KEY_BYTES:
        raise InvalidInput(f"GASWORKS_SITE_KEY must be {SITE_KEY_BYTES} bytes as 64 hex digits or base64", code="INVALID_SITE_KEY")
    return raw


def site_key_id(key: bytes) -> str:
    return hashlib.sha256(b"gasworks site key id\x00" + key).hexdigest()[:16]


def _aad(serial: str, key_version: int) -> bytes:
    return f"gasworks meter key {serial} v{key_version}".encode()


class MeterKeys:
    def __init__(self, c: Connection, *, site_key: bytes | None, now: Callable[[], datetime]) -> None:
        self.c = c
        self._configured_site_key = site_key
        self._now = now
        self._site_key: bytes | None = None

    # ---- the site key ----------------------------------------------------------------------------

    def site_key(self) -> bytes:
        if self._site_key is None:
            if self._configured_site_key is not None:
                self._site_key = self._configured_site_key
            else:  # development default: generated once into the database
                value = SiteSecrets(self.c).get_or_create(DEV_SITE_KEY_NAME, self._now())
                self._site_key = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))[:SITE_KEY_BYTES]
        return self._site_key

    # ---- per-meter security state -----------------------------------------------------------------

    def get_security(self, serial: str, *, lock: bool = False) -> MeterFrameSecurity | None:
        """The meter's security record with its model's profile (meters.model -> meter_models)."""
        query = select(t.meter_frame_security).where(t.meter_frame_security.c.serial == serial)
        if lock and self.c.dialect.name == "postgresql":
            query = query.with_for_update()
        row = self.c.execute(query).first()
        if row is None:
            return None
        model = self.c.execute(
            select(t.meter_models).join(t.meters, t.meters.c.model == t.meter_models.c.name).where(t.meters.c.serial == serial)
        ).first()
        if model is None:
            raise InvalidInput(f"meter {serial} has frame security but no known model: set one with `gasworks meters set {serial} --model`", code="METER_MODEL_MISSING")
        return _security(row, model_of(model))

    def add_security(self, security: MeterFrameSecurity) -> None:
        self.c.execute(insert(t.meter_frame_security).values(serial=security.serial, **_security_values(security)))

    def save_security(self, security: MeterFrameSecurity) -> None:
        self.c.execute(update(t.meter_frame_security).where(t.meter_frame_security.c.serial == security.serial).values(**_security_values(security)))

    def models_in_use(self) -> set[str]:
        keyed = select(t.meters.c.model).join(t.meter_frame_security, t.meter_frame_security.c.serial == t.meters.c.serial).distinct()
        return {row.model for row in self.c.execute(keyed)}

    def count_by_model(self) -> dict[str, int]:
        rows = self.c.execute(
            select(t.meters.c.model, func.count()).join(t.meter_frame_security, t.meter_frame_security.c.serial == t.meters.c.serial).group_by(t.meters.c.model)
        )
        return {model: int(n) for model, n in rows}

    # ---- keys --------------------------------------------------------------------------------------

    def add_key(self, serial: str, key_version: int, key: bytes, at: datetime) -> None:
        site_key = self.site_key()
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + AESGCM(site_key).encrypt(nonce, key, _aad(serial, key_version))
        self.c.execute(
            insert(t.meter_keys).values(serial=serial, key_version=key_version, key_sealed=sealed, site_key_id=site_key_id(site_key), created_at=at)
        )

    def key(self, serial: str, key_version: int) -> bytes | None:
        """The meter's key of this version, or None if there is none or it was retired."""
        row = self.c.execute(
            select(t.meter_keys).where(t.meter_keys.c.serial == serial, t.meter_keys.c.key_version == key_version, t.meter_keys.c.retired_at.is_(None))
        ).first()
        if row is None:
            return None
        site_key = self.site_key()
        if row.site_key_id != site_key_id(site_key):
            raise SiteKeyMismatch(
                f"meter {serial}'s key version {key_version} was sealed under site key {row.site_key_id}; this server's is "
                f"{site_key_id(site_key)} (check GASWORKS_SITE_KEY)"
            )
        sealed = bytes(row.key_sealed)
        try:
            return AESGCM(site_key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _aad(serial, key_version))
        except InvalidTag:
            raise SiteKeyMismatch(f"meter {serial}'s key version {key_version} does not open under the site key: tampered with?") from None

    def retire_other_keys(self, serial: str, keep_version: int, at: datetime) -> int:
        return self.c.execute(
            update(t.meter_keys)
            .where(t.meter_keys.c.serial == serial, t.meter_keys.c.key_version != keep_version, t.meter_keys.c.retired_at.is_(None))
            .values(retired_at=at)
        ).rowcount


_SECURITY_COLUMNS = ("active_key_version", "pending_key_version", "uplink_counter_seen", "downlink_counter_sent", "rotated_at")


def _security_values(security: MeterFrameSecurity) -> dict[str, Any]:
    return {name: getattr(security, name) for name in _SECURITY_COLUMNS}


def _security(row: Any, profile: MeterModel) -> MeterFrameSecurity:
    return MeterFrameSecurity(serial=row.serial, profile=profile, **{name: getattr(row, name) for name in _SECURITY_COLUMNS})
