"""A simulated city day on PostgreSQL (issue 12): 1M households at scale 1.0, target ≤ 10 min and ≤ 4 GB.

Ours: the whole `gasworks demo` large-city path (sim/bulk_city.py): the register opened in bulk,
every IoT meter's sealed daily report over the in-process transport into the worker's batch path,
the residents who run low paying through the real intake, credits delivered, then the money check.
The raw limit, measured in the same run on the same server: COPY of the same number of account and
meter rows and of the report rows (serial, time, frame bytes) into bare tables, the least any
system must do to write that day down. The run ends by proving correctness: `gasworks check`
passes, every payment booked exactly once, nothing shown applied that the meter has not applied.

    uv run python -m bench.city_day --scale 0.05
"""

import os
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated

import psycopg
import typer
from sqlalchemy.engine import make_url

from bench.fresh_database import fresh_database
from bench.table import BenchRow, peak_rss_mib, print_table
from gasworks.adapters.db.engine import make_engine
from gasworks.adapters.db.migrate import upgrade
from gasworks.bootstrap import bootstrap
from gasworks.config import Settings
from gasworks.domain.clock import FixedClock
from gasworks.observability import configure_logging
from gasworks.sim.bulk_city import BulkCity, BulkSimulation, account_of, serial_of

FULL_HOUSEHOLDS = 1_000_000
TARGET_S_AT_FULL = 600.0
TARGET_RSS_MIB = 4_096


def run_city(url: str, households: int) -> tuple[float, BulkSimulation]:
    begin = datetime(2026, 11, 1, tzinfo=UTC) - timedelta(hours=8)  # local midnight, Asia/Shanghai
    engine = make_engine(url)
    upgrade(engine)
    system = bootstrap(Settings(database_url=url, watchdog_interval_s=10**9), clock=FixedClock(begin), engine=engine)
    sim = BulkSimulation(system, BulkCity(households, seed=1), start=begin)
    started = time.perf_counter()
    try:
        sim.open_accounts()
        sim.run(1)
    finally:
        sim.close()
    elapsed = time.perf_counter() - started
    engine.dispose()
    return elapsed, sim


def raw_copy(url: str, households: int, reports: int, frame: bytes) -> tuple[float, float]:
    """Seconds to COPY the accounts+meters, and the reports, into bare tables (one transaction each)."""
    raw_url = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    at = datetime.now(UTC)
    with psycopg.connect(raw_url, autocommit=True) as c:
        c.execute("CREATE TABLE raw_accounts (account_no text PRIMARY KEY, name text, address text, community text, phone text, created_at timestamptz)")
        c.execute("CREATE TABLE raw_meters (serial text PRIMARY KEY, account_no text UNIQUE REFERENCES raw_accounts, kind text, key_sealed bytea)")
        c.execute("CREATE TABLE raw_reports (serial text, at timestamptz, frame bytea)")
        key = os.urandom(44)
        started = time.perf_counter()
        with c.transaction(), c.cursor() as cur:
            with cur.copy("COPY raw_accounts FROM STDIN") as copy:
                for i in range(households):
                    copy.write_row((account_of(i), "王芳", "蒸湘苑 1 栋", "蒸湘苑", "13800000000", at))
            with cur.copy("COPY raw_meters FROM STDIN") as copy:
                for i in range(households):
                    copy.write_row((serial_of(i), account_of(i), "iot", key))
        accounts_s = time.perf_counter() - started
        started = time.perf_counter()
        with c.transaction(), c.cursor() as cur, cur.copy("COPY raw_reports FROM STDIN") as copy:
            for i in range(reports):
                copy.write_row((serial_of(i), at, frame))
        return accounts_s, time.perf_counter() - started


def measure(scale: float = 1.0) -> list[BenchRow]:
    configure_logging(level=40)
    households = max(1_000, int(FULL_HOUSEHOLDS * scale))
    target_s = TARGET_S_AT_FULL * households / FULL_HOUSEHOLDS
    with fresh_database() as url:
        ours_s, sim = run_city(url, households)
        o = sim.outcome
        ledger = o.ledger
        if ledger is None or not ledger.ok:
            raise AssertionError(f"the money check failed: {ledger.findings[:3] if ledger else 'not run'}")
        if o.payments_booked != o.payments_made or ledger.payments_by_state.get("booked", (0, 0))[0] != o.payments_made:
            raise AssertionError(f"payments made {o.payments_made}, booked once {o.payments_booked}, in the ledger {ledger.payments_by_state}")
        if o.truth_violations or o.purchases_proven_applied > o.purchases_applied_at_meters:
            raise AssertionError(f"gasworks claims more than the meters applied: {o.truth_violations[:3]}")
        frame = sim.meters[next(iter(sim.meters))].report(datetime.now(UTC)) if sim.meters else b"\x68" * 60
        raw_accounts_s, raw_reports_s = raw_copy(url, households, o.reports_sent, frame)
    rss = peak_rss_mib()
    note = (f"{households:,} households; register {o.open_s:.0f} s, day {o.run_s:.0f} s (payments {o.paying_s:.0f} s, reports and sends "
            f"{o.reporting_s:.0f} s, watchdog {o.watching_s:.0f} s); {o.reports_sent:,} reports "
            f"({o.reports_in_batches:,} batched), {o.payments_made:,} payments; check holds; peak RSS {rss:,} MiB")  # fmt: skip
    raw_s = raw_accounts_s + raw_reports_s
    return [
        BenchRow(f"city day, {households:,} households × 1 day (PostgreSQL)", ours_s, raw_s, "s", False,
                 f"≤ {target_s:,.0f} s (10 min at 1M), ≤ {TARGET_RSS_MIB:,} MiB", ours_s <= target_s and rss <= TARGET_RSS_MIB, note),
        BenchRow("  register opened in bulk (accounts+meters+keys+audit)", o.open_s, raw_accounts_s, "s", False, "-", True,
                 "raw: COPY of the account and meter rows alone"),
        BenchRow("  meter reports taken, batched worker path", o.reports_sent / o.run_s if o.run_s else 0.0,
                 o.reports_sent / raw_reports_s if raw_reports_s else 0.0, "reports/s", True, "-", True,
                 "ours includes the day's payments and deliveries; raw: COPY of the report rows"),
    ]  # fmt: skip


def main(scale: Annotated[float, typer.Option(min=0.0001, max=10.0, help="1.0 = 1M households.")] = 1.0) -> None:
    print_table(measure(scale), title=f"city day at scale {scale} (a shared, loaded machine)")


if __name__ == "__main__":
    typer.run(main)
