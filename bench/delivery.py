"""How long from a payment accepted to its purchase frame arriving at an awake meter, on PostgreSQL + Mosquitto.

The real path: the intake books the payment and writes the credit order in one transaction; the
worker (one process, default poll interval) finds it, locks the meter, publishes a CJ/T 188 frame
with QoS 1 and records it sent. A fleet of simulated meters (one MQTT connection for all) answers
like firmware, so acknowledgements flow back through the worker too. Meters are kept awake (a long
wake window): this measures gasworks, not the meter's sleep.

Beside it, in the same run, the raw floor: one QoS 1 publish from a client to a subscriber on the
same broker, and the worker's poll interval.

    uv run python -m bench.delivery --payments 2000 --rate 50
"""

import os
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench.fresh_database import fresh_database
from gasworks.adapters.db.engine import make_engine
from gasworks.adapters.db.migrate import upgrade
from gasworks.adapters.meters import cjt188
from gasworks.adapters.meters.transport import MqttTransport, mqtt_client
from gasworks.bootstrap import bootstrap
from gasworks.config import Settings
from gasworks.domain.accounts import MeterKind
from gasworks.domain.channels import ChannelKind, KeyPurpose, PaymentNotice
from gasworks.domain.delivery import CommandState
from gasworks.domain.meter_messages import WritePurchase
from gasworks.entrypoints.workers.worker import Worker
from gasworks.observability import configure_logging
from gasworks.services import accounts, channels, meter_keys
from gasworks.services.checks import check_ledger
from gasworks.services.intake import accept_payment
from gasworks.sim.fleet import MqttFleet
from gasworks.sim.meter import SimulatedMeter

MQTT_URL = os.environ.get("GASWORKS_BENCH_MQTT_URL", "mqtt://127.0.0.1:1883")


def raw_mqtt_hop(samples: int) -> list[float]:
    """QoS 1 publish -> subscriber receipt on the same broker: the floor under any MQTT delivery."""
    topic = f"bench-raw-{uuid.uuid4().hex[:8]}"
    got: dict[int, float] = {}
    done = threading.Event()
    sub = mqtt_client(MQTT_URL, f"raw-sub-{uuid.uuid4().hex[:6]}")
    ready = threading.Event()
    sub.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
    sub.on_subscribe = lambda *a: ready.set()

    def on_message(c, u, m):  # noqa: ANN001
        got[int(m.payload)] = time.perf_counter()
        if len(got) == samples:
            done.set()

    sub.on_message = on_message
    pub = mqtt_client(MQTT_URL, f"raw-pub-{uuid.uuid4().hex[:6]}")
    for client in (sub, pub):
        client.connect(*client._gasworks_address)  # type: ignore[attr-defined]
        client.loop_start()
    ready.wait(10)
    sent: dict[int, float] = {}
    for i in range(samples):
        sent[i] = time.perf_counter()
        pub.publish(topic, str(i), qos=1)
        time.sleep(0.002)
    done.wait(30)
    for client in (sub, pub):
        client.disconnect()
        client.loop_stop()
    return [got[i] - sent[i] for i in sent if i in got]


def online(system) -> int:  # noqa: ANN001
    with system.new_uow() as uow:
        return uow.meters.count_by_link_state().get("online", 0)


def applied(system) -> int:  # noqa: ANN001
    with system.new_uow() as uow:
        return uow.meter_commands.counts_by_state().get(("iot", CommandState.APPLIED.value), 0)


def main(payments: int = 2000, rate: float = 50.0, meters: int = 500, concurrency: int = 4, poll_interval_s: float = 0.05) -> None:
    configure_logging(level=40)
    console = Console()
    with fresh_database() as url:
        run(url, payments=payments, rate=rate, meters=meters, concurrency=concurrency, poll_interval_s=poll_interval_s, console=console)


def run(url: str, *, payments: int, rate: float, meters: int, concurrency: int, poll_interval_s: float, console: Console) -> None:
    prefix = f"bench-{uuid.uuid4().hex[:8]}/meters"
    stop = threading.Event()
    try:
        engine = make_engine(url)
        upgrade(engine)
        settings = Settings(
            database_url=url, mqtt_url=MQTT_URL, mqtt_topic_prefix=prefix, meter_wake_window_s=24 * 3600, watchdog_interval_s=3600, worker_poll_interval_s=poll_interval_s
        )
        system = bootstrap(settings, engine=engine)
        channels.add_channel(channel_id="wallet", kind=ChannelKind.WALLET_HMAC, name="bench", merchant_id="", keys=[(KeyPurpose.HMAC_SECRET, "k1", "s" * 32)], uow=system.new_uow(), actor="bench")
        serials = [f"{i:014d}" for i in range(meters)]
        for i, serial in enumerate(serials):
            accounts.open_account(accounts.OpenAccount(f"43{i:08d}", "张三", "", "", "", "13800000000", serial, MeterKind.IOT), system.new_uow(), actor="bench")
        arrived: dict[tuple[str, int], float] = {}

        def note_arrival(serial: str, frame: bytes, at: float) -> None:
            message = cjt188.message_of(cjt188.decode_sealed(frame).frame)
            if isinstance(message, WritePurchase):
                arrived.setdefault((serial, message.purchase_seq), at)

        fleet_meters = [SimulatedMeter(s, awake=True) for s in serials]
        for meter in fleet_meters:  # each meter holds the key gasworks made at its registration
            meter.install_key(meter_keys.export_key(meter.serial, system.new_uow(), actor="bench"))
        fleet = MqttFleet(MQTT_URL, prefix=prefix, meters=fleet_meters, on_frame=note_arrival)
        fleet.start()
        transport = MqttTransport(MQTT_URL, prefix=prefix)
        worker = Worker(system, transport)
        threading.Thread(target=worker.run, args=(stop,), daemon=True).start()
        deadline = time.monotonic() + 10
        while not transport.connected:
            assert time.monotonic() < deadline, "worker did not connect"
            time.sleep(0.05)
        time.sleep(0.5)  # its subscription is acknowledged
        for serial in serials:
            fleet.report(serial, datetime.now())
        deadline = time.monotonic() + 60
        while online(system) < meters:
            assert time.monotonic() < deadline, f"only {online(system)} of {meters} meters came online"
            time.sleep(0.2)
        accepted: dict[tuple[str, int], float] = {}
        purchase_seq = {s: 0 for s in serials}
        lock = threading.Lock()

        def pay(i: int) -> None:
            due = started + i / rate
            time.sleep(max(0.0, due - time.perf_counter()))
            account = i % meters
            # Payments for one account are serialised by its meter row; the order they commit decides the serial.
            accept_payment(PaymentNotice("wallet", f"b{i}", 10_000 + i % 500, None, account_no=f"43{account:08d}"), system.new_uow())
            done_at = time.perf_counter()
            with system.new_uow() as uow:
                seq = uow.meters.get(serials[account]).purchase_seq_issued
            with lock:
                purchase_seq[serials[account]] = max(purchase_seq[serials[account]], seq)
                accepted[(serials[account], seq)] = done_at

        started = time.perf_counter()
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("payments", total=payments)
            with ThreadPoolExecutor(concurrency) as pool:
                for _ in pool.map(pay, range(payments)):
                    progress.advance(task)
        deadline = time.monotonic() + 120
        while len(arrived) < payments and time.monotonic() < deadline:
            time.sleep(0.1)
        deadline = time.monotonic() + 120
        while applied(system) < payments and time.monotonic() < deadline:
            time.sleep(0.2)
        applied_n = applied(system)
        stop.set()
        latencies = [arrived[k] - accepted[k] for k in accepted if k in arrived]
        report = check_ledger(system.new_uow())
        raw = raw_mqtt_hop(1000)

        table = Table(title=f"accepted → purchase frame at an awake meter: {payments} payments at {rate:g}/s over {meters} meters (PostgreSQL + Mosquitto)")
        for column in ("path", "samples", "p50 ms", "p99 ms", "max ms"):
            table.add_column(column, justify="left" if column == "path" else "right")

        def row(label: str, values: list[float]) -> None:
            q = statistics.quantiles(values, n=100)
            table.add_row(label, f"{len(values):,}", f"{q[49] * 1000:.1f}", f"{q[98] * 1000:.1f}", f"{max(values) * 1000:.1f}")

        row("gasworks: booked → worker → MQTT → meter", latencies)
        row("raw floor: one QoS 1 publish → subscriber", raw)
        console.print(table)
        q = statistics.quantiles(latencies, n=100)
        rq = statistics.quantiles(raw, n=100)
        console.print(f"worker poll interval {settings.worker_poll_interval_s * 1000:.0f} ms; p50 is {q[49] / rq[49]:.0f}x the raw hop")
        console.print(f"applied by meters: {applied_n:,} of {payments:,}; ledger check: {'holds' if report.ok else report.findings[:3]}")
        console.print(f"meters applied each purchase once: {all(len({s for s, _ in m.applied}) == len(m.applied) for m in fleet.meters.values())}")
        fleet.stop()
    finally:
        stop.set()
        time.sleep(0.5)


if __name__ == "__main__":
    typer.run(main)
