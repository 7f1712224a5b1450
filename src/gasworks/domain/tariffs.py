"""Tiered (block) gas tariffs and turning money into gas volume.

Units: money in integer fen, volume in integer litres (1 m³ = 1,000 L). A price is given per m³ in
yuan, often to three decimals (Changsha: ¥2.832/m³), and held as integer *milli-fen per m³*:
¥2.99/m³ = 299,000. The exact cost of L litres is then L × price / 1,000,000 fen.

Rounding rule, for each tier a purchase touches:
1. litres are rounded down to whole litres: the resident never receives gas not paid for;
2. the cost of those litres is rounded half up to whole fen, which never exceeds the money left;
3. whatever money cannot buy a whole litre stays on the account's prepaid balance for next time.
So `amount_fen == cost_fen + remainder_fen` always holds, and nothing is lost to rounding.
"""

from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation

from gasworks.domain.accounts import CustomerClass
from gasworks.domain.errors import InvalidInput, InvariantViolated

MILLI_FEN_PER_FEN = 1_000
LITRES_PER_M3 = 1_000
TIERS_MAX = 5
PRICE_MILLI_FEN_PER_M3_MAX = 100_000_000  # ¥1,000/m³: anything above is a typo


@dataclass(frozen=True)
class Tier:
    upto_litres: int | None  # cumulative annual volume where this tier ends; None for the last
    price_milli_fen_per_m3: int


@dataclass(frozen=True)
class Tariff:
    customer_class: CustomerClass
    effective_from: date
    tiers: tuple[Tier, ...]
    year_start_month: int = 1  # the tier year begins on this month and day
    year_start_day: int = 1
    id: int | None = None

    def __post_init__(self) -> None:
        check_tiers(self.tiers)
        try:
            date(2001, self.year_start_month, self.year_start_day)  # 2001: not a leap year
        except (TypeError, ValueError):
            raise InvalidInput(
                f"tier year start {self.year_start_month}-{self.year_start_day} is not a day of every year",
                code="INVALID_TARIFF",
            ) from None

    def tier_year_of(self, day: date) -> int:
        """The tier year a day belongs to, named by the calendar year it starts in."""
        starts = date(day.year, self.year_start_month, self.year_start_day)
        return day.year if day >= starts else day.year - 1


def check_tiers(tiers: tuple[Tier, ...]) -> None:
    if not 1 <= len(tiers) <= TIERS_MAX:
        raise InvalidInput(f"a tariff has 1 to {TIERS_MAX} tiers, got {len(tiers)}", code="INVALID_TARIFF")
    previous_upto = 0
    for index, tier in enumerate(tiers):
        last = index == len(tiers) - 1
        if not isinstance(tier.price_milli_fen_per_m3, int) or not 0 < tier.price_milli_fen_per_m3 <= PRICE_MILLI_FEN_PER_M3_MAX:
            raise InvalidInput(f"tier {index + 1}: price must be above 0 and at most ¥1,000/m³", code="INVALID_TARIFF")
        if last:
            if tier.upto_litres is not None:
                raise InvalidInput("the last tier has no upper bound", code="INVALID_TARIFF")
        elif not isinstance(tier.upto_litres, int) or tier.upto_litres <= previous_upto:
            raise InvalidInput(f"tier {index + 1}: bounds must rise, each above the one before", code="INVALID_TARIFF")
        else:
            previous_upto = tier.upto_litres


def price_text_to_milli_fen(text: str) -> int:
    """'2.99' (yuan per m³, at most five decimals) -> 299000 milli-fen per m³."""
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise InvalidInput(f"price {text!r} is not a number of yuan", code="INVALID_TARIFF") from None
    milli_fen = value * 100 * MILLI_FEN_PER_FEN
    if not value.is_finite() or value <= 0 or milli_fen != milli_fen.to_integral_value():
        raise InvalidInput(f"price {text!r} must be a positive number of yuan with at most five decimals", code="INVALID_TARIFF")
    return int(milli_fen)


def milli_fen_to_price_text(milli_fen: int) -> str:
    return f"{Decimal(milli_fen) / (100 * MILLI_FEN_PER_FEN):.3f}"


@dataclass(frozen=True)
class TierPiece:
    tier_no: int  # 1-based
    litres: int
    cost_fen: int
    price_milli_fen_per_m3: int


@dataclass(frozen=True)
class Conversion:
    """What a sum of money bought: gas by tier, and what was left over."""

    amount_fen: int
    pieces: tuple[TierPiece, ...]
    remainder_fen: int

    @property
    def litres(self) -> int:
        return sum(p.litres for p in self.pieces)

    @property
    def cost_fen(self) -> int:
        return sum(p.cost_fen for p in self.pieces)


def cost_fen_of(litres: int, price_milli_fen_per_m3: int) -> int:
    """Exact cost rounded half up to whole fen."""
    scale = LITRES_PER_M3 * MILLI_FEN_PER_FEN
    return (litres * price_milli_fen_per_m3 + scale // 2) // scale


def convert(amount_fen: int, *, tiers: tuple[Tier, ...], litres_bought_this_year: int) -> Conversion:
    """Buy as much gas as `amount_fen` pays for, tier by tier from the year's volume so far."""
    if not isinstance(amount_fen, int) or amount_fen < 0:
        raise InvariantViolated(f"money to convert must be non-negative integer fen, got {amount_fen!r}")
    if litres_bought_this_year < 0:
        raise InvariantViolated(f"volume bought this year cannot be negative: {litres_bought_this_year}")
    scale = LITRES_PER_M3 * MILLI_FEN_PER_FEN
    money_left = amount_fen
    position = litres_bought_this_year
    pieces: list[TierPiece] = []
    for tier_no, tier in enumerate(tiers, start=1):
        if tier.upto_litres is not None and position >= tier.upto_litres:
            continue
        affordable = money_left * scale // tier.price_milli_fen_per_m3
        room = None if tier.upto_litres is None else tier.upto_litres - position
        litres = affordable if room is None else min(affordable, room)
        if litres <= 0:
            break
        cost = cost_fen_of(litres, tier.price_milli_fen_per_m3)
        pieces.append(TierPiece(tier_no, litres, cost, tier.price_milli_fen_per_m3))
        money_left -= cost
        position += litres
        if room is None or litres < room:
            break
    conversion = Conversion(amount_fen, tuple(pieces), money_left)
    if conversion.cost_fen + conversion.remainder_fen != amount_fen or conversion.remainder_fen < 0:
        raise InvariantViolated(f"conversion lost money: {conversion!r}")
    return conversion


DEFAULT_RESIDENTIAL_TIERS = (
    Tier(400_000, 299_000),
    Tier(1_680_000, 344_000),
    Tier(None, 434_000),
)
