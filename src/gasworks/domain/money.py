"""Money is integer fen. Yuan appear only at the edge, as text, parsed and formatted exactly."""

import re
from decimal import Decimal

from gasworks.domain.errors import InvalidInput

_YUAN_TEXT = re.compile(r"^(0|[1-9][0-9]{0,11})(\.[0-9]{1,2})?$")


def yuan_text_to_fen(text: str) -> int:
    """'12.30' -> 1230. Refuses anything that is not a plain non-negative amount with ≤ 2 decimals."""
    if not isinstance(text, str) or not _YUAN_TEXT.match(text):
        raise InvalidInput(f"not a yuan amount: {text!r}", code="INVALID_AMOUNT")
    return int(Decimal(text) * 100)


def check_payment_amount(amount_fen: int, payment_fen_max: int) -> None:
    """Orders and device payments are bounded: 1 fen up to the configured maximum."""
    if not 0 < amount_fen <= payment_fen_max:
        raise InvalidInput(f"amount must be 1 to {payment_fen_max} fen", code="AMOUNT_OUT_OF_RANGE")


def fen_to_yuan_text(amount_fen: int) -> str:
    """1230 -> '12.30'; -5 -> '-0.05'."""
    sign = "-" if amount_fen < 0 else ""
    whole, cents = divmod(abs(amount_fen), 100)
    return f"{sign}{whole}.{cents:02d}"
