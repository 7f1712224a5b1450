"""How long a 1M-line statement takes to import and reconcile against 1M payments on PostgreSQL, beside the raw limit.

Set-up (not timed): 1M payments of one day, held in suspense (an unknown account each), written
with their timelines and balanced ledger transactions by INSERT … SELECT on the server from one
payment taken through the real intake; then a wallet's plain CSV statement with faults planted:
lines never notified, amounts that differ, lines listed twice, payments left out.

Timed, in a child process of its own (so its peak RSS is its own): gasworks' import (DuckDB reads
and checks the file, COPY stores every line) and reconcile (COPY exports, one DuckDB query, the
lost payments booked from the statement, the discrepancies written). The raw limit, in another
child in the same run: bare DuckDB full outer join of the same statement file and the same
payments (as exported) + writing its whole result out to PostgreSQL by COPY, the store our import
has to make too. The figures come from a machine shared with other work: read the ratio.

Ends by proving it: the discrepancies found are exactly the faults planted, and `gasworks check`
(check_ledger) passes.

    uv run python -m bench.reconcile --scale 0.1
"""

import multiprocessing
import random
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import psycopg
import typer
from sqlalchemy.engine import make_url

from bench.fresh_database import fresh_database
from bench.table import BenchRow, print_table
from gasworks.adapters.db.engine import make_engine
from gasworks.adapters.db.migrate import upgrade
from gasworks.bootstrap import bootstrap
from gasworks.config import Settings
from gasworks.domain.channels import ChannelKind, KeyPurpose, PaymentNotice
from gasworks.domain.clock import FixedClock
from gasworks.observability import configure_logging
from gasworks.services import channels, reconciliation
from gasworks.services.checks import check_ledger
from gasworks.services.intake import accept_payment
from gasworks.sim.world import LOCAL

DAY = date(2026, 11, 20)
FULL_ROWS = 1_000_000
FAULTS_PER_CLASS = 100
DAY_START = datetime(DAY.year, DAY.month, DAY.day, tzinfo=LOCAL)
NOW = DAY_START + timedelta(days=1, hours=10)


def _raw_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass(frozen=True)
class Planted:
    left_out: frozenset[str]  # paid here, not in the statement: unknown_payment
    doubled: frozenset[str]  # listed twice: duplicate
    differing: frozenset[str]  # another amount in the statement: amount_mismatch
    lost: frozenset[str]  # in the statement, never notified: missing_notification


def _payments(url: str, rows: int) -> None:
    """`rows` held payments of the day, each exactly as the intake holds one, written on the server."""
    template_clock = FixedClock(DAY_START - timedelta(days=10))  # outside the day's window: matches nothing
    system = bootstrap(Settings(database_url=url), clock=template_clock, engine=make_engine(url))
    held = accept_payment(PaymentNotice("wallet", "TEMPLATE", 5_000, None, account_no="4300000000"), system.new_uow())
    assert held.state == "held", held
    with psycopg.connect(_raw_url(url)) as c:
        c.execute(
            """INSERT INTO payments (id, channel_id, channel_txn_id, amount_fen, account_no, out_trade_no, method, paid_at, state, hold_reason, received_at)
               SELECT 'pay_' || lpad(i::text, 24, '0'), 'wallet', 'W' || lpad(i::text, 12, '0'), (ARRAY[5000, 10000, 20000, 30000])[1 + (hashint4(i) & 3)],
                      '43' || lpad((i %% 100000000)::text, 8, '0'), NULL, t.method, at, t.state, t.hold_reason, at
               FROM generate_series(0, %(n)s - 1) i, payments t,
                    LATERAL (SELECT %(start)s::timestamptz + make_interval(secs => (hashint4(i + 7) & 2147483647) %% (86400 - 3600)) AS at) w
               WHERE t.id = %(template)s""",
            {"n": rows, "start": DAY_START, "template": held.payment_id},
        )
        c.execute(
            """INSERT INTO payment_events (payment_id, seq, state, at, note)
               SELECT p.id, e.seq, e.state, p.received_at, e.note FROM payments p, payment_events e
               WHERE e.payment_id = %(template)s AND p.id <> %(template)s""",
            {"template": held.payment_id},
        )
        c.execute(
            """WITH tx AS (
                 INSERT INTO ledger_transactions (kind, payment_id, at, memo)
                 SELECT t.kind, p.id, p.received_at, 'wallet ' || p.channel_txn_id FROM payments p, ledger_transactions t
                 WHERE t.payment_id = %(template)s AND p.id <> %(template)s RETURNING id, payment_id)
               INSERT INTO ledger_entries (transaction_id, account_code, amount_fen)
               SELECT tx.id, e.account_code, CASE WHEN e.amount_fen < 0 THEN -p.amount_fen ELSE p.amount_fen END FROM tx JOIN payments p ON p.id = tx.payment_id,
                      ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id
               WHERE t.payment_id = %(template)s""",
            {"template": held.payment_id},
        )
        c.execute("ANALYZE")
    system.engine.dispose()


def _statement(url: str, path: Path, rows: int, faults: int) -> Planted:
    """The wallet's file for the day, from the payments as booked, with `faults` of each kind planted."""
    rng = random.Random(1)
    picked = rng.sample(range(rows), 3 * faults)
    left_out, doubled, differing = (frozenset(f"W{i:012d}" for i in picked[k * faults : (k + 1) * faults]) for k in range(3))
    lost = frozenset(f"LOST{j:08d}" for j in range(faults))
    total, lines = 0, 0
    with psycopg.connect(_raw_url(url)) as c, path.open("w") as out:
        out.write("txn_id,account_no,amount_fen,paid_at,status\n")
        cursor = c.cursor(name="statement")
        cursor.execute("SELECT channel_txn_id, account_no, amount_fen, paid_at FROM payments WHERE channel_txn_id LIKE 'W%' ORDER BY paid_at, channel_txn_id")
        for txn, account_no, amount, paid_at in cursor:
            if txn in left_out:
                continue
            amount += 100 if txn in differing else 0
            for _ in range(2 if txn in doubled else 1):
                out.write(f"{txn},{account_no},{amount},{paid_at.astimezone(UTC).isoformat()},SUCCESS\n")
                total, lines = total + amount, lines + 1
        for txn in sorted(lost):
            out.write(f"{txn},4399{txn[-6:]},5000,{DAY_START.astimezone(UTC).isoformat()},SUCCESS\n")
            total, lines = total + 5_000, lines + 1
        out.write(f"# total,{lines},{total},,\n")
    return Planted(left_out, doubled, differing, lost)


def _ours(url: str, statement: str) -> dict:
    """gasworks' path, in a fresh process: import, reconcile, reconcile again (a no-op)."""
    configure_logging(level=40)
    system = bootstrap(Settings(database_url=url), clock=FixedClock(NOW), engine=make_engine(url))
    raw = Path(statement).read_bytes()
    t0 = time.perf_counter()
    imported = reconciliation.import_statement(channel_id="wallet", statement_date=DAY, filename=Path(statement).name, raw=raw, uow=system.new_uow(), actor="bench")
    t_import = time.perf_counter() - t0
    steps: list[tuple[str, float]] = []
    t0 = time.perf_counter()
    report = reconciliation.reconcile(file_id=imported.file_id, uow_factory=system.new_uow, actor="bench", progress=lambda step: steps.append((step, time.perf_counter())))
    t_reconcile = time.perf_counter() - t0
    marks = [*steps, ("", t0 + t_reconcile)]
    step_s = {name: round(marks[k + 1][1] - at, 2) for k, (name, at) in enumerate(marks[:-1])}  # exporting, matching, repairing (and writing the run)
    again = reconciliation.reconcile(file_id=imported.file_id, uow_factory=system.new_uow, actor="bench")
    found: dict[str, list[str]] = {}
    for d in report.discrepancies:
        found.setdefault(d.klass.value, []).append(d.channel_txn_id or "")
    return {
        "import_s": t_import, "reconcile_s": t_reconcile, "step_s": step_s, "lines": imported.lines, "found": found, "verdict": report.verdict,
        "rerun_same": again.run_id == report.run_id and not again.new, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }  # fmt: skip


def _raw_join(url: str, statement: str, payments_csv: str, out_dir: str) -> dict:
    """The raw limit, in a fresh process: the bare full outer join, its whole result written to a file, then into PostgreSQL by COPY."""
    joined = Path(out_dir) / "joined.csv"
    t0 = time.perf_counter()
    db = duckdb.connect()
    db.execute(
        "COPY (SELECT s.txn_id, s.amount_fen AS s_fen, p.payment_id, p.amount_fen AS p_fen FROM "
        "read_csv(?, header = true, auto_detect = false, columns = {'txn_id': 'VARCHAR', 'account_no': 'VARCHAR', 'amount_fen': 'BIGINT', 'paid_at': 'VARCHAR', 'status': 'VARCHAR'}) s "
        "FULL OUTER JOIN read_csv(?, header = true) p ON p.channel_txn_id = s.txn_id) TO '" + str(joined) + "' (FORMAT csv, HEADER false)",
        [statement, payments_csv],
    )
    db.close()
    t_join = time.perf_counter() - t0
    t0 = time.perf_counter()
    with psycopg.connect(_raw_url(url)) as c:
        c.execute("CREATE TABLE bare_join (txn_id text, s_fen bigint, payment_id text, p_fen bigint)")
        with joined.open("rb") as source, c.cursor().copy("COPY bare_join FROM STDIN (FORMAT csv)") as copy:
            while chunk := source.read(1024 * 1024):
                copy.write(chunk)
        rows = c.execute("SELECT count(*) FROM bare_join").fetchone()[0]  # type: ignore[index]
        c.execute("DROP TABLE bare_join")
    t_write = time.perf_counter() - t0
    return {"join_s": t_join, "write_s": t_write, "rows": rows, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


def measure(scale: float = 1.0) -> list[BenchRow]:
    configure_logging(level=40)
    rows = max(1_000, int(FULL_ROWS * scale))
    faults = max(5, min(FAULTS_PER_CLASS, rows // 1_000))
    spawn = multiprocessing.get_context("spawn")
    with fresh_database() as url, tempfile.TemporaryDirectory(prefix="bench-reconcile-") as work:
        upgrade(make_engine(url))
        system = bootstrap(Settings(database_url=url), clock=FixedClock(NOW))
        channels.add_channel(channel_id="wallet", kind=ChannelKind.WALLET_HMAC, name="bench", merchant_id="", keys=[(KeyPurpose.HMAC_SECRET, "k1", "s" * 32)], uow=system.new_uow(), actor="bench")
        _payments(url, rows)
        statement = Path(work) / f"wallet-{DAY}.csv"
        planted = _statement(url, statement, rows, faults)
        payments_csv = Path(work) / "payments.csv"
        with system.new_uow() as uow:  # the same payments the matcher reads, as the same export writes them
            uow.reconciliations.export_payments("wallet", DAY_START - timedelta(days=2), DAY_START + timedelta(days=3), payments_csv)

        with ProcessPoolExecutor(1, mp_context=spawn) as child:
            raw = child.submit(_raw_join, url, str(statement), str(payments_csv), work).result()
        with ProcessPoolExecutor(1, mp_context=spawn) as child:
            ours = child.submit(_ours, url, str(statement)).result()

        expected = {
            "unknown_payment": planted.left_out, "duplicate": planted.doubled, "amount_mismatch": planted.differing, "missing_notification": planted.lost,
        }  # fmt: skip
        found = {klass: frozenset(txns) for klass, txns in ours["found"].items()}
        exact = found == expected and all(len(ours["found"][k]) == len(v) for k, v in expected.items())
        ledger = check_ledger(system.new_uow())
        system.engine.dispose()

    t_raw = raw["join_s"] + raw["write_s"]
    t_ours = ours["import_s"] + ours["reconcile_s"]
    proof = f"found == planted ({4 * faults} in 4 classes): {'yes' if exact else 'NO'}; check_ledger: {'ok' if ledger.ok else 'FAILED'}; rerun no-op: {ours['rerun_same']}"
    size = f"{ours['lines']:,} lines vs {rows:,} payments"
    return [
        BenchRow(f"reconcile: import {size} (DuckDB read + COPY)", ours["import_s"], t_raw, "s", False, "—", True, "raw = the whole bare join + write"),
        BenchRow("reconcile: match (COPY out, one DuckDB query, repairs)", ours["reconcile_s"], t_raw, "s", False, "—", True, ", ".join(f"{name} {s:.2f} s" for name, s in ours["step_s"].items())),  # fmt: skip
        BenchRow(
            "reconcile: import + match, total",
            t_ours,
            t_raw,
            "s",
            False,
            "≤ 2 × raw",
            exact and ledger.ok and t_ours <= 2 * t_raw,
            f"raw: join {raw['join_s']:.2f} s + COPY of its {raw['rows']:,} rows to PostgreSQL {raw['write_s']:.2f} s; {proof}; loaded machine",
        ),  # fmt: skip
        BenchRow("reconcile: peak RSS of the process (ours vs bare join)", ours["rss_mib"], raw["rss_mib"], "MiB", False, "—", True, "each measured in its own child process"),
    ]


def main(scale: float = typer.Option(1.0, help="1.0 = 1M lines against 1M payments.")) -> None:
    print_table(measure(scale), title="reconciliation on PostgreSQL + DuckDB (a loaded machine: read the ratios)")


if __name__ == "__main__":
    typer.run(main)
