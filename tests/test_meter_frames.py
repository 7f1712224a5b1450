"""The meter wire format: what is encoded decodes to the same message; garbage is refused, never crashes."""

import re
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gasworks.adapters.meters import cjt188
from gasworks.domain.errors import MalformedFrame
from gasworks.domain.meter_messages import (
    Alarm,
    CommandRefused,
    CurrentData,
    MeterErrorCode,
    PurchaseAck,
    PurchaseRecord,
    ReadCurrentData,
    ReadPurchaseRecord,
    SetValve,
    ValveAck,
    WritePurchase,
)

serials = st.integers(min_value=0, max_value=10**14 - 1).map(lambda n: f"{n:014d}")
frame_seqs = st.integers(min_value=0, max_value=255)
litres4 = st.integers(min_value=0, max_value=10**8 - 1)
litres5 = st.integers(min_value=0, max_value=10**10 - 1)
signed_litres = st.integers(min_value=-(10**8) + 1, max_value=10**8 - 1)
clocks = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31, 23, 59, 59)).map(lambda d: d.replace(microsecond=0))

messages = st.one_of(
    st.builds(ReadCurrentData, serials, frame_seqs),
    st.builds(
        CurrentData,
        serial=serials,
        frame_seq=frame_seqs,
        cumulative_litres=litres5,
        credit_litres=signed_litres,
        last_applied_seq=litres4,
        valve_open=st.booleans(),
        battery_mv=st.integers(min_value=0, max_value=9999),
        alarms=st.sampled_from(list(Alarm)).map(Alarm) | st.just(Alarm(0)) | st.just(Alarm.LEAK | Alarm.LOW_BATTERY),
        meter_clock=clocks,
    ),
    st.builds(WritePurchase, serials, frame_seqs, litres4, litres4),
    st.builds(PurchaseAck, serials, frame_seqs, litres4, signed_litres),
    st.builds(SetValve, serials, frame_seqs, st.booleans()),
    st.builds(ValveAck, serials, frame_seqs, st.booleans()),
    st.builds(ReadPurchaseRecord, serials, frame_seqs),
    st.builds(PurchaseRecord, serials, frame_seqs, litres4, litres4, litres5),
    st.builds(CommandRefused, serials, frame_seqs, st.sampled_from([cjt188.DI_WRITE_PURCHASE, cjt188.DI_VALVE, cjt188.DI_CURRENT_DATA]), st.sampled_from(list(MeterErrorCode))),
)


@given(messages)
def test_every_message_round_trips_through_its_frame(message):
    assert cjt188.decode(cjt188.encode(message)) == message


def test_write_purchase_frame_is_laid_out_as_documented():
    raw = cjt188.encode(WritePurchase("12345678901234", 7, purchase_seq=3, volume_litres=33_444))
    assert raw.hex(" ") == ("fe fe 68 30 34 12 90 78 56 34 12 04 0b 13 a0 07 03 00 00 00 44 34 03 00 " + f"{cjt188.checksum(raw[2:-2]):02x} 16")
    assert raw[2] == 0x68 and raw[-1] == 0x16


def test_a_reply_sets_the_reply_bit_and_an_error_sets_the_error_bit():
    ack = cjt188.decode_frame(cjt188.encode(PurchaseAck("00000000000001", 1, 1, 100)))
    refused = cjt188.decode_frame(cjt188.encode(CommandRefused("00000000000001", 1, cjt188.DI_WRITE_PURCHASE, MeterErrorCode.SEQUENCE_GAP)))
    assert ack.control == 0x84
    assert refused.control == 0xC4


def _corrupt(raw: bytes, index: int, value: int) -> bytes:
    return raw[:index] + bytes([value]) + raw[index + 1 :]


GOOD = cjt188.encode(SetValve("00000000000001", 1, True))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "too short"),
        (_corrupt(GOOD, 2, 0x69), "not 0x68"),
        (_corrupt(GOOD, 3, 0x10), "not a gas meter"),  # a water meter's frame
        (_corrupt(GOOD, len(GOOD) - 2, (GOOD[-2] + 1) % 256), "checksum"),
        (_corrupt(GOOD, len(GOOD) - 1, 0x17), "not 0x16"),
        (GOOD[:-3] + GOOD[-2:], "does not match"),
        (bytes([0xFE] * 6) + GOOD[2:], "wake-up bytes"),
    ],
)
def test_malformed_frames_are_refused_with_the_reason(raw, reason):
    with pytest.raises(MalformedFrame, match=reason):
        cjt188.decode(raw)


def test_a_frame_with_a_valve_byte_that_means_nothing_is_refused():
    body = bytearray(GOOD[2:-2])
    body[-1] = 0x42
    raw = bytes(body) + bytes([cjt188.checksum(bytes(body)), 0x16])
    with pytest.raises(MalformedFrame, match="valve byte"):
        cjt188.decode(raw)


@given(st.binary(max_size=120))
def test_random_bytes_never_crash_the_decoder(raw):
    try:
        cjt188.decode(raw)
    except MalformedFrame:
        pass


@given(messages, st.data())
def test_any_single_flipped_byte_is_refused_or_still_a_well_formed_message(message, data):
    raw = bytearray(cjt188.encode(message))
    index = data.draw(st.integers(min_value=2, max_value=len(raw) - 1))
    raw[index] ^= data.draw(st.integers(min_value=1, max_value=255))
    with pytest.raises(MalformedFrame):
        decoded = cjt188.decode(bytes(raw))
        # A flip can only pass if checksum and content agree by chance: then it decodes to
        # something other than the original, which the dispatcher still validates by serial and DI.
        assert decoded != message
        raise MalformedFrame("decoded to a different message")


# ---- sealed frames: key version, counter and MAC (adapters/meters/frame_security.py) -----------

from gasworks.adapters.meters.frame_security import MeterKeyring, compute_mac, mac_is_valid  # noqa: E402
from gasworks.domain.meter_security import FrameRefused, MacScheme, MeterFrameCounters  # noqa: E402

keys = st.binary(min_size=16, max_size=16)
schemes = st.sampled_from([MacScheme.SM4_CMAC, MacScheme.AES128_CMAC])
KEY = bytes(range(16))


def _sealed(message, *, scheme=MacScheme.SM4_CMAC, key=KEY, key_version=1, counter=1):
    return cjt188.encode_sealed(message, key_version=key_version, counter=counter, mac=lambda signed: compute_mac(scheme, key, signed))


@given(messages, schemes, keys, st.integers(min_value=0, max_value=255), st.integers(min_value=0, max_value=2**32 - 1))
def test_every_message_round_trips_through_its_sealed_frame(message, scheme, key, key_version, counter):
    sealed = cjt188.decode_sealed(_sealed(message, scheme=scheme, key=key, key_version=key_version, counter=counter))
    assert cjt188.message_of(sealed.frame) == message
    assert (sealed.key_version, sealed.counter) == (key_version, counter)
    assert mac_is_valid(scheme, key, sealed.signed, sealed.mac)


def test_sealed_write_purchase_frame_is_laid_out_as_documented():
    raw = _sealed(WritePurchase("12345678901234", 7, purchase_seq=3, volume_litres=33_444), key_version=2, counter=0x01020304)
    frame = raw[2:]  # after the two FE
    n = 8  # the payload of a write purchase
    assert frame[:11].hex(" ") == "68 30 34 12 90 78 56 34 12 04 18"  # L = 3 + 8 + 13 = 0x18
    assert frame[11:14].hex(" ") == "13 a0 07"
    assert frame[14 : 14 + n].hex(" ") == "03 00 00 00 44 34 03 00"
    assert frame[14 + n] == 2  # KV
    assert frame[15 + n : 19 + n].hex(" ") == "04 03 02 01"  # CTR, low byte first
    assert frame[19 + n : 27 + n] == compute_mac(MacScheme.SM4_CMAC, KEY, frame[: 19 + n])  # MAC over 68 .. CTR3
    assert frame[27 + n] == cjt188.checksum(frame[: 27 + n]) and frame[28 + n] == 0x16
    assert len(frame) == 29 + n


def test_sm4_and_aes_macs_of_one_frame_differ_and_each_verifies_only_under_its_scheme():
    message = SetValve("00000000000001", 1, True)
    sm4, aes = cjt188.decode_sealed(_sealed(message)), cjt188.decode_sealed(_sealed(message, scheme=MacScheme.AES128_CMAC))
    assert sm4.mac != aes.mac
    assert not mac_is_valid(MacScheme.AES128_CMAC, KEY, sm4.signed, sm4.mac)
    assert not mac_is_valid(MacScheme.SM4_CMAC, KEY, aes.signed, aes.mac)


def _meter_keyring() -> MeterKeyring:
    return MeterKeyring(MacScheme.SM4_CMAC, KEY, MeterFrameCounters(key_version=1))


def _verify(raw: bytes):
    """What both ends check of a frame before counters and direction: structure, key version 1, MAC, content."""
    sealed = cjt188.decode_sealed(raw)
    if sealed.key_version != 1 or not mac_is_valid(MacScheme.SM4_CMAC, KEY, sealed.signed, sealed.mac):
        raise FrameRefused("not sealed under the key", code="FRAME_MAC_INVALID")
    return cjt188.message_of(sealed.frame)


@given(st.binary(max_size=120))
def test_random_bytes_never_crash_the_sealed_decoder_and_are_never_taken(raw):
    with pytest.raises((MalformedFrame, FrameRefused)):
        _meter_keyring().open(raw)
    with pytest.raises((MalformedFrame, FrameRefused)):
        _verify(raw)


@given(messages, st.data(), st.booleans())
def test_any_single_flipped_byte_of_a_sealed_frame_is_refused_even_with_its_checksum_fixed(message, data, fix_checksum):
    raw = bytearray(_sealed(message, counter=5))
    assert _verify(bytes(raw)) == message  # untouched, it is taken
    index = data.draw(st.integers(min_value=2, max_value=len(raw) - (3 if fix_checksum else 1)))
    raw[index] ^= data.draw(st.integers(min_value=1, max_value=255))
    if fix_checksum:  # an attacker recomputes the checksum: only the MAC stands in the way
        raw[-2] = cjt188.checksum(bytes(raw[2:-2]))
    with pytest.raises((MalformedFrame, FrameRefused)):
        _verify(bytes(raw))


def test_a_frame_sealed_under_another_key_or_version_or_replayed_is_refused_with_its_code():
    keyring = _meter_keyring()
    message = WritePurchase("00000000000001", 1, 1, 1_000)
    with pytest.raises(FrameRefused) as wrong_key:
        keyring.open(_sealed(message, key=bytes(16), counter=1))
    with pytest.raises(FrameRefused) as wrong_version:
        keyring.open(_sealed(message, key_version=2, counter=1))
    assert keyring.open(_sealed(message, counter=7)) == message
    with pytest.raises(FrameRefused) as replayed:
        keyring.open(_sealed(message, counter=7))
    with pytest.raises(FrameRefused) as older:
        keyring.open(_sealed(message, counter=6))
    assert [e.value.code for e in (wrong_key, wrong_version, replayed, older)] == [
        "FRAME_MAC_INVALID", "FRAME_KEY_VERSION_UNKNOWN", "FRAME_REPLAYED", "FRAME_REPLAYED",
    ]  # fmt: skip
    with pytest.raises(MalformedFrame):
        keyring.open(cjt188.encode(message))  # a plain frame has no trailer: never taken by a meter with a key


@given(messages, st.booleans())
def test_an_uplink_read_at_the_edge_holds_what_the_frame_and_its_trailer_say(message, sealed):
    raw = _sealed(message, counter=9) if sealed else cjt188.encode(message)
    read = cjt188.read_uplink(raw)
    frame = cjt188.decode_frame(raw)
    assert (read.serial, read.control, read.data, read.raw) == (frame.serial, frame.control, frame.data, raw)
    assert read.is_reply == bool(frame.control & cjt188.REPLY)
    if read.sealed is None:  # too short for a trailer: exactly when the sealed decoder refuses it
        with pytest.raises(MalformedFrame, match="security trailer"):
            cjt188.decode_sealed(raw)
    else:
        split = cjt188.decode_sealed(raw)
        assert (read.sealed.key_version, read.sealed.counter, read.sealed.signed, read.sealed.mac, read.sealed.body) == (split.key_version, split.counter, split.signed, split.mac, split.frame.data)
    if sealed:
        assert read.sealed is not None and read.sealed.counter == 9


@given(st.binary(max_size=120))
def test_random_bytes_read_at_the_edge_are_refused_as_the_decoder_refuses_them(raw):
    try:
        cjt188.decode_frame(raw)
    except MalformedFrame as error:
        with pytest.raises(MalformedFrame, match=re.escape(error.message)):
            cjt188.read_uplink(raw)
    else:
        assert cjt188.read_uplink(raw).serial == cjt188.decode_frame(raw).serial
