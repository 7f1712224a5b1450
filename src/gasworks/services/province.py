"""Group-level figures gathered across a province's city shards.

Each city answers from its own database, all at once and each within a time limit: a city whose
database is down or slow is reported unavailable, with the reason, and never holds up the others.
"""

import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime

from gasworks.domain.province import CityFigures, CityUnavailable, PaymentsTaken, Province, TimeToGas
from gasworks.services.unit_of_work import UnitOfWork

PURCHASES_MEASURED_MAX = 2_000_000  # a city's purchases in one report: a million households' month, bounded


def city_figures(code: str, name: str, uow: UnitOfWork, since: datetime, until: datetime, *, purchases_max: int = PURCHASES_MEASURED_MAX) -> CityFigures:
    """Payments received in [since, until) by state, the time from each to gas at the meter, and the
    city's arrears now."""
    with uow:
        payments = PaymentsTaken(uow.payments.totals_by_state(since, until))
        waits = uow.meter_commands.purchase_waits_s(since, until, purchases_max)
        owing, owed_fen = uow.ledger.accounts_in_arrears()
    return CityFigures(code, name, payments, TimeToGas.of(waits), owing, owed_fen)


def accounts_of_other_cities(code: str, uow: UnitOfWork, *, examples_max: int = 3) -> tuple[int, list[str]]:
    """Accounts in city `code`'s database whose number names another city: the router would send
    their requests elsewhere, so `gasworks province check` counts them as a fault."""
    with uow:
        return uow.customers.numbers_outside(code, examples_max)


def group_report(
    province: Province,
    new_uow: Mapping[str, Callable[[], UnitOfWork]],
    since: datetime,
    until: datetime,
    *,
    is_unavailable: Callable[[BaseException], bool],
    answer_within_s: float,
) -> list[CityFigures | CityUnavailable]:
    """Every city's figures, in the province's order. A city fails alone: an error its database
    gives (`is_unavailable`) or no answer within `answer_within_s` makes that city unavailable."""
    pool = ThreadPoolExecutor(max_workers=len(province.cities), thread_name_prefix="province-report")
    try:
        deadline = time.monotonic() + answer_within_s
        asked = {city.code: pool.submit(city_figures, city.code, city.name, new_uow[city.code](), since, until) for city in province.cities}
        report: list[CityFigures | CityUnavailable] = []
        for city in province.cities:
            try:
                report.append(asked[city.code].result(timeout=max(0.0, deadline - time.monotonic())))
            except FutureTimeout:
                report.append(CityUnavailable(city.code, city.name, f"no answer within {answer_within_s:g} s"))
            except Exception as error:
                if not is_unavailable(error):
                    raise
                report.append(CityUnavailable(city.code, city.name, f"database unavailable or not migrated: {reason_of(error)}"))
        return report
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a hung city's thread is left to its own timeout


def reason_of(error: BaseException) -> str:
    """One line of why a database did not answer: the driver's words, without the wrapper's."""
    cause = getattr(error, "orig", None) or error
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0][:200]
