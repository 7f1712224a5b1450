"""How long a 1M-line statement takes to reconcile against 1M payments on PostgreSQL, beside a bare DuckDB join.

The payments are written straight into the payments table with COPY (this measures reconciliation,
not intake). The statement is a wallet's plain CSV with faults planted in it: lines never notified,
amounts that differ, lines listed twice, payments left out. gasworks' path: read and check the whole
file, store it (COPY), export the channel's payments (COPY), match in DuckDB, book the lost ones
from the statement, write the discrepancies. The bare join: DuckDB joining the same two CSV files
on the transaction id, nothing else.

    uv run python -m bench.reconcile --rows 1000000
"""

import random
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import psycopg
import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url

from bench.fresh_database import fresh_database
from gasworks.adapters.db.engine import make_engine
from gasworks.adapters.db.migrate import upgrade
from gasworks.bootstrap import bootstrap
from gasworks.config import Settings
from gasworks.domain.channels import ChannelKind, KeyPurpose
from gasworks.domain.clock import FixedClock
from gasworks.observability import configure_logging
from gasworks.services import channels, reconciliation
from gasworks.sim.world import LOCAL

DAY = date(2026, 11, 20)


def main(rows: int = 1_000_000, faults: int = 100) -> None:
    configure_logging(level=40)
    console = Console()
    with fresh_database() as url:
        raw_url = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        engine = make_engine(url)
        upgrade(engine)
        start = datetime(DAY.year, DAY.month, DAY.day, tzinfo=LOCAL)
        system = bootstrap(Settings(database_url=url), clock=FixedClock(start + timedelta(days=1, hours=10)), engine=engine)
        channels.add_channel(channel_id="wallet", kind=ChannelKind.WALLET_HMAC, name="bench", merchant_id="", keys=[(KeyPurpose.HMAC_SECRET, "k1", "s" * 32)], uow=system.new_uow(), actor="bench")
        rng = random.Random(1)
        amounts = [rng.choice((5_000, 10_000, 20_000, 30_000)) for _ in range(rows)]
        paid = [start + timedelta(seconds=rng.randrange(0, 86_400 - 3_600)) for _ in range(rows)]
        console.print(f"writing {rows:,} payments with COPY …")
        with psycopg.connect(raw_url) as c, c.cursor().copy(
            "COPY payments (id, channel_id, channel_txn_id, amount_fen, account_no, method, paid_at, state, received_at) FROM STDIN"
        ) as copy:
            for i in range(rows):
                copy.write_row((f"pay_{i:024d}", "wallet", f"W{i:012d}", amounts[i], f"43{i % 10**8:08d}", "wallet", paid[i], "booked", paid[i]))
        left_out = set(range(0, faults))
        doubled = set(range(faults, 2 * faults))
        differing = set(range(2 * faults, 3 * faults))
        with tempfile.TemporaryDirectory() as work:
            statement = Path(work) / f"wallet-{DAY}.csv"
            total, lines = 0, 0
            with statement.open("w") as out:
                out.write("txn_id,account_no,amount_fen,paid_at,status\n")
                for i in range(rows):
                    if i in left_out:
                        continue
                    amount = amounts[i] + (100 if i in differing else 0)
                    for _ in range(2 if i in doubled else 1):
                        out.write(f"W{i:012d},43{i % 10**8:08d},{amount},{paid[i].astimezone(UTC).isoformat()},SUCCESS\n")
                        total, lines = total + amount, lines + 1
                for j in range(faults):  # collected, never notified
                    out.write(f"LOST{j:08d},4399{j:06d},5000,{start.astimezone(UTC).isoformat()},SUCCESS\n")
                    total, lines = total + 5_000, lines + 1
                out.write(f"# total,{lines},{total},,\n")
            raw = statement.read_bytes()

            t0 = time.perf_counter()
            imported = reconciliation.import_statement(channel_id="wallet", statement_date=DAY, filename=statement.name, raw=raw, uow=system.new_uow(), actor="bench")
            t_import = time.perf_counter() - t0
            t0 = time.perf_counter()
            report = reconciliation.reconcile(file_id=imported.file_id, uow_factory=system.new_uow, actor="bench")
            t_reconcile = time.perf_counter() - t0
            t0 = time.perf_counter()
            again = reconciliation.reconcile(file_id=imported.file_id, uow_factory=system.new_uow, actor="bench")
            t_again = time.perf_counter() - t0

            payments_csv = Path(work) / "payments.csv"
            with system.new_uow() as uow:
                uow.reconciliations.export_payments("wallet", start - timedelta(days=2), start + timedelta(days=3), payments_csv)
            t0 = time.perf_counter()
            db = duckdb.connect()
            bare = db.execute(
                "SELECT count(*) FROM read_csv(?, header=true, columns={'txn_id':'VARCHAR','account_no':'VARCHAR','amount_fen':'BIGINT','paid_at':'VARCHAR','status':'VARCHAR'}) s "
                "FULL OUTER JOIN read_csv(?, header=true) p ON p.channel_txn_id = s.txn_id WHERE s.txn_id IS NULL OR p.payment_id IS NULL OR s.amount_fen <> p.amount_fen",
                [str(statement), str(payments_csv)],
            ).fetchone()[0]
            t_bare = time.perf_counter() - t0

        table = Table(title=f"reconciling one day: a {lines:,}-line statement against {rows:,} payments (PostgreSQL 15 + DuckDB)")
        for column in ("step", "seconds", "vs bare join"):
            table.add_column(column, justify="left" if column == "step" else "right")
        for label, seconds in (
            ("import: read, check totals, store all lines (COPY)", t_import),
            ("reconcile: export, DuckDB match, repairs, discrepancies", t_reconcile),
            ("gasworks total", t_import + t_reconcile),
            ("the same file again (a no-op)", t_again),
            ("bare DuckDB full join of the same two CSV files", t_bare),
        ):
            table.add_row(label, f"{seconds:.2f}", f"{seconds / t_bare:.1f}x")
        console.print(table)
        console.print(f"found: {report.totals}; verdict {report.verdict}; bare join rows that differ: {bare:,}; rerun returned run {again.run_id} (first {report.run_id})")


if __name__ == "__main__":
    typer.run(main)
