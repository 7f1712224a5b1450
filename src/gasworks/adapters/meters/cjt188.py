"""The meter wire format: a binary frame modelled on CJ/T 188-2018, carried as an MQTT payload.

A sealed frame (every meter model with a MAC, which is the default) is, byte by byte:

    [FE FE]  68  T  A0 A1 A2 A3 A4 A5 A6  C  L  DI0 DI1 SER  payload...  KV  CTR0 CTR1 CTR2 CTR3  MAC0 .. MAC7  CS  16

| offset (after FE)  | bytes | field                                                                      |
|--------------------|-------|----------------------------------------------------------------------------|
| 0                  | 1     | `68` start                                                                 |
| 1                  | 1     | `T` meter type, 0x30 for gas                                               |
| 2..8               | 7     | `A0..A6` the 14-digit serial in BCD, low byte first                        |
| 9                  | 1     | `C` control code: 0x01 read, 0x04 write; a reply sets bit 7 (0x81, 0x84); an error reply also sets bit 6 (0xC1, 0xC4). Bit 7 is the direction: clear gasworks -> meter, set meter -> gasworks |
| 10                 | 1     | `L` length of the data field, DI0 up to MAC7 (at most 64)                  |
| 11, 12             | 2     | `DI0 DI1` data identifier, low byte first (0x901F is sent `1F 90`); a `high-first` model sends `90 1F` |
| 13                 | 1     | `SER` the frame serial, repeated by the reply                              |
| 14 ..              | n     | payload, by DI and C (table below)                                         |
| 14+n               | 1     | `KV` key version: which of the meter's keys sealed the frame (0-255)       |
| 15+n .. 18+n       | 4     | `CTR` frame counter of this direction, binary, low byte first; each side takes a frame only if its counter is above the last one it took (replays are refused) |
| 19+n .. 26+n       | 8     | `MAC` first 8 bytes of CMAC(meter key, bytes 0 .. 18+n), i.e. from `68` through CTR3; SM4-CMAC or AES-128-CMAC as the meter model says |
| 27+n               | 1     | `CS` sum of bytes 0 .. 26+n mod 256 (a transmission check; the MAC is the integrity check) |
| 28+n               | 1     | `16` end                                                                   |

So L = 3 + n + 13. A plain frame (models without MAC, accepted only through an authenticated
carrier platform) is the same without KV, CTR and MAC: L = 3 + n.

- `FE` wake-up bytes: 0 to 4, ignored, outside the MAC.

Numbers in payloads are BCD, low byte first, as CJ/T 188 writes them. A signed volume is one sign
byte (0x00 plus, 0x80 minus) and four BCD bytes. Payloads by DI and control code:

| DI     | C    | direction        | payload                                                                |
|--------|------|------------------|------------------------------------------------------------------------|
| 0x901F | 0x01 | gasworks → meter | (none): read current data                                              |
| 0x901F | 0x81 | meter → gasworks | cumulative L (5), credit L (signed, 5), last applied purchase serial   |
|        |      |                  | (4), valve (1: 0x55 open, 0x99 closed), battery mV (2), status bits    |
|        |      |                  | (2, binary), clock (7: ss mm hh DD MM YYYY). Also sent unsolicited     |
|        |      |                  | when the meter wakes: that is its daily report.                        |
| 0xA013 | 0x04 | gasworks → meter | purchase serial (4), volume L (4): write purchase                      |
| 0xA013 | 0x84 | meter → gasworks | applied serial (4), credit L (signed, 5)                               |
| 0xA017 | 0x04 | gasworks → meter | valve (1: 0x55 open, 0x99 close)                                       |
| 0xA017 | 0x84 | meter → gasworks | valve state (1)                                                        |
| 0x8105 | 0x01 | gasworks → meter | (none): read purchase record                                           |
| 0x8105 | 0x81 | meter → gasworks | last applied serial (4), its volume L (4), total purchased L (5)       |
| any    | 0xC1/0xC4 | meter → gasworks | error code (1), see `MeterErrorCode`                              |

The meter's model profile (domain/meter_models.py) changes three things, and nothing else:
- `di_byte_order`: `high-first` models write and read DI as `90 1F`; a frame in the other order is
  refused ("no message has ... DI 0x1f90"), never guessed;
- `purchase_seq_bytes` 1: every purchase serial above (in 0xA013 both ways, in 0x901F's last applied
  serial) is one binary byte, 0-255, and wraps; gasworks unwraps it (domain/delivery.unwrap_seq);
- `credit_unit` fen (money meters): 0xA013 carries the purchase's amount as BCD yuan with two
  decimals (4 bytes: 12345 fen is `45 23 01 00`, ¥123.45) instead of litres, and both 0xA013's reply
  and 0x901F's report carry the balance in money (signed, 5 BCD bytes, fen) instead of credit litres.
  gasworks reads no purchase record (0x8105 reply) from a money meter.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from gasworks.domain.errors import MalformedFrame
from gasworks.domain.frames import SealedEnvelope, UplinkFrame
from gasworks.domain.meter_messages import (
    DI_VALVE,
    DI_WRITE_PURCHASE,
    Alarm,
    CommandRefused,
    CurrentData,
    MeterErrorCode,
    MeterMessage,
    PurchaseAck,
    PurchaseRecord,
    ReadCurrentData,
    ReadPurchaseRecord,
    SetValve,
    ValveAck,
    WritePurchase,
)
from gasworks.domain.meter_models import BUILT_IN_MODELS, DEFAULT_METER_MODEL, DiByteOrder, MeterModel
from gasworks.domain.meter_security import COUNTER_BYTES, MAC_BYTES

VOLUME_MODEL = BUILT_IN_MODELS[DEFAULT_METER_MODEL]  # gasworks' own layout: litres, 4-byte serials, DI low byte first

START = 0x68
END = 0x16
WAKE = 0xFE
WAKE_BYTES_MAX = 4
GAS_METER = 0x30
READ = 0x01
WRITE = 0x04
REPLY = 0x80
ERROR = 0x40
DATA_BYTES_MAX = 64
FRAME_BYTES_MAX = WAKE_BYTES_MAX + 1 + 1 + 7 + 1 + 1 + DATA_BYTES_MAX + 2

DI_CURRENT_DATA = 0x901F
DI_PURCHASE_RECORD = 0x8105

VALVE_OPEN = 0x55
VALVE_CLOSED = 0x99


@dataclass(frozen=True)
class Frame:
    serial: str
    control: int
    data: bytes  # DI0 DI1 SER payload


# ---- BCD helpers -------------------------------------------------------------------------------


def bcd(value: int, width: int) -> bytes:
    """Non-negative integer -> `width` BCD bytes, low byte first."""
    if not isinstance(value, int) or value < 0 or value >= 10 ** (2 * width):
        raise MalformedFrame(f"{value!r} does not fit in {width} BCD bytes")
    digits = f"{value:0{2 * width}d}"
    pairs = [digits[i : i + 2] for i in range(0, len(digits), 2)]
    return bytes(int(p[0]) << 4 | int(p[1]) for p in reversed(pairs))


def from_bcd(raw: bytes) -> int:
    value = 0
    for byte in reversed(raw):
        high, low = byte >> 4, byte & 0x0F
        if high > 9 or low > 9:
            raise MalformedFrame(f"byte {byte:#04x} is not BCD")
        value = value * 100 + high * 10 + low
    return value


def signed_bcd(value: int, width: int = 4) -> bytes:
    return bytes([0x80 if value < 0 else 0x00]) + bcd(abs(value), width)


def from_signed_bcd(raw: bytes) -> int:
    if raw[0] not in (0x00, 0x80):
        raise MalformedFrame(f"sign byte {raw[0]:#04x} is neither 0x00 nor 0x80")
    magnitude = from_bcd(raw[1:])
    return -magnitude if raw[0] == 0x80 else magnitude


def serial_to_address(serial: str) -> bytes:
    if len(serial) != 14 or not serial.isdigit():
        raise MalformedFrame(f"meter serial must be 14 digits, got {serial!r}")
    return bcd(int(serial), 7)


def address_to_serial(address: bytes) -> str:
    return f"{from_bcd(address):014d}"


# ---- frames ------------------------------------------------------------------------------------


def checksum(body: bytes) -> int:
    return sum(body) % 256


def encode_frame(frame: Frame, *, wake_bytes: int = 2) -> bytes:
    if len(frame.data) > DATA_BYTES_MAX:
        raise MalformedFrame(f"data field of {len(frame.data)} bytes exceeds {DATA_BYTES_MAX}")
    body = bytes([START, GAS_METER]) + serial_to_address(frame.serial) + bytes([frame.control, len(frame.data)]) + frame.data
    return bytes([WAKE] * wake_bytes) + body + bytes([checksum(body), END])


def decode_frame(raw: bytes) -> Frame:
    if not isinstance(raw, (bytes, bytearray)):
        raise MalformedFrame("a frame is bytes")
    if len(raw) > FRAME_BYTES_MAX:
        raise MalformedFrame(f"frame of {len(raw)} bytes exceeds {FRAME_BYTES_MAX}")
    start = 0
    while start < len(raw) and raw[start] == WAKE:
        start += 1
    if start > WAKE_BYTES_MAX:
        raise MalformedFrame(f"{start} wake-up bytes, at most {WAKE_BYTES_MAX}")
    frame = bytes(raw[start:])
    if len(frame) < 13:
        raise MalformedFrame(f"frame too short: {len(frame)} bytes after wake-up bytes")
    if frame[0] != START:
        raise MalformedFrame(f"frame starts with {frame[0]:#04x}, not 0x68")
    if frame[1] != GAS_METER:
        raise MalformedFrame(f"meter type {frame[1]:#04x} is not a gas meter (0x30)")
    length = frame[10]
    if length > DATA_BYTES_MAX:
        raise MalformedFrame(f"declared data length {length} exceeds {DATA_BYTES_MAX}")
    if len(frame) != 11 + length + 2:
        raise MalformedFrame(f"declared data length {length} does not match a frame of {len(frame)} bytes")
    body, cs, end = frame[: 11 + length], frame[11 + length], frame[12 + length]
    if end != END:
        raise MalformedFrame(f"frame ends with {end:#04x}, not 0x16")
    if checksum(body) != cs:
        raise MalformedFrame(f"checksum {cs:#04x}, expected {checksum(body):#04x}")
    return Frame(serial=address_to_serial(frame[2:9]), control=frame[9], data=frame[11 : 11 + length])


# ---- messages ----------------------------------------------------------------------------------


def _data(di: int, frame_seq: int, payload: bytes = b"", model: MeterModel = VOLUME_MODEL) -> bytes:
    if not 0 <= frame_seq <= 0xFF:
        raise MalformedFrame(f"frame serial {frame_seq} outside 0-255")
    di_bytes = [di >> 8, di & 0xFF] if model.di_byte_order == DiByteOrder.HIGH_FIRST else [di & 0xFF, di >> 8]
    return bytes([*di_bytes, frame_seq]) + payload


def _di(data: bytes, model: MeterModel) -> int:
    return data[0] << 8 | data[1] if model.di_byte_order == DiByteOrder.HIGH_FIRST else data[0] | data[1] << 8


def _seq(purchase_seq: int, model: MeterModel) -> bytes:
    """A purchase serial as the model carries it: 4 BCD bytes, or one binary byte (0-255)."""
    if model.purchase_seq_bytes == 1:
        if not 0 <= purchase_seq <= 0xFF:
            raise MalformedFrame(f"purchase serial {purchase_seq} does not fit this model's one byte: send it modulo 256")
        return bytes([purchase_seq])
    return bcd(purchase_seq, 4)


def _from_seq(raw: bytes) -> int:
    return raw[0] if len(raw) == 1 else from_bcd(raw)


def _credit(message: "CurrentData | PurchaseAck", model: MeterModel) -> bytes:
    """The balance: credit litres from a volume meter, money in fen from a money meter."""
    value = message.credit_fen if model.is_money_meter else message.credit_litres
    if value is None:
        raise MalformedFrame(f"a {model.name} meter reports its balance in {model.credit_unit.value}: none given")
    return signed_bcd(value)


def _purchase_amount(message: WritePurchase, model: MeterModel) -> bytes:
    if not model.is_money_meter:
        return bcd(message.volume_litres, 4)
    if message.amount_fen is None:
        raise MalformedFrame(f"a {model.name} meter is written the purchase's amount in fen: none given")
    return bcd(message.amount_fen, 4)  # BCD yuan with two decimals is the fen, digit for digit


def _valve_byte(open_: bool) -> int:
    return VALVE_OPEN if open_ else VALVE_CLOSED


def _valve_state(byte: int) -> bool:
    if byte not in (VALVE_OPEN, VALVE_CLOSED):
        raise MalformedFrame(f"valve byte {byte:#04x} is neither 0x55 nor 0x99")
    return byte == VALVE_OPEN


def _clock(at: datetime) -> bytes:
    return bcd(at.second, 1) + bcd(at.minute, 1) + bcd(at.hour, 1) + bcd(at.day, 1) + bcd(at.month, 1) + bcd(at.year, 2)


def _from_clock(raw: bytes) -> datetime:
    try:
        return datetime(from_bcd(raw[5:7]), from_bcd(raw[4:5]), from_bcd(raw[3:4]), from_bcd(raw[2:3]), from_bcd(raw[1:2]), from_bcd(raw[0:1]))
    except ValueError as error:
        raise MalformedFrame(f"meter clock is not a time: {error}") from None


def encode(message: MeterMessage, model: MeterModel = VOLUME_MODEL) -> bytes:
    """A message as the bytes of one plain frame (no security trailer: models without MAC, and tests)."""
    return encode_frame(_frame_of(message, model))


def _frame_of(message: MeterMessage, model: MeterModel = VOLUME_MODEL) -> Frame:
    s, q, m = message.serial, message.frame_seq, model
    match message:
        case ReadCurrentData():
            frame = Frame(s, READ, _data(DI_CURRENT_DATA, q, model=m))
        case CurrentData():
            payload = (
                bcd(message.cumulative_litres, 5)
                + _credit(message, m)
                + _seq(message.last_applied_seq, m)
                + bytes([_valve_byte(message.valve_open)])
                + bcd(message.battery_mv, 2)
                + int(message.alarms).to_bytes(2, "little")
                + _clock(message.meter_clock)
            )
            frame = Frame(s, READ | REPLY, _data(DI_CURRENT_DATA, q, payload, m))
        case WritePurchase():
            frame = Frame(s, WRITE, _data(DI_WRITE_PURCHASE, q, _seq(message.purchase_seq, m) + _purchase_amount(message, m), m))
        case PurchaseAck():
            frame = Frame(s, WRITE | REPLY, _data(DI_WRITE_PURCHASE, q, _seq(message.applied_seq, m) + _credit(message, m), m))
        case SetValve():
            frame = Frame(s, WRITE, _data(DI_VALVE, q, bytes([_valve_byte(message.open)]), m))
        case ValveAck():
            frame = Frame(s, WRITE | REPLY, _data(DI_VALVE, q, bytes([_valve_byte(message.valve_open)]), m))
        case ReadPurchaseRecord():
            frame = Frame(s, READ, _data(DI_PURCHASE_RECORD, q, model=m))
        case PurchaseRecord():
            if m.is_money_meter:
                raise MalformedFrame(f"gasworks reads no purchase record from a {m.name} meter (money meter)")
            payload = _seq(message.last_applied_seq, m) + bcd(message.last_volume_litres, 4) + bcd(message.total_purchased_litres, 5)
            frame = Frame(s, READ | REPLY, _data(DI_PURCHASE_RECORD, q, payload, m))
        case CommandRefused():
            control = (READ if message.refused_di in (DI_CURRENT_DATA, DI_PURCHASE_RECORD) else WRITE) | REPLY | ERROR
            frame = Frame(s, control, _data(message.refused_di, q, bytes([message.error]), m))
        case _:
            raise MalformedFrame(f"no frame for {type(message).__name__}")
    return frame


def payload_bytes(control: int, di: int, model: MeterModel = VOLUME_MODEL) -> int | None:
    """How many payload bytes (after DI and SER) a message of this control code and DI has, by model."""
    seq = model.purchase_seq_bytes
    sizes = {
        (READ, DI_CURRENT_DATA): 0,
        (READ | REPLY, DI_CURRENT_DATA): 5 + 5 + seq + 1 + 2 + 2 + 7,
        (WRITE, DI_WRITE_PURCHASE): seq + 4,
        (WRITE | REPLY, DI_WRITE_PURCHASE): seq + 5,
        (WRITE, DI_VALVE): 1,
        (WRITE | REPLY, DI_VALVE): 1,
        (READ, DI_PURCHASE_RECORD): 0,
    }
    if not model.is_money_meter:
        sizes[(READ | REPLY, DI_PURCHASE_RECORD)] = seq + 4 + 5
    return sizes.get((control, di))


def decode(raw: bytes, model: MeterModel = VOLUME_MODEL) -> MeterMessage:
    """The message in one plain frame, or MalformedFrame saying exactly what is wrong with it."""
    return message_of(decode_frame(raw), model)


def message_of(frame: Frame, model: MeterModel = VOLUME_MODEL) -> MeterMessage:
    """The message in a frame's data field (DI0 DI1 SER payload, security trailer already removed), read as `model` writes it."""
    if len(frame.data) < 3:
        raise MalformedFrame(f"data field of {len(frame.data)} bytes has no DI and SER")
    di = _di(frame.data, model)
    q = frame.data[2]
    p = frame.data[3:]
    s = frame.serial
    if frame.control & ERROR:
        if frame.control not in (READ | REPLY | ERROR, WRITE | REPLY | ERROR) or len(p) != 1:
            raise MalformedFrame(f"error reply with control {frame.control:#04x} and {len(p)} payload bytes")
        try:
            return CommandRefused(s, q, di, MeterErrorCode(p[0]))
        except ValueError:
            raise MalformedFrame(f"unknown meter error code {p[0]:#04x}") from None
    expected = payload_bytes(frame.control, di, model)
    if expected is None:
        raise MalformedFrame(f"no message has control {frame.control:#04x} and DI {di:#06x} (model {model.name}, DI {model.di_byte_order.value})")
    if len(p) != expected:
        raise MalformedFrame(f"DI {di:#06x} control {frame.control:#04x} carries {expected} payload bytes for model {model.name}, got {len(p)}")
    n = model.purchase_seq_bytes
    money = model.is_money_meter
    match (frame.control, di):
        case (0x01, 0x901F):
            return ReadCurrentData(s, q)
        case (0x81, 0x901F):
            balance = from_signed_bcd(p[5:10])
            return CurrentData(
                serial=s,
                frame_seq=q,
                cumulative_litres=from_bcd(p[0:5]),
                credit_litres=None if money else balance,
                last_applied_seq=_from_seq(p[10 : 10 + n]),
                valve_open=_valve_state(p[10 + n]),
                battery_mv=from_bcd(p[11 + n : 13 + n]),
                alarms=Alarm(int.from_bytes(p[13 + n : 15 + n], "little") & sum(Alarm)),
                meter_clock=_from_clock(p[15 + n : 22 + n]),
                credit_fen=balance if money else None,
            )
        case (0x04, 0xA013):
            amount = from_bcd(p[n : n + 4])
            return WritePurchase(s, q, _from_seq(p[0:n]), 0 if money else amount, amount if money else None)
        case (0x84, 0xA013):
            balance = from_signed_bcd(p[n : n + 5])
            return PurchaseAck(s, q, _from_seq(p[0:n]), None if money else balance, balance if money else None)
        case (0x04, 0xA017):
            return SetValve(s, q, _valve_state(p[0]))
        case (0x84, 0xA017):
            return ValveAck(s, q, _valve_state(p[0]))
        case (0x01, 0x8105):
            return ReadPurchaseRecord(s, q)
        case _:  # (0x81, 0x8105), the only one left in payload_bytes
            return PurchaseRecord(s, q, _from_seq(p[0:n]), from_bcd(p[n : n + 4]), from_bcd(p[n + 4 : n + 9]))


# ---- sealed frames -----------------------------------------------------------------------------

TRAILER_BYTES = 1 + COUNTER_BYTES + MAC_BYTES  # KV, CTR0..CTR3, MAC0..MAC7


@dataclass(frozen=True)
class SealedFrame:
    """A frame split into what it says and how it is sealed; nothing here is verified yet."""

    frame: Frame  # data = DI0 DI1 SER payload, the security trailer removed
    key_version: int
    counter: int
    mac: bytes
    signed: bytes  # the bytes the MAC covers: from 68 up to and including CTR3


def _header(serial: str, control: int, length: int) -> bytes:
    return bytes([START, GAS_METER]) + serial_to_address(serial) + bytes([control, length])


def encode_sealed(message: MeterMessage, *, key_version: int, counter: int, mac: Callable[[bytes], bytes], wake_bytes: int = 2, model: MeterModel = VOLUME_MODEL) -> bytes:
    """A message as one sealed frame: `mac` computes the MAC over the bytes from 68 to CTR3."""
    if not 0 <= key_version <= 0xFF:
        raise MalformedFrame(f"key version {key_version} outside 0-255")
    if not 0 <= counter < 2 ** (8 * COUNTER_BYTES):
        raise MalformedFrame(f"frame counter {counter} does not fit {COUNTER_BYTES} bytes")
    frame = _frame_of(message, model)
    data = frame.data + bytes([key_version]) + counter.to_bytes(COUNTER_BYTES, "little")
    length = len(data) + MAC_BYTES
    if length > DATA_BYTES_MAX:
        raise MalformedFrame(f"data field of {length} bytes exceeds {DATA_BYTES_MAX}")
    signed = _header(frame.serial, frame.control, length) + data
    tag = mac(signed)
    if len(tag) != MAC_BYTES:
        raise MalformedFrame(f"a MAC is {MAC_BYTES} bytes, got {len(tag)}")
    body = signed + tag
    return bytes([WAKE] * wake_bytes) + body + bytes([checksum(body), END])


def decode_sealed(raw: bytes) -> SealedFrame:
    """Split a sealed frame (structure and checksum checked); the caller verifies key, MAC and counter."""
    frame = decode_frame(raw)
    sealed = _split_sealed(frame)
    if sealed is None:
        raise not_sealed(frame.data)
    return sealed


def not_sealed(data: bytes) -> MalformedFrame:
    """Why a data field of this length cannot be a sealed frame's."""
    return MalformedFrame(f"data field of {len(data)} bytes has no DI, SER and security trailer ({TRAILER_BYTES} bytes)")


def _split_sealed(frame: Frame) -> SealedFrame | None:
    """The frame split as a sealed one, or None if its data field is too short for a security trailer."""
    if len(frame.data) < 3 + TRAILER_BYTES:
        return None
    inner, trailer = frame.data[:-TRAILER_BYTES], frame.data[-TRAILER_BYTES:]
    signed = _header(frame.serial, frame.control, len(frame.data)) + frame.data[:-MAC_BYTES]
    return SealedFrame(
        frame=Frame(frame.serial, frame.control, inner),
        key_version=trailer[0],
        counter=int.from_bytes(trailer[1 : 1 + COUNTER_BYTES], "little"),
        mac=trailer[1 + COUNTER_BYTES :],
        signed=signed,
    )


# ---- frames from meters, read at the edge ------------------------------------------------------


def read_uplink(raw: bytes) -> UplinkFrame:
    """A frame off the wire read for its structure only (MalformedFrame: structure or checksum).

    No key is used and nothing is verified: the meter it names, its direction and, when it is long
    enough to carry one, its security trailer split off. Whether the meter's model seals frames,
    and so whether the trailer is one, is known only from the meter's security row (the unit of
    work's `frames` port)."""
    frame = decode_frame(raw)
    sealed = _split_sealed(frame)
    envelope = None if sealed is None else SealedEnvelope(sealed.key_version, sealed.counter, sealed.signed, sealed.mac, sealed.frame.data)
    return UplinkFrame(serial=frame.serial, control=frame.control, is_reply=bool(frame.control & REPLY), data=frame.data, sealed=envelope, raw=bytes(raw))
