"""Money is integer fen. Yuan appear only at the edge, as text, parsed and formatted exactly."""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from gasworks.domain.errors import InvalidInput

_YUAN_TEXT = re.compile(r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,2})?$")


def yuan_text_to_fen(text: str) -> int:
    """'12.30' -> 1230. Refuses anything that is not a plain non-negative amount with ≤ 2 decimals."""
    if not isinstance(text, str) or not _YUAN_TEXT.match(text):
        raise InvalidInput(f"not a yuan amount: {text!r}", code="INVALID_AMOUNT")
    return int(Decimal(text) * 100)


# No channel documents a larger single payment (Alipay's total_amount is at most ¥100,000,000):
# anything above cannot be real and is refused as malformed, never held. It also keeps every sum of
# amounts far inside 64 bits.
PAYMENT_FEN_ABSOLUTE_MAX = 10_000_000_000


def check_payment_amount(amount_fen: int, payment_fen_max: int) -> None:
    """Orders and device payments are bounded: 1 fen up to the configured ceiling."""
    if not 0 < amount_fen:
        raise InvalidInput("amount must be at least 1 fen", code="AMOUNT_OUT_OF_RANGE")
    if amount_fen > payment_fen_max:
        raise InvalidInput(f"amount {amount_fen} fen is above the payment ceiling of {payment_fen_max} fen", code="AMOUNT_ABOVE_LIMIT")


@dataclass(frozen=True)
class PaymentCeiling:
    """The largest single payment: one default, overridable per channel and per customer class
    (an override may be higher or lower than the default). When both overrides apply, the smaller
    wins: each is a bound."""

    fen_max: int
    by_channel: Mapping[str, int] = field(default_factory=dict)
    by_class: Mapping[str, int] = field(default_factory=dict)

    def fen_max_for(self, channel_id: str, customer_class: str | None) -> int:
        overrides = [self.by_channel.get(channel_id), self.by_class.get(customer_class) if customer_class else None]
        applying = [fen_max for fen_max in overrides if fen_max is not None]
        return min(min(applying) if applying else self.fen_max, PAYMENT_FEN_ABSOLUTE_MAX)


def fen_to_yuan_text(amount_fen: int) -> str:
    """1230 -> '12.30'; -5 -> '-0.05'."""
    sign = "-" if amount_fen < 0 else ""
    whole, cents = divmod(abs(amount_fen), 100)
    return f"{sign}{whole}.{cents:02d}"
