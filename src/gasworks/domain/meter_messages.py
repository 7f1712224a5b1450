"""What meters and gasworks say to each other, independent of how it is encoded on the wire.

The wire format (a CJ/T 188-style binary frame) lives in `adapters/meters/cjt188.py`. Every message
carries the meter's serial (its 14-digit address) and a frame serial `frame_seq` (0-255, CJ/T 188's
SER) which a reply repeats, so a reply can be matched to the request it answers.
"""

from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum, IntFlag

# CJ/T 188 data identifiers of what gasworks writes to a meter: a refusal names the one it refuses.
DI_WRITE_PURCHASE = 0xA013
DI_VALVE = 0xA017


class Alarm(IntFlag):
    """Status bits a meter reports (two bytes, CJ/T 188's ST word)."""

    VALVE_FAULT = 0x0001
    LOW_BATTERY = 0x0002
    LEAK = 0x0004
    TAMPER = 0x0008
    MAGNETIC_ATTACK = 0x0010
    CREDIT_LOW = 0x0020
    CREDIT_EXHAUSTED = 0x0040


class MeterErrorCode(IntEnum):
    """Why a meter refused a command (the byte after SER in an error reply)."""

    SEQUENCE_GAP = 0x01  # a purchase serial beyond the next one expected
    BAD_DATA = 0x02
    VALVE_FAULT = 0x03
    BUSY = 0x04


@dataclass(frozen=True)
class CurrentData:
    """Meter -> gasworks, on every wake-up (unsolicited) or when asked (DI 0x901F)."""

    serial: str
    frame_seq: int
    cumulative_litres: int
    credit_litres: int | None  # negative while running on overdraft; None from a money meter
    last_applied_seq: int  # the last purchase serial the meter applied (as the wire carries it)
    valve_open: bool
    battery_mv: int
    alarms: Alarm
    meter_clock: datetime  # the meter's own clock, naive local time as it keeps it
    credit_fen: int | None = None  # a money meter's balance in fen (negative on overdraft); None from a volume meter


@dataclass(frozen=True)
class ReadCurrentData:
    serial: str
    frame_seq: int


@dataclass(frozen=True)
class WritePurchase:
    """gasworks -> meter: add `volume_litres` of credit as purchase number `purchase_seq` (DI 0xA013).

    A money meter is written `amount_fen` (what the purchase cost) instead: its firmware prices the gas."""

    serial: str
    frame_seq: int
    purchase_seq: int
    volume_litres: int
    amount_fen: int | None = None


@dataclass(frozen=True)
class PurchaseAck:
    """The meter's answer to a purchase: what it has applied so far (a duplicate is acked, not reapplied)."""

    serial: str
    frame_seq: int
    applied_seq: int
    credit_litres: int | None  # None from a money meter
    credit_fen: int | None = None  # a money meter's balance in fen


@dataclass(frozen=True)
class SetValve:
    serial: str
    frame_seq: int
    open: bool


@dataclass(frozen=True)
class ValveAck:
    serial: str
    frame_seq: int
    valve_open: bool


@dataclass(frozen=True)
class ReadPurchaseRecord:
    serial: str
    frame_seq: int


@dataclass(frozen=True)
class PurchaseRecord:
    """DI 0x8105: the meter's own record of purchases applied."""

    serial: str
    frame_seq: int
    last_applied_seq: int
    last_volume_litres: int
    total_purchased_litres: int


@dataclass(frozen=True)
class CommandRefused:
    """An error reply: the meter understood the request and refused it."""

    serial: str
    frame_seq: int
    refused_di: int
    error: MeterErrorCode


MeterMessage = CurrentData | ReadCurrentData | WritePurchase | PurchaseAck | SetValve | ValveAck | ReadPurchaseRecord | PurchaseRecord | CommandRefused
