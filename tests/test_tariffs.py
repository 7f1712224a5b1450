"""Money into gas by annual tiers: nothing is lost to rounding, and tiers split where they end."""

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gasworks.domain.accounts import CustomerClass
from gasworks.domain.errors import InvalidInput
from gasworks.domain.tariffs import (
    DEFAULT_RESIDENTIAL_TIERS,
    Tariff,
    Tier,
    convert,
    cost_fen_of,
    milli_fen_to_price_text,
    price_text_to_milli_fen,
)

tier_lists = st.lists(st.integers(min_value=1, max_value=2_000_000), min_size=0, max_size=4, unique=True).flatmap(
    lambda bounds: st.lists(st.integers(min_value=1_000, max_value=20_000_000), min_size=len(bounds) + 1, max_size=len(bounds) + 1).map(
        lambda prices: tuple(Tier(upto, price) for upto, price in zip([*sorted(bounds), None], prices, strict=True))
    )
)


@given(tier_lists, st.integers(min_value=0, max_value=10**9), st.integers(min_value=0, max_value=3_000_000))
def test_money_in_equals_money_converted_plus_money_left_to_the_fen(tiers, amount_fen, bought):
    conversion = convert(amount_fen, tiers=tiers, litres_bought_this_year=bought)
    assert conversion.cost_fen + conversion.remainder_fen == amount_fen
    assert conversion.remainder_fen >= 0
    for piece in conversion.pieces:
        exact_cost_milli = piece.litres * piece.price_milli_fen_per_m3 / 1000  # a check, in the test only
        assert abs(piece.cost_fen * 1000 - exact_cost_milli) <= 500
    # What is left cannot buy one more litre in the tier the purchase stopped in.
    position = bought + conversion.litres
    current = next(t for t in tiers if t.upto_litres is None or position < t.upto_litres)
    assert conversion.remainder_fen < cost_fen_of(1, current.price_milli_fen_per_m3) + 1


@given(tier_lists, st.integers(min_value=0, max_value=10**8), st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=3_000_000))
def test_more_money_never_buys_less_gas(tiers, amount_fen, more_fen, bought):
    assert convert(amount_fen, tiers=tiers, litres_bought_this_year=bought).litres <= convert(amount_fen + more_fen, tiers=tiers, litres_bought_this_year=bought).litres


def test_a_purchase_that_crosses_a_tier_boundary_is_split_at_it():
    # 390 m³ bought; ¥100 buys 10 m³ at ¥2.99 (¥29.90), the rest at ¥3.44.
    conversion = convert(10_000, tiers=DEFAULT_RESIDENTIAL_TIERS, litres_bought_this_year=390_000)
    first, second = conversion.pieces
    assert (first.tier_no, first.litres, first.cost_fen) == (1, 10_000, 2_990)
    assert (second.tier_no, second.litres) == (2, 7_010_000 // 344)
    assert second.cost_fen == round(second.litres * 344 / 1000)
    assert conversion.cost_fen + conversion.remainder_fen == 10_000


def test_one_hundred_yuan_in_tier_one_buys_33_444_litres_and_leaves_a_fen():
    conversion = convert(10_000, tiers=DEFAULT_RESIDENTIAL_TIERS, litres_bought_this_year=0)
    assert conversion.litres == 33_444  # 10,000 fen / 0.299 fen per litre = 33,444.8
    assert conversion.cost_fen == 10_000 - conversion.remainder_fen
    assert conversion.remainder_fen == 0  # 33,444 L cost 9,999.756 fen, rounded to 10,000


def test_prices_are_read_as_yuan_with_up_to_three_decimals():
    assert price_text_to_milli_fen("2.832") == 283_200
    assert milli_fen_to_price_text(283_200) == "2.832"
    for bad in ("2.832501", "abc", "NaN", "-1"):
        with pytest.raises(InvalidInput):
            price_text_to_milli_fen(bad)


@pytest.mark.parametrize(
    "tiers",
    [
        (),
        (Tier(400_000, 299_000),),  # last tier must be open
        (Tier(400_000, 299_000), Tier(300_000, 344_000), Tier(None, 434_000)),  # bounds fall
        (Tier(None, 0),),
    ],
)
def test_an_impossible_tariff_is_refused(tiers):
    with pytest.raises(InvalidInput):
        Tariff(CustomerClass.RESIDENTIAL, date(2026, 1, 1), tiers)


def test_the_tier_year_starts_on_its_configured_day():
    tariff = Tariff(CustomerClass.RESIDENTIAL, date(2026, 1, 1), DEFAULT_RESIDENTIAL_TIERS, year_start_month=4)
    assert tariff.tier_year_of(date(2026, 3, 31)) == 2025
    assert tariff.tier_year_of(date(2026, 4, 1)) == 2026
