"""Payment notifications booked per second on PostgreSQL, beside pgbench running the same booking.

The raw limit is `pgbench` (the Debian binary) running bench/booking.sql, gasworks' own booking
transaction written by hand against gasworks' own schema, at 8 and 16 clients, on a fresh database
migrated and seeded like ours. Ours is measured at two boundaries, at the same client counts:
- the service layer: verify the signature, then book (`take_channel_payment`), in this process;
- HTTP: real uvicorn (`gasworks serve --workers N`, its own processes) and real HTTP clients here.
Every notification is signed before the timed window. The HTTP stream also resends a tenth of
the notifications (a channel's retry: same transaction id, new nonce, signed anew); the run ends
with `check_ledger` passing and exactly one booked payment per notification.

    uv run python -m bench.intake --scale 0.2        # a quick run
    uv run python -m bench.intake                    # the issue's size
"""

import cProfile
import os
import pstats
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import typer
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url

from bench.fresh_database import fresh_database
from bench.table import BenchRow, print_table
from gasworks.adapters.channels import BILL_PAYMENT_DECODERS, InboundRequest
from gasworks.adapters.channels.wallet_hmac import WalletClient
from gasworks.adapters.db.engine import make_engine
from gasworks.adapters.db.migrate import upgrade
from gasworks.bootstrap import System, bootstrap
from gasworks.config import Settings
from gasworks.domain.accounts import MeterKind
from gasworks.domain.channels import ChannelKind, KeyPurpose
from gasworks.observability import configure_logging
from gasworks.services import accounts, channels
from gasworks.services.checks import check_ledger
from gasworks.services.notifications import load_channel, take_channel_payment

SECRET = "bench-secret-0123456789-0123456789-abc"
PATH = "/v1/channels/wallet/payments"
ACCOUNTS = 1000
CLIENTS = (8, 16)
RETRY_SHARE = 10  # one notification in this many is sent twice over HTTP
BOOKING_SQL = Path(__file__).with_name("booking.sql")
TARGET = "≥ 0.5 × pgbench TPS"
SERVER_START_WAIT_S = 180


def prepared_system(url: str, **settings: object) -> System:
    engine = make_engine(url)
    upgrade(engine)
    system = bootstrap(Settings(database_url=url, **settings), engine=engine)
    channels.add_channel(channel_id="wallet", kind=ChannelKind.WALLET_HMAC, name="bench wallet", merchant_id="", keys=[(KeyPurpose.HMAC_SECRET, "k1", SECRET)], uow=system.new_uow(), actor="bench")
    for i in range(ACCOUNTS):
        accounts.open_account(accounts.OpenAccount(f"43{i:08d}", "张三", "", "", "", "13800000000", f"{i:014d}", MeterKind.IOT), system.new_uow(), actor="bench")
    return system


def signed_requests(prefix: str, n: int, *, retries_every: int = 0) -> list[tuple[dict, bytes]]:
    """`n` notifications, plus a retry (new nonce, signed anew) of every `retries_every`-th, shuffled in."""
    wallet = WalletClient(key_id="k1", secret=SECRET)

    def signed(i: int) -> tuple[dict, bytes]:
        return wallet.payment(path=PATH, txn_id=f"{prefix}-{i}", account_no=f"43{i % ACCOUNTS:08d}", amount_fen=100 + i % 5000, at=datetime.now(UTC))

    requests = [signed(i) for i in range(n)]
    if retries_every:
        requests += [signed(i) for i in range(0, n, retries_every)]
        random.Random(12).shuffle(requests)
    return requests


@dataclass(frozen=True)
class Timed:
    rate_per_s: float
    load_cpu_share: float  # of one core, used by this process (the load generator) during the window


def timed(fn: Callable, items: list, clients: int) -> Timed:
    cpu_started, started = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for _ in pool.map(fn, items):
            pass
    elapsed = time.perf_counter() - started
    return Timed(len(items) / elapsed, (time.process_time() - cpu_started) / elapsed)


# ---- the raw limit: pgbench -------------------------------------------------------------------


def pgbench_tps(url: str, *, clients: int, seconds: int) -> float:
    """TPS of bench/booking.sql, excluding connection time, as pgbench prints it."""
    u = make_url(url)
    result = subprocess.run(
        ["pgbench", "-n", "-M", "prepared", "-f", str(BOOKING_SQL), "-D", f"accounts={ACCOUNTS}", "-c", str(clients), "-j", "2", "-T", str(seconds),
         "-h", u.host or "127.0.0.1", "-p", str(u.port or 5432), "-U", u.username or "postgres", u.database or ""],
        capture_output=True, text=True, check=False, env={**os.environ, **({"PGPASSWORD": u.password} if u.password else {})},
    )  # fmt: skip
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", result.stdout)
    if result.returncode != 0 or match is None or "failed transactions: 0 " not in result.stdout:
        raise RuntimeError(f"pgbench failed:\n{result.stdout}\n{result.stderr}")
    return float(match.group(1))


# ---- statements per notification ---------------------------------------------------------------


@dataclass
class StatementCount:
    statements: int = 0
    transactions: int = 0
    texts: list[str] | None = None


@contextmanager
def counting_statements(engine: Engine) -> Iterator[StatementCount]:
    """Every statement the engine sends (SQLAlchemy before_cursor_execute) and every transaction that sends one."""
    count = StatementCount(texts=[])

    begun = threading.local()  # a transaction counts once it sends a statement (a cache hit sends none)

    def on_statement(_conn, _cursor, statement, _params, _context, _executemany):  # noqa: ANN001
        if getattr(begun, "pending", False):
            count.transactions += 1
            begun.pending = False
        count.statements += 1
        count.texts.append(" ".join(statement.split())[:100])

    def on_begin(_conn):  # noqa: ANN001
        begun.pending = True

    event.listen(engine, "before_cursor_execute", on_statement)
    event.listen(engine, "begin", on_begin)
    try:
        yield count
    finally:
        event.remove(engine, "before_cursor_execute", on_statement)
        event.remove(engine, "begin", on_begin)


def take_as_the_api_does(system: System) -> Callable[[tuple[dict, bytes]], None]:
    """The service layer as the HTTP route calls it: find the channel, verify, book."""

    def take(item: tuple[dict, bytes]) -> None:
        headers, body = item
        request = InboundRequest("POST", PATH, {k.lower(): v for k, v in headers.items()}, body)
        channel = load_channel("wallet", system.new_uow)
        take_channel_payment(channel, request, BILL_PAYMENT_DECODERS, system.new_booking_uow, skew_s=300)

    return take


def statements_per_notification(system: System) -> StatementCount:
    take = take_as_the_api_does(system)
    warm, counted = signed_requests("count", 2)
    take(warm)  # the first one fills caches a running server has full
    with counting_statements(system.engine) as count:
        take(counted)
    return count


PROFILED = 1_000


def print_profile(system: System) -> None:
    """One client, so nothing waits on anything but the database: wall time and this process's CPU a
    notification without the profiler, then cProfile's own time of each function summed by library."""
    take = take_as_the_api_does(system)
    warm, measured, profiled = signed_requests("warm", 50), signed_requests("measured", PROFILED), signed_requests("profiled", PROFILED)
    for item in warm:
        take(item)
    cpu_started, started = time.process_time(), time.perf_counter()
    for item in measured:
        take(item)
    wall_ms, cpu_ms = ((time.perf_counter() - started) * 1000 / PROFILED, (time.process_time() - cpu_started) * 1000 / PROFILED)
    print(f"one client, {PROFILED:,} notifications: {1000 / wall_ms:,.0f}/s; {wall_ms:.2f} ms a notification, {cpu_ms:.2f} ms of it CPU in this process")
    profiler = cProfile.Profile(time.process_time)  # CPU only: waiting on the database is not counted
    profiler.enable()
    for item in profiled:
        take(item)
    profiler.disable()
    by_library: dict[str, float] = {}
    for (filename, _, _), (_, _, own_s, _, _) in pstats.Stats(profiler).stats.items():  # type: ignore[attr-defined]
        library = next((name for name in ("sqlalchemy", "psycopg", "gasworks", "cryptography", "pydantic") if f"/{name}/" in filename), "built-ins and the rest")
        by_library[library] = by_library.get(library, 0.0) + own_s
    total = sum(by_library.values())
    print("CPU under cProfile (which slows Python calls, so read the shares), own time by library:")
    for library, own_s in sorted(by_library.items(), key=lambda kv: -kv[1]):
        print(f"  {library:24} {own_s / total:5.0%}")
    system.engine.dispose()


# ---- the HTTP boundary --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(url: str, *, api_processes: int, env: dict[str, str]) -> Iterator[str]:
    """`gasworks serve --workers N --no-worker` in processes of its own; yields its base URL."""
    port = free_port()
    command = [str(Path(sys.executable).with_name("gasworks")), "serve", "--no-worker", "--workers", str(api_processes), "--port", str(port), "--database-url", url]
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_WAIT_S
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                log.seek(0)
                raise RuntimeError("gasworks serve did not start:\n" + log.read().decode(errors="replace")[-4000:])
            time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def http_sender(base: str) -> Callable[[tuple[dict, bytes]], None]:
    local = threading.local()

    def send(item: tuple[dict, bytes]) -> None:
        headers, body = item
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=base)
        reply = local.client.post(PATH, content=body, headers=headers)
        if reply.status_code != 200:
            raise RuntimeError(f"HTTP {reply.status_code}: {reply.text}")

    return send


# ---- the run ------------------------------------------------------------------------------------


def measure(scale: float = 1.0, *, api_processes: int = 2, group_commit_ms: tuple[float, ...] = (0,)) -> list[BenchRow]:
    configure_logging(level=40)
    notifications = max(100, int(3000 * scale))
    pgbench_s = max(3, int(20 * scale))
    with fresh_database() as url:
        prepared_system(url).engine.dispose()
        raw = {clients: pgbench_tps(url, clients=clients, seconds=pgbench_s) for clients in CLIENTS}
    rows: list[BenchRow] = []
    for window_ms in group_commit_ms:
        rows += _measure_ours(notifications, raw, api_processes=api_processes, group_commit_ms=window_ms)
    return rows


def _measure_ours(notifications: int, raw: dict[int, float], *, api_processes: int, group_commit_ms: float) -> list[BenchRow]:
    rows: list[BenchRow] = []
    grouped = f", group commit {group_commit_ms:g} ms" if group_commit_ms else ""
    with fresh_database() as url:
        system = prepared_system(url, group_commit_ms=group_commit_ms)
        count = statements_per_notification(system)
        sent = 2  # counted above
        take = take_as_the_api_does(system)
        for clients in CLIENTS:
            requests = signed_requests(f"svc{clients}", notifications)
            result = timed(take, requests, clients)
            sent += notifications
            rows.append(_row(f"intake, service layer (verify + book), {clients} clients{grouped}", result, raw[clients],
                             f"{count.statements} statements in {count.transactions} transactions a notification"))  # fmt: skip
        with served(url, api_processes=api_processes, env={"GASWORKS_GROUP_COMMIT_MS": f"{group_commit_ms:g}"}) as base:
            for clients in CLIENTS:
                requests = signed_requests(f"http{clients}", notifications, retries_every=RETRY_SHARE)
                result = timed(http_sender(base), requests, clients)
                sent += notifications
                rows.append(_row(f"intake over HTTP, {api_processes} uvicorn processes, {clients} clients{grouped}", result, raw[clients],
                                 f"load generator used {result.load_cpu_share:.0%} of a core; {len(requests) - notifications} retries resent"))  # fmt: skip
        report = check_ledger(system.new_uow())
        booked = report.payments_by_state.get("booked", (0, 0))[0]
        if not report.ok or booked != sent or sum(n for n, _ in report.payments_by_state.values()) != sent:
            raise RuntimeError(f"exactly once broken: {sent} notifications, {report.payments_by_state}, ok={report.ok}")
        system.engine.dispose()
    return rows


def _row(path: str, result: Timed, raw_tps: float, note: str) -> BenchRow:
    return BenchRow(path, result.rate_per_s, raw_tps, "notifications/s", True, TARGET, result.rate_per_s >= 0.5 * raw_tps, note)


def main(
    scale: float = typer.Option(1.0, help="1.0: the issue's size; 0.1 for a quick look."),
    api_processes: int = typer.Option(2, help="uvicorn processes for the HTTP rows (gasworks serve --workers)."),
    group_commit_ms: list[float] = typer.Option([0.0], help="Measure with each group-commit window (0: off); repeat the option."),
    statements: bool = typer.Option(False, help="Only print the SQL one notification sends."),
    profile: bool = typer.Option(False, help="Only profile one client: time and CPU a notification, and where the CPU goes."),
) -> None:
    if profile:
        configure_logging(level=40)
        with fresh_database() as url:
            print_profile(prepared_system(url))
        return
    if statements:
        configure_logging(level=40)
        with fresh_database() as url:
            count = statements_per_notification(prepared_system(url))
        for text in count.texts or []:
            print(text)
        print(f"{count.statements} statements in {count.transactions} transactions a notification")
        return
    rows = measure(scale, api_processes=api_processes, group_commit_ms=tuple(group_commit_ms))
    print_table(rows, title=f"payment intake on PostgreSQL, scale {scale:g} (figures from a machine shared with other work)")


if __name__ == "__main__":
    typer.run(main)
