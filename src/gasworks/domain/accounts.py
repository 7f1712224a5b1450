"""Customer accounts (户号) and their meters."""

import re
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from gasworks.domain.errors import InvalidInput

_ACCOUNT_NO = re.compile(r"^[0-9]{10,12}$")
_METER_SERIAL = re.compile(r"^[0-9]{14}$")  # CJ/T 188 address: 7 bytes BCD = 14 digits


class MeterKind(StrEnum):
    IOT = "iot"
    CARD = "card"


class MeterStatus(StrEnum):
    ACTIVE = "active"
    REMOVED = "removed"


class CustomerClass(StrEnum):
    RESIDENTIAL = "residential"
    COMMERCIAL = "commercial"


def check_account_no(account_no: str) -> str:
    if not isinstance(account_no, str) or not _ACCOUNT_NO.match(account_no):
        raise InvalidInput(f"account number must be 10 to 12 digits, got {account_no!r}", code="INVALID_ACCOUNT_NO")
    return account_no


def check_meter_serial(serial: str) -> str:
    if not isinstance(serial, str) or not _METER_SERIAL.match(serial):
        raise InvalidInput(
            f"meter serial must be 14 digits (7-byte BCD address), got {serial!r}",
            code="INVALID_METER_SERIAL",
        )
    return serial


def mask_phone(phone: str) -> str:
    """'13812345678' -> '138****5678': first three and last four kept, the middle hidden."""
    digits = phone.strip()
    if len(digits) >= 8:
        return digits[:3] + "*" * (len(digits) - 7) + digits[-4:]
    return "*" * max(0, len(digits) - 2) + digits[-2:]


def mask_name(name: str) -> str:
    """'张三丰' -> '张**'. The channel shows this so a resident can recognise their own account."""
    if not name:
        return ""
    return name[0] + "*" * (len(name) - 1)


@dataclass(frozen=True)
class Meter:
    serial: str
    kind: MeterKind
    status: MeterStatus = MeterStatus.ACTIVE


@dataclass(frozen=True)
class Customer:
    account_no: str
    name: str
    address: str
    community: str
    grid: str
    phone: str
    customer_class: CustomerClass
    meter: Meter
    created_at: datetime | None = None
    location: tuple[float, float] | None = None  # latitude, longitude of the home

    @property
    def masked_phone(self) -> str:
        return mask_phone(self.phone)

    @property
    def masked_name(self) -> str:
        return mask_name(self.name)
