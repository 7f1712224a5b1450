"""A meter model profile: everything gasworks must know of a model's firmware, in one place.

Vendors implement CJ/T 188 differently, and gasworks has to speak each dialect and believe each
no further than it should. A profile says:

- `mac_scheme`: how its frames are sealed (SM4-CMAC, AES-128-CMAC, or none: carrier platform only);
- `di_byte_order`: how it writes a data identifier. CJ/T 188 sends DI0 first, so 0x901F goes out as
  `1F 90` (`low-first`); some vendors send `90 1F` (`high-first`);
- `credit_unit`: what its purchases and balance are counted in. A volume meter (ours) takes a purchase
  in litres and keeps a balance in litres; a money meter (CJ/T 188's 0xA013 as money meters use it)
  takes a purchase in yuan with two decimals (BCD, i.e. integer fen) and keeps its balance in money;
- `purchase_seq_bytes`: 4 (BCD, never wraps in a meter's life) or 1 (one binary byte: 254, 255, 0, 1 ...);
- `report_interval_s`: how often it wakes and reports by itself (daily for NB-IoT meters);
- `reopen_needs_button`: after a top-up, the resident presses the meter's button to reopen the valve.

Profiles are stored in the `meter_models` table; the built-in ones below are seeded by migration 0011.
"""

from dataclasses import dataclass
from enum import StrEnum

from gasworks.domain.errors import InvalidInput


class MacScheme(StrEnum):
    SM4_CMAC = "sm4-cmac"
    AES128_CMAC = "aes128-cmac"
    NONE = "none"  # the model cannot authenticate frames: only an authenticated carrier platform may carry them


class DiByteOrder(StrEnum):
    LOW_FIRST = "low-first"  # 0x901F sent as 1F 90: CJ/T 188 as written
    HIGH_FIRST = "high-first"  # 0x901F sent as 90 1F


class CreditUnit(StrEnum):
    LITRES = "litres"  # a volume meter: purchase and balance in litres
    FEN = "fen"  # a money meter: purchase and balance in money (BCD yuan with two decimals = integer fen)


PURCHASE_SEQ_WIDTHS = (1, 4)
REPORT_INTERVAL_S_MIN = 60
REPORT_INTERVAL_S_MAX = 7 * 86_400
MODEL_NAME_CHARS_MAX = 40
DESCRIPTION_CHARS_MAX = 200


@dataclass(frozen=True)
class MeterModel:
    """One meter model's profile. The first three fields keep their old positions."""

    name: str
    purchase_seq_bytes: int = 4  # 1: the serial on the wire is one byte and wraps at 255 (money meters' 0xA013)
    reopen_needs_button: bool = False  # the resident presses the meter's button to reopen the valve
    mac_scheme: MacScheme = MacScheme.SM4_CMAC
    di_byte_order: DiByteOrder = DiByteOrder.LOW_FIRST
    credit_unit: CreditUnit = CreditUnit.LITRES
    report_interval_s: int = 86_400
    description: str = ""

    @property
    def seq_modulus(self) -> int | None:
        return 256 if self.purchase_seq_bytes == 1 else None

    @property
    def seals_frames(self) -> bool:
        return self.mac_scheme != MacScheme.NONE

    @property
    def is_money_meter(self) -> bool:
        return self.credit_unit == CreditUnit.FEN

    def check(self) -> "MeterModel":
        """Refuse a profile no firmware could have; returns itself."""
        name = self.name
        if not name or len(name) > MODEL_NAME_CHARS_MAX or not all(ch.isascii() and (ch.isalnum() or ch in "._-") for ch in name):
            raise InvalidInput(f"a meter model name is 1-{MODEL_NAME_CHARS_MAX} of A-Z a-z 0-9 . _ -", code="INVALID_METER_MODEL_NAME")
        if self.purchase_seq_bytes not in PURCHASE_SEQ_WIDTHS:
            raise InvalidInput("a purchase serial is 1 byte (wraps at 255) or 4 BCD bytes", code="INVALID_SERIAL_WIDTH")
        if not REPORT_INTERVAL_S_MIN <= self.report_interval_s <= REPORT_INTERVAL_S_MAX:
            raise InvalidInput(f"report interval {self.report_interval_s} s outside {REPORT_INTERVAL_S_MIN}-{REPORT_INTERVAL_S_MAX} s", code="INVALID_REPORT_INTERVAL")
        if len(self.description) > DESCRIPTION_CHARS_MAX:
            raise InvalidInput(f"a description is at most {DESCRIPTION_CHARS_MAX} characters", code="DESCRIPTION_TOO_LONG")
        for value, kind in ((self.mac_scheme, MacScheme), (self.di_byte_order, DiByteOrder), (self.credit_unit, CreditUnit)):
            if not isinstance(value, kind):
                raise InvalidInput(f"{value!r} is not a {kind.__name__}", code="INVALID_METER_MODEL")
        return self


def parse_profile_value(kind: type[StrEnum], text: str) -> StrEnum:
    try:
        return kind(text)
    except ValueError:
        raise InvalidInput(f"{text[:40]!r} is not one of {', '.join(v.value for v in kind)}", code="INVALID_METER_MODEL") from None


DEFAULT_METER_MODEL = "cjt188-sm4"

BUILT_IN_MODELS: dict[str, MeterModel] = {
    m.name: m
    for m in (
        MeterModel("cjt188-sm4", description="CJ/T 188-2018 style NB-IoT volume meter, SM4-CMAC (the default)"),
        MeterModel("cjt188-aes", mac_scheme=MacScheme.AES128_CMAC, description="CJ/T 188 style volume meter whose module computes AES-128-CMAC"),
        MeterModel("carrier-plain", mac_scheme=MacScheme.NONE, description="no MAC: accepted only through an authenticated carrier platform"),
        MeterModel(
            "cjt188-money",
            purchase_seq_bytes=1,
            reopen_needs_button=True,
            di_byte_order=DiByteOrder.HIGH_FIRST,
            credit_unit=CreditUnit.FEN,
            description="money meter: 0xA013 with a one-byte serial and BCD yuan, DI sent 90 1F, button to reopen",
        ),
    )
}


def built_in_model(name: str) -> MeterModel | None:
    return BUILT_IN_MODELS.get(name)
