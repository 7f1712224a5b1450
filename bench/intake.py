"""How many payment notifications per second the intake takes on PostgreSQL, next to the raw limit.

Each gasworks payment is one database transaction: claim the nonce, claim (channel, txn id), post a
balanced ledger transaction, update two cached balances, write the timeline. The raw limit is the
same number of single-row INSERT transactions of a payment-sized row, at the same concurrency,
on the same server; COPY of all rows at once shows the bulk ceiling.

    uv run python -m bench.intake --payments 2000 --concurrency 8
"""

import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import psycopg
import typer
import uvicorn
from rich.console import Console
from rich.progress import track
from rich.table import Table
from sqlalchemy.engine import make_url

from bench.fresh_database import fresh_database
from gasworks.adapters.channels import BILL_PAYMENT_DECODERS, InboundRequest
from gasworks.adapters.channels.wallet_hmac import WalletClient
from gasworks.adapters.db.engine import make_engine
from gasworks.adapters.db.migrate import upgrade
from gasworks.bootstrap import bootstrap
from gasworks.config import Settings
from gasworks.domain.accounts import MeterKind
from gasworks.domain.channels import ChannelKind, KeyPurpose
from gasworks.entrypoints.api.app import create_app
from gasworks.observability import configure_logging
from gasworks.services import accounts, channels
from gasworks.services.checks import check_ledger
from gasworks.services.notifications import take_channel_payment

SECRET = "bench-secret-0123456789-0123456789-abc"
PATH = "/v1/channels/wallet/payments"
ACCOUNTS = 1000


def prepared_system(url: str):
    engine = make_engine(url)
    upgrade(engine)
    system = bootstrap(Settings(database_url=url), engine=engine)
    channels.add_channel(channel_id="wallet", kind=ChannelKind.WALLET_HMAC, name="bench wallet", merchant_id="", keys=[(KeyPurpose.HMAC_SECRET, "k1", SECRET)], uow=system.new_uow(), actor="bench")
    for i in range(ACCOUNTS):
        accounts.open_account(accounts.OpenAccount(f"43{i:08d}", "张三", "", "", "", "13800000000", f"{i:014d}", MeterKind.IOT), system.new_uow(), actor="bench")
    return system


def signed_requests(prefix: str, n: int) -> list[tuple[dict, bytes]]:
    wallet = WalletClient(key_id="k1", secret=SECRET)
    return [wallet.payment(path=PATH, txn_id=f"{prefix}-{i}", account_no=f"43{i % ACCOUNTS:08d}", amount_fen=100 + i % 5000, at=datetime.now(UTC)) for i in range(n)]


def timed(fn, items, concurrency: int, label: str) -> tuple[float, list[float]]:
    latencies: list[float] = []

    def one(item):
        started = time.perf_counter()
        fn(item)
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in track(pool.map(one, items), total=len(items), description=label, transient=True):
            pass
    return time.perf_counter() - started, latencies


def main(payments: int = 2000, concurrency: int = 8) -> None:
    configure_logging(level=40)
    console = Console()
    with fresh_database() as url:
        system = prepared_system(url)
        channel = system.new_uow().__enter__().channels.get("wallet")
        rows = []

        def service_path(item):
            headers, body = item
            request = InboundRequest("POST", PATH, {k.lower(): v for k, v in headers.items()}, body)
            take_channel_payment(channel, request, BILL_PAYMENT_DECODERS, system.new_uow, skew_s=300)

        elapsed, lat = timed(service_path, signed_requests("svc", payments), concurrency, "service layer")
        rows.append(("gasworks intake, service layer (verify + book)", payments, elapsed, lat))

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_app(system), host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        local = threading.local()

        def http_path(item):
            headers, body = item
            if not hasattr(local, "client"):
                local.client = httpx.Client(base_url=f"http://127.0.0.1:{port}")
            reply = local.client.post(PATH, content=body, headers=headers)
            assert reply.status_code == 200, reply.text

        elapsed, lat = timed(http_path, signed_requests("http", payments), concurrency, "HTTP")
        rows.append(("gasworks intake over HTTP (uvicorn, 1 process)", payments, elapsed, lat))
        server.should_exit = True

        report = check_ledger(system.new_uow())
        assert report.ok and report.payments_by_state["booked"][0] == 2 * payments, report

        raw_url = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(raw_url, autocommit=True) as c:
            c.execute("CREATE TABLE raw_payments (id text PRIMARY KEY, channel_id text, channel_txn_id text, amount_fen bigint, account_no text, received_at timestamptz, UNIQUE (channel_id, channel_txn_id))")
        local_raw = threading.local()

        def raw_insert(i):
            if not hasattr(local_raw, "c"):
                local_raw.c = psycopg.connect(raw_url, autocommit=True)
            local_raw.c.execute("INSERT INTO raw_payments VALUES (%s, 'wallet', %s, %s, %s, now())", (f"p{i}", f"raw-{i}", 100 + i % 5000, f"43{i % ACCOUNTS:08d}"))

        elapsed, lat = timed(raw_insert, list(range(payments)), concurrency, "raw INSERT")
        rows.append(("raw limit: 1-row INSERT per transaction", payments, elapsed, lat))
        with psycopg.connect(raw_url, autocommit=True) as c:
            started = time.perf_counter()
            with c.cursor().copy("COPY raw_payments (id, channel_id, channel_txn_id, amount_fen, account_no, received_at) FROM STDIN") as copy:
                for i in range(payments):
                    copy.write_row((f"c{i}", "wallet", f"copy-{i}", 100 + i % 5000, f"43{i % ACCOUNTS:08d}", datetime.now(UTC)))
            rows.append(("bulk ceiling: COPY, one transaction", payments, time.perf_counter() - started, []))

        raw_rate = payments / rows[2][2]
        table = Table(title=f"payment intake on PostgreSQL, {payments} payments, {concurrency} concurrent clients")
        for column in ("path", "payments/s", "p50 ms", "p99 ms", "vs raw INSERT"):
            table.add_column(column, justify="left" if column == "path" else "right")
        for label, n, elapsed, lat in rows:
            rate = n / elapsed
            q = statistics.quantiles(lat, n=100) if len(lat) > 1 else None
            table.add_row(label, f"{rate:,.0f}", f"{q[49] * 1000:.1f}" if q else "-", f"{q[98] * 1000:.1f}" if q else "-", f"{rate / raw_rate:.2f}x")
        console.print(table)


if __name__ == "__main__":
    typer.run(main)
