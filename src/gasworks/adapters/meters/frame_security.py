"""Sealing and opening meter frames: the MAC schemes, and both ends of the rules in domain/meter_security.py.

A sealed frame (layout in `cjt188.py`) ends its data field with KV (key version), CTR (a 4-byte
counter for its direction, low byte first) and the first 8 bytes of a CMAC over every byte from
68 up to CTR. The meter model's profile names the scheme: SM4-CMAC (the default; CJ/T 188-2018
cites SM4) or AES-128-CMAC. Both come from the `cryptography` package over OpenSSL; a process that
cannot compute a scheme some meter needs refuses to start (`require_schemes`), never falls back.

gasworks' side (`open_uplink`, `seal_downlink`) keeps the counters in the database, so a replay is
refused across restarts. The meter's side (`MeterKeyring`) is what meter firmware does, used by the
simulator and tests.
"""

import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gasworks.adapters.meters import cjt188
from gasworks.adapters.meters.transport import TransportError
from gasworks.domain import meter_security
from gasworks.domain.accounts import MeterKind
from gasworks.domain.errors import GasworksError
from gasworks.domain.frames import UplinkFrame
from gasworks.domain.meter_messages import MeterMessage
from gasworks.domain.meter_security import (
    KEY_BYTES,
    MAC_BYTES,
    FrameRefused,
    MacScheme,
    MeterFrameCounters,
    MeterFrameSecurity,
    MeterModel,
    OpenedUplink,
    model_profile,
)

if TYPE_CHECKING:
    from gasworks.services.unit_of_work import UnitOfWork

_CIPHERS = {MacScheme.SM4_CMAC: algorithms.SM4, MacScheme.AES128_CMAC: algorithms.AES128}


class MacSchemeUnavailable(GasworksError):
    """This process cannot compute a MAC scheme some meter model needs: it must not start."""

    code = "MAC_SCHEME_UNAVAILABLE"
    http_status = 500


class FrameNotSealed(TransportError, meter_security.FrameNotSealed):
    """A downlink cannot be sealed (no key for the meter): not sent, as a transport that cannot send."""


def compute_mac(scheme: MacScheme, key: bytes, data: bytes) -> bytes:
    """The first MAC_BYTES of CMAC(key, data) with the scheme's block cipher."""
    if scheme not in _CIPHERS:
        raise MacSchemeUnavailable(f"{scheme} computes no MAC")
    if len(key) != KEY_BYTES:
        raise MacSchemeUnavailable(f"a {scheme} key is {KEY_BYTES} bytes, got {len(key)}")
    mac = cmac.CMAC(_CIPHERS[scheme](key))
    mac.update(data)
    return mac.finalize()[:MAC_BYTES]


def mac_is_valid(scheme: MacScheme, key: bytes, data: bytes, tag: bytes) -> bool:
    return hmac.compare_digest(compute_mac(scheme, key, data), tag)


# ---- start-up self-test ---------------------------------------------------------------------------

# Known answers: SM4 from GB/T 32907-2016 appendix A.1 (key = plaintext); AES-128-CMAC from RFC 4493
# example 2. SM4-CMAC is then checked against CMAC built by hand from the block cipher (SP 800-38B).
_SM4_KEY = bytes.fromhex("0123456789abcdeffedcba9876543210")
_SM4_CIPHERTEXT = bytes.fromhex("681edf34d206965e86b3e94f536e4246")
_AES_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
_AES_MESSAGE = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a")
_AES_CMAC = bytes.fromhex("070a16b46b4d4144f79bdd9dd04a287c")


def block_encrypt(scheme: MacScheme, key: bytes, block: bytes) -> bytes:
    encryptor = Cipher(_CIPHERS[scheme](key), modes.ECB()).encryptor()  # noqa: S305 - one block, for the self-test
    return encryptor.update(block) + encryptor.finalize()


def cmac_by_hand(scheme: MacScheme, key: bytes, data: bytes) -> bytes:
    """CMAC (NIST SP 800-38B) from the bare block cipher: an independent check of the library's."""

    def double(block: bytes) -> bytes:
        n = int.from_bytes(block, "big") << 1
        if n >> 128:
            n = (n & (2**128 - 1)) ^ 0x87
        return n.to_bytes(16, "big")

    k1 = double(block_encrypt(scheme, key, bytes(16)))
    k2 = double(k1)
    blocks = [data[i : i + 16] for i in range(0, len(data), 16)] or [b""]
    last = blocks[-1]
    if len(last) == 16:
        last = bytes(a ^ b for a, b in zip(last, k1, strict=True))
    else:
        padded = last + b"\x80" + bytes(15 - len(last))
        last = bytes(a ^ b for a, b in zip(padded, k2, strict=True))
    state = bytes(16)
    for block in [*blocks[:-1], last]:
        state = block_encrypt(scheme, key, bytes(a ^ b for a, b in zip(state, block, strict=True)))
    return state


def _self_test(scheme: MacScheme) -> None:
    if scheme == MacScheme.SM4_CMAC:
        if block_encrypt(scheme, _SM4_KEY, _SM4_KEY) != _SM4_CIPHERTEXT:
            raise ValueError("SM4 does not give the GB/T 32907 known answer")
        sample = b"gasworks sm4-cmac self-test, longer than one block"
        if compute_mac(scheme, _SM4_KEY, sample) != cmac_by_hand(scheme, _SM4_KEY, sample)[:MAC_BYTES]:
            raise ValueError("SM4-CMAC differs from CMAC built from SM4")
    elif scheme == MacScheme.AES128_CMAC:
        if compute_mac(scheme, _AES_KEY, _AES_MESSAGE) != _AES_CMAC[:MAC_BYTES]:
            raise ValueError("AES-128-CMAC does not give the RFC 4493 known answer")


def require_schemes(schemes: Iterable[MacScheme]) -> None:
    """Refuse to start unless every scheme a configured meter model needs computes its known answers."""
    for scheme in sorted(set(schemes)):
        if scheme == MacScheme.NONE:
            continue
        try:
            _self_test(scheme)
        except (UnsupportedAlgorithm, ValueError, TypeError) as error:
            from cryptography.hazmat.backends.openssl import backend

            raise MacSchemeUnavailable(
                f"this process cannot compute {scheme} ({backend.openssl_version_text()}: {error}); meters whose model uses it could not be served, so gasworks refuses to start rather than fall back to unauthenticated frames"
            ) from None


def require_schemes_in_use(uow: "UnitOfWork", *, also_models: Iterable[str] = ()) -> None:
    """The schemes of every meter model stored in this database, and of the built-in `also_models`."""
    with uow:
        schemes = {m.mac_scheme for m in uow.meter_models.list()}
    require_schemes(schemes | {model_profile(m).mac_scheme for m in also_models})


# ---- gasworks' side ---------------------------------------------------------------------------------


def open_uplink(frame: UplinkFrame, uow: "UnitOfWork", *, carrier_authenticated: bool = False) -> OpenedUplink:
    """Verify one uplink and take its counter, in a transaction of its own; raise MalformedFrame or FrameRefused.

    The frame was read at the worker's edge (`cjt188.read_uplink`: structure and checksum) and its
    address and direction checked by `services/delivery.py: handle_uplink`. Checked here, in this
    order: the meter is known and keyed, key version accepted, MAC, content, counter above the last
    one taken. Only a frame passing all of them moves the counter. (If the process dies after this
    commit and before the message is applied, that one frame is lost, never applied twice: meters
    report again and acknowledge again.)
    """
    with uow:
        security = uow.meter_keys.get_security(frame.serial, lock=True)
        if security is None:
            link = uow.meters.get(frame.serial)
            if link is None or link.kind != MeterKind.IOT:
                raise FrameRefused(f"no IoT meter {frame.serial}", code="UNKNOWN_METER")
            raise FrameRefused(f"meter {frame.serial} has no key: give it one with `gasworks meters rotate-key {frame.serial}`", code="METER_NOT_KEYED")
        profile = security.profile
        if not profile.seals_frames:
            if not carrier_authenticated:
                raise FrameRefused(
                    f"meter {frame.serial} is a {profile.name} (no MAC): its frames are taken only through an authenticated carrier platform",
                    code="FRAME_MAC_REQUIRED",
                )
            return OpenedUplink(cjt188.message_of(cjt188.Frame(frame.serial, frame.control, frame.data), profile), None, None)
        sealed = frame.sealed
        if sealed is None:
            raise cjt188.not_sealed(frame.data)
        key = uow.meter_keys.key(frame.serial, sealed.key_version) if sealed.key_version in security.usable_versions() else None
        if key is None:
            raise FrameRefused(
                f"meter {frame.serial} frame under key version {sealed.key_version}; accepted: {list(security.usable_versions())}",
                code="FRAME_KEY_VERSION_UNKNOWN",
            )
        if not mac_is_valid(profile.mac_scheme, key, sealed.signed, sealed.mac):
            raise FrameRefused(f"meter {frame.serial} frame MAC does not verify under key version {sealed.key_version}", code="FRAME_MAC_INVALID")
        message = cjt188.message_of(cjt188.Frame(frame.serial, frame.control, sealed.body), profile)
        now = uow.clock.now()
        security.take_uplink(key_version=sealed.key_version, counter=sealed.counter, at=now)
        uow.meter_keys.save_security(security)
        for event in security.events:  # a rotation completed by the meter itself
            uow.meter_keys.retire_other_keys(security.serial, security.active_key_version or 0, now)
            uow.audit.append(at=now, actor=f"meter:{security.serial}", action="meter.key.rotated", subject=f"meter:{security.serial}", detail={"note": event})
        uow.commit()
        return OpenedUplink(message, sealed.key_version, sealed.counter)


class FrameSecurityCodec:
    """services.unit_of_work.MeterFrames over CJ/T 188 frames with the meter's MAC scheme."""

    def open_uplink(self, frame: UplinkFrame, uow: "UnitOfWork", *, carrier_authenticated: bool = False) -> OpenedUplink:
        return open_uplink(frame, uow, carrier_authenticated=carrier_authenticated)

    def seal_downlink(self, message: MeterMessage, uow: "UnitOfWork", *, reserved: MeterFrameSecurity | None = None) -> bytes:
        return seal_downlink(message, uow, reserved=reserved)


def seal_downlink(message: MeterMessage, uow: "UnitOfWork", *, reserved: MeterFrameSecurity | None = None) -> bytes:
    """One command as a frame for its meter, in the caller's open unit of work (the meter is locked there).

    A sealed frame takes the meter's next downlink counter. `reserved`: the counter taken already,
    with the meter's others in one UPDATE (`MeterKeys.reserve_downlink_counters`); otherwise it is
    taken here. Either way it is taken for good before the frame exists, so it is never used twice.
    """
    security = reserved if reserved is not None else uow.meter_keys.reserve_downlink_counters([message.serial]).get(message.serial)
    if security is None:  # not reserved: say why (no key, a model without MAC, no active key, counter used up)
        security = uow.meter_keys.get_security(message.serial)
        if security is None:
            raise FrameNotSealed(f"meter {message.serial} has no key: nothing is sent to it (issue one with `gasworks meters rotate-key`)")
        if not security.profile.seals_frames:
            return cjt188.encode(message, security.profile)  # the carrier platform authenticates this model's traffic
        if security.active_key_version is None:
            raise FrameNotSealed(f"meter {message.serial} has no active key")
        security.next_downlink_counter()  # raises FRAME_COUNTER_EXHAUSTED
        raise FrameNotSealed(f"meter {message.serial}: no downlink counter could be reserved")
    profile = security.profile
    if not profile.seals_frames:
        return cjt188.encode(message, profile)  # the carrier platform authenticates this model's traffic
    version = security.active_key_version
    key = uow.meter_keys.key(message.serial, version) if version is not None else None
    if key is None:
        raise FrameNotSealed(f"meter {message.serial} has no active key")
    counter = security.downlink_counter_sent
    return cjt188.encode_sealed(message, key_version=version, counter=counter, mac=lambda signed: compute_mac(profile.mac_scheme, key, signed), model=profile)


# ---- the meter's side (firmware) -------------------------------------------------------------------


@dataclass
class MeterKeyring:
    """The key a meter holds and its two counters: seals what it says, opens only what gasworks sealed."""

    scheme: MacScheme
    key: bytes
    counters: MeterFrameCounters
    model: MeterModel = field(default_factory=lambda: cjt188.VOLUME_MODEL)  # how its firmware lays out frames

    def seal(self, message: MeterMessage) -> bytes:
        counter = self.counters.next_uplink_counter()
        return cjt188.encode_sealed(message, key_version=self.counters.key_version, counter=counter, mac=lambda signed: compute_mac(self.scheme, self.key, signed), model=self.model)

    def open(self, raw: bytes) -> MeterMessage:
        """A downlink's message, or MalformedFrame / FrameRefused (unknown key version, bad MAC, replay)."""
        sealed = cjt188.decode_sealed(raw)
        if sealed.frame.control & cjt188.REPLY:  # the meter's own frame reflected back at it
            raise FrameRefused(f"control {sealed.frame.control:#04x} is a meter's reply, not a command", code="NOT_A_DOWNLINK")
        if sealed.key_version != self.counters.key_version:
            raise FrameRefused(f"downlink under key version {sealed.key_version}; this meter holds {self.counters.key_version}", code="FRAME_KEY_VERSION_UNKNOWN")
        if not mac_is_valid(self.scheme, self.key, sealed.signed, sealed.mac):
            raise FrameRefused("downlink MAC does not verify", code="FRAME_MAC_INVALID")
        message = cjt188.message_of(sealed.frame, self.model)
        self.counters.take_downlink(key_version=sealed.key_version, counter=sealed.counter)
        return message

    def install(self, key_version: int, key: bytes) -> None:
        """A new key written into the meter (counters carry on: they never go back)."""
        self.key, self.counters.key_version = key, key_version
