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
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, bindparam, func, insert, select, update

from gasworks.adapters.db import tables as t
from gasworks.adapters.db.delivery import model_of
from gasworks.adapters.db.repositories import SEALED_TEXT_PREFIX
from gasworks.adapters.db.site_secrets import SiteSecrets
from gasworks.domain.errors import InvalidInput
from gasworks.domain.meter_models import MeterModel
from gasworks.domain.meter_security import COUNTER_MAX, MeterFrameSecurity, SiteKeyMismatch

SITE_KEY_BYTES = 32
DEV_SITE_KEY_NAME = "meter_key_kek"
NONCE_BYTES = 12
UNSEALED_KEYS_MAX = 10_000  # meter keys kept unsealed in one process's memory (16 bytes each, plus the dict)


class UnsealedKeys:
    """One process's bounded LRU of meter keys already opened under the site key, and the site key.

    A (serial, key version) names immutable key material (rows are only inserted or retired), so an
    entry never goes stale; whether a version may be *used* is decided by the meter's security row,
    read fresh in every transaction (a retired version is in no row's usable versions). Opening a
    key costs a query and an AES-GCM decryption; a worker sending 200 frames a second paid that on
    every frame.
    """

    def __init__(self, entries_max: int = UNSEALED_KEYS_MAX) -> None:
        if entries_max < 1:
            raise ValueError("the key cache needs room for at least one key")
        self.entries_max = entries_max
        self._keys: OrderedDict[tuple[str, int, str], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.site_key: bytes | None = None  # the development default, read from the database once per process

    def get(self, serial: str, key_version: int, site_key_id: str) -> bytes | None:
        with self._lock:
            key = self._keys.get((serial, key_version, site_key_id))
            if key is not None:
                self._keys.move_to_end((serial, key_version, site_key_id))
            return key

    def put(self, serial: str, key_version: int, site_key_id: str, key: bytes) -> None:
        with self._lock:
            self._keys[(serial, key_version, site_key_id)] = key
            self._keys.move_to_end((serial, key_version, site_key_id))
            while len(self._keys) > self.entries_max:
                self._keys.popitem(last=False)

    def forget_meter(self, serial: str) -> None:
        with self._lock:
            for entry in [e for e in self._keys if e[0] == serial]:
                del self._keys[entry]

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)


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
    def __init__(self, c: Connection, *, site_key: bytes | None, now: Callable[[], datetime], cache: UnsealedKeys | None = None) -> None:
        self.c = c
        self._configured_site_key = site_key
        self._now = now
        self._site_key: bytes | None = None
        self._cache = cache if cache is not None else UnsealedKeys()
        self._site_key_id: str | None = None

    # ---- the site key ----------------------------------------------------------------------------

    def site_key(self) -> bytes:
        if self._site_key is None:
            if self._configured_site_key is not None:
                self._site_key = self._configured_site_key
            elif self._cache.site_key is not None:  # made once and never changed: read once per process
                self._site_key = self._cache.site_key
            else:  # development default: generated once into the database
                value = SiteSecrets(self.c).get_or_create(DEV_SITE_KEY_NAME, self._now())
                self._site_key = self._cache.site_key = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))[:SITE_KEY_BYTES]
            self._site_key_id = site_key_id(self._site_key)
        return self._site_key

    # ---- other secrets under the same site key (channels' keys) ------------------------------------

    def seal_text(self, text: str, aad: str) -> str:
        """`text` sealed AES-256-GCM under the site key, bound to `aad`, as one printable string."""
        site_key = self.site_key()
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + AESGCM(site_key).encrypt(nonce, text.encode(), aad.encode())
        return f"{SEALED_TEXT_PREFIX}{site_key_id(site_key)}:{base64.b64encode(sealed).decode()}"

    def open_text(self, stored: str, aad: str) -> str:
        """What `seal_text` sealed; text stored before sealing existed comes back as it is."""
        if not stored.startswith(SEALED_TEXT_PREFIX):
            return stored
        sealed_under, _, body = stored.removeprefix(SEALED_TEXT_PREFIX).partition(":")
        site_key = self.site_key()
        if sealed_under != site_key_id(site_key):
            raise SiteKeyMismatch(f"{aad} was sealed under site key {sealed_under}; this server's is {site_key_id(site_key)} (check GASWORKS_SITE_KEY)")
        sealed = base64.b64decode(body)
        try:
            return AESGCM(site_key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad.encode()).decode()
        except InvalidTag:
            raise SiteKeyMismatch(f"{aad} does not open under the site key: tampered with?") from None

    # ---- per-meter security state -----------------------------------------------------------------

    def get_security(self, serial: str, *, lock: bool = False) -> MeterFrameSecurity | None:
        """The meter's security record with its model's profile (meters.model -> meter_models)."""
        row = self.c.execute(_SECURITY_LOCKED if lock and self.c.dialect.name == "postgresql" else _SECURITY, {"meter_serial": serial}).first()
        if row is None:
            return None
        model = self.c.execute(_MODEL_OF_METER, {"meter_serial": serial}).first()
        if model is None:
            raise InvalidInput(f"meter {serial} has frame security but no known model: set one with `gasworks meters set {serial} --model`", code="METER_MODEL_MISSING")
        return _security(row, model_of(model))

    def add_security(self, security: MeterFrameSecurity) -> None:
        self.c.execute(insert(t.meter_frame_security).values(serial=security.serial, **_security_values(security)))

    def save_security(self, security: MeterFrameSecurity) -> None:
        self.c.execute(_SAVE_SECURITY, _security_values(security) | {"meter_serial": security.serial})

    def models_in_use(self) -> set[str]:
        keyed = select(t.meters.c.model).join(t.meter_frame_security, t.meter_frame_security.c.serial == t.meters.c.serial).distinct()
        return {row.model for row in self.c.execute(keyed)}

    def count_by_model(self) -> dict[str, int]:
        rows = self.c.execute(select(t.meters.c.model, func.count()).join(t.meter_frame_security, t.meter_frame_security.c.serial == t.meters.c.serial).group_by(t.meters.c.model))
        return {model: int(n) for model, n in rows}

    # ---- keys --------------------------------------------------------------------------------------

    def add_key(self, serial: str, key_version: int, key: bytes, at: datetime) -> None:
        site_key = self.site_key()
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + AESGCM(site_key).encrypt(nonce, key, _aad(serial, key_version))
        self.c.execute(insert(t.meter_keys).values(serial=serial, key_version=key_version, key_sealed=sealed, site_key_id=site_key_id(site_key), created_at=at))

    def key(self, serial: str, key_version: int) -> bytes | None:
        """The meter's key of this version, or None if there is none or it was retired.

        From the process's cache when it was opened before: callers decide from the meter's security
        row, read in their own transaction, which versions may be used (never a retired one)."""
        site_key = self.site_key()
        assert self._site_key_id is not None
        cached = self._cache.get(serial, key_version, self._site_key_id)
        if cached is not None:
            return cached
        row = self.c.execute(select(t.meter_keys).where(t.meter_keys.c.serial == serial, t.meter_keys.c.key_version == key_version, t.meter_keys.c.retired_at.is_(None))).first()
        if row is None:
            return None
        if row.site_key_id != site_key_id(site_key):
            raise SiteKeyMismatch(f"meter {serial}'s key version {key_version} was sealed under site key {row.site_key_id}; this server's is {site_key_id(site_key)} (check GASWORKS_SITE_KEY)")
        sealed = bytes(row.key_sealed)
        try:
            key = AESGCM(site_key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _aad(serial, key_version))
        except InvalidTag:
            raise SiteKeyMismatch(f"meter {serial}'s key version {key_version} does not open under the site key: tampered with?") from None
        self._cache.put(serial, key_version, self._site_key_id, key)
        return key

    def reserve_downlink_counters(self, serials: Iterable[str]) -> dict[str, MeterFrameSecurity]:
        """The next downlink counter of each meter, taken for good in one UPDATE, with its security record.

        The caller holds these meters' rows locked (so the counters go out in the order they were
        taken). On PostgreSQL the UPDATE commits at once on a connection of its own: a counter once
        handed out is never handed out again, whatever becomes of the caller's transaction (rolled
        back after the frame was published, or the process killed before its commit). An unused
        counter is a gap, which meters accept: they refuse only counters not above the last one.
        On SQLite (one writer, which the caller's transaction already is) it is taken in the
        caller's transaction. A meter whose counter is exhausted is left out (see `counter_exhausted`).
        """
        wanted = sorted(set(serials))
        if not wanted:
            return {}
        if self.c.dialect.name == "postgresql":
            with self.c.engine.connect() as own:
                rows = own.execution_options(isolation_level="AUTOCOMMIT").execute(_RESERVE_DOWNLINK_COUNTERS, {"serials": wanted}).all()
        else:
            rows = self.c.execute(_RESERVE_DOWNLINK_COUNTERS, {"serials": wanted}).all()
        profiles = self._profiles([row.serial for row in rows])
        missing = [row.serial for row in rows if row.serial not in profiles]
        if missing:
            raise InvalidInput(f"meter {missing[0]} has frame security but no known model: set one with `gasworks meters set {missing[0]} --model`", code="METER_MODEL_MISSING")
        return {row.serial: _security(row, profiles[row.serial]) for row in rows}

    def _profiles(self, serials: list[str]) -> dict[str, MeterModel]:
        """Each meter's model profile (meters.model -> meter_models), as get_security reads it for one."""
        if not serials:
            return {}
        return {row.serial: model_of(row) for row in self.c.execute(_MODELS_OF_METERS, {"serials": serials})}

    def retire_other_keys(self, serial: str, keep_version: int, at: datetime) -> int:
        self._cache.forget_meter(serial)
        return self.c.execute(update(t.meter_keys).where(t.meter_keys.c.serial == serial, t.meter_keys.c.key_version != keep_version, t.meter_keys.c.retired_at.is_(None)).values(retired_at=at)).rowcount


# The delivery path's statements, built once (each execution binds its values).
_fs = t.meter_frame_security
_SECURITY = select(_fs).where(_fs.c.serial == bindparam("meter_serial"))
_SECURITY_LOCKED = _SECURITY.with_for_update()
_MODEL_OF_METER = select(t.meter_models).join(t.meters, t.meters.c.model == t.meter_models.c.name).where(t.meters.c.serial == bindparam("meter_serial"))
_MODELS_OF_METERS = select(t.meters.c.serial, t.meter_models).join(t.meter_models, t.meters.c.model == t.meter_models.c.name).where(t.meters.c.serial.in_(bindparam("serials", expanding=True)))
_SAVE_SECURITY = update(_fs).where(_fs.c.serial == bindparam("meter_serial"))
_RESERVE_DOWNLINK_COUNTERS = (
    update(_fs).where(_fs.c.serial.in_(bindparam("serials", expanding=True)), _fs.c.active_key_version.is_not(None), _fs.c.downlink_counter_sent < COUNTER_MAX).values(downlink_counter_sent=_fs.c.downlink_counter_sent + 1).returning(*_fs.c)
)

_SECURITY_COLUMNS = ("active_key_version", "pending_key_version", "uplink_counter_seen", "downlink_counter_sent", "rotated_at")


def _security_values(security: MeterFrameSecurity) -> dict[str, Any]:
    return {name: getattr(security, name) for name in _SECURITY_COLUMNS}


def _security(row: Any, profile: MeterModel) -> MeterFrameSecurity:
    return MeterFrameSecurity(serial=row.serial, profile=profile, **{name: getattr(row, name) for name in _SECURITY_COLUMNS})
