"""How long from a payment accepted to its purchase frame arriving at an awake meter, on PostgreSQL + Mosquitto.

The real path: this process books payments (the intake's use case: payment, ledger and credit
order in one transaction, with a NOTIFY) at a steady rate; 1, 2 and then 4 `gasworks worker`
processes (the real CLI, as a site runs it) claim the due meters in batches, publish CJ/T 188
frames with QoS 1 through their in-flight windows and record them sent. A fleet of simulated
meters (one MQTT connection for all) answers like firmware, so every acknowledgement flows back
through the workers too (shared subscription) and finishes its purchase. Meters are kept awake
(a long wake window): this measures gasworks, not the meter's sleep.

Measured in the same run, the raw limit: one bare QoS 1 publish from a client to a subscriber on
the same broker (latency), and as many bare QoS 1 publishes as the broker takes (rate).

    uv run python -m bench.delivery              # the issue's size: 200 payments/s for 60 s per worker count, then 500/s
    uv run python -m bench.delivery --scale 0.1  # a quick run: 6 s each

The figures come from a machine shared with other work: read the ratios (ours / raw, same run).
"""

import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from sqlalchemy import or_, select

from bench.fresh_database import fresh_database
from bench.table import BenchRow, print_table
from gasworks.adapters.db import tables
from gasworks.adapters.db.engine import make_engine
from gasworks.adapters.db.migrate import upgrade
from gasworks.adapters.meters import cjt188
from gasworks.adapters.meters.transport import mqtt_client
from gasworks.bootstrap import System, bootstrap
from gasworks.config import Settings
from gasworks.domain.accounts import MeterKind
from gasworks.domain.channels import ChannelKind, KeyPurpose, PaymentNotice
from gasworks.domain.delivery import CommandState
from gasworks.domain.meter_messages import WritePurchase
from gasworks.entrypoints.workers.processes import WORKER_COMMAND
from gasworks.observability import configure_logging
from gasworks.services import accounts, channels, meter_keys
from gasworks.services.checks import check_ledger
from gasworks.services.intake import accept_payment
from gasworks.sim.fleet import MqttFleet
from gasworks.sim.meter import SimulatedMeter

MQTT_URL = os.environ.get("GASWORKS_BENCH_MQTT_URL", "mqtt://127.0.0.1:1883")
RATE_PER_S = 200.0  # the sustained rate ...
DURATION_S = 60.0  # ... for a minute, at scale 1.0
PEAK_RATE_PER_S = 500.0  # and the rate to report beyond it
WORKER_COUNTS = (1, 2, 4)
METERS = 1000  # at scale 1.0: each meter gets a purchase every 5 s at 200/s, one in flight at a time
P99_TARGET_MS = 200.0
PAYERS = 16  # threads booking payments: the intake's own latency must not throttle the offered rate
DRAIN_WAIT_S = 120.0
READY_WAIT_S = 30.0


def raw_publish_latency_s(samples: int) -> list[float]:
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


def raw_publish_rate_per_s(messages: int) -> float:
    """Bare QoS 1 publishes as fast as the broker takes them, to a subscriber: messages received per second."""
    topic = f"bench-rate-{uuid.uuid4().hex[:8]}"
    received = 0
    done = threading.Event()
    ready = threading.Event()
    sub = mqtt_client(MQTT_URL, f"rate-sub-{uuid.uuid4().hex[:6]}")
    sub.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
    sub.on_subscribe = lambda *a: ready.set()

    def on_message(c, u, m):  # noqa: ANN001
        nonlocal received
        received += 1
        if received == messages:
            done.set()

    sub.on_message = on_message
    pub = mqtt_client(MQTT_URL, f"rate-pub-{uuid.uuid4().hex[:6]}")
    pub.max_inflight_messages_set(100)
    for client in (sub, pub):
        client.connect(*client._gasworks_address)  # type: ignore[attr-defined]
        client.loop_start()
    ready.wait(10)
    started = time.perf_counter()
    for i in range(messages):
        pub.publish(topic, str(i), qos=1)
    done.wait(60)
    elapsed = time.perf_counter() - started
    for client in (sub, pub):
        client.disconnect()
        client.loop_stop()
    return received / elapsed


def quantile_ms(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) >= 2 else float("nan")


@dataclass
class Run:
    workers: int
    offered_per_s: float
    payments: int = 0
    booked_per_s: float = 0.0  # the rate this process actually booked at
    delivered_per_s: float = 0.0  # frames at meters per second over the run
    latencies_s: list[float] = field(default_factory=list)
    workers_cpu_s: float = 0.0  # user + system CPU of the worker processes over the run

    def q_ms(self, q: int) -> float:
        return quantile_ms(self.latencies_s, q)


class DeliveryBench:
    """One database, one fleet of awake meters, worker processes started and stopped per run."""

    def __init__(self, url: str, *, meters: int, console: Console) -> None:
        self.url = url
        self.console = console
        self.prefix = f"bench-{uuid.uuid4().hex[:8]}/meters"
        engine = make_engine(url)
        upgrade(engine)
        self.settings = Settings(database_url=url, mqtt_url=MQTT_URL, mqtt_topic_prefix=self.prefix, meter_wake_window_s=24 * 3600, watchdog_interval_s=3600)
        self.system: System = bootstrap(self.settings, engine=engine)
        channels.add_channel(
            channel_id="wallet", kind=ChannelKind.WALLET_HMAC, name="bench", merchant_id="", keys=[(KeyPurpose.HMAC_SECRET, "k1", "s" * 32)],
            uow=self.system.new_uow(), actor="bench",
        )  # fmt: skip
        self.serials = [f"{i:014d}" for i in range(meters)]
        for i, serial in enumerate(self.serials):
            accounts.open_account(accounts.OpenAccount(f"43{i:08d}", "张三", "", "", "", "13800000000", serial, MeterKind.IOT), self.system.new_uow(), actor="bench")
        self.arrived: dict[tuple[str, int], float] = {}
        self.accepted: dict[tuple[str, int], float] = {}
        self._lock = threading.Lock()
        fleet_meters = [SimulatedMeter(s, awake=True) for s in self.serials]
        for meter in fleet_meters:  # each meter holds the key gasworks made at its registration
            meter.install_key(meter_keys.export_key(meter.serial, self.system.new_uow(), actor="bench"))
        self.fleet = MqttFleet(MQTT_URL, prefix=self.prefix, meters=fleet_meters, on_frame=self._note_arrival)
        self.fleet.start()
        self.paid = 0

    def _note_arrival(self, serial: str, frame: bytes, at: float) -> None:
        message = cjt188.message_of(cjt188.decode_sealed(frame).frame)
        if isinstance(message, WritePurchase):
            with self._lock:
                self.arrived.setdefault((serial, message.purchase_seq), at)

    def _worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            GASWORKS_DATABASE_URL=self.url, GASWORKS_MQTT_URL=MQTT_URL, GASWORKS_MQTT_TOPIC_PREFIX=self.prefix, GASWORKS_METER_WAKE_WINDOW_S=str(24 * 3600),
            GASWORKS_WATCHDOG_INTERVAL_S="3600", GASWORKS_WORKER_METRICS_PORT="0", GASWORKS_WORKER_PROCESSES="1", GASWORKS_MQTT_CLIENT_ID="",
        )  # fmt: skip
        return env

    def start_workers(self, n: int) -> list[subprocess.Popen]:
        """n `gasworks worker` processes, as a site runs them; returns once every meter is online."""
        workers = [subprocess.Popen(WORKER_COMMAND, env=self._worker_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(n)]
        for worker in workers:
            assert worker.stdout is not None
            line = worker.stdout.readline()
            if "worker on" not in line:
                raise RuntimeError(f"a worker did not start: {line!r}")
            threading.Thread(target=worker.stdout.read, daemon=True).start()  # drain
        time.sleep(2.0)  # their shared subscriptions are acknowledged
        deadline = time.monotonic() + READY_WAIT_S
        waiting = self._asleep()
        while waiting and time.monotonic() < deadline:
            for serial in waiting:  # a report lost before a subscription was in place is simply made again
                self.fleet.report(serial, datetime.now())
            before = len(waiting) + 1
            while (waiting := self._asleep()) and len(waiting) < before:  # re-report only once progress stops
                before = len(waiting)
                time.sleep(3.0)
        if waiting:
            raise RuntimeError(f"{len(waiting)} meters never came online")
        return workers

    def _asleep(self) -> list[str]:
        m = tables.meters
        with self.system.engine.connect() as c:
            rows = c.execute(select(m.c.serial).where(or_(m.c.awake_until.is_(None), m.c.awake_until <= datetime.now(UTC))))
            return [r.serial for r in rows]

    @staticmethod
    def cpu_s(workers: list[subprocess.Popen]) -> float:
        """User + system CPU the worker processes have used so far (Linux /proc; 0 elsewhere)."""
        total = 0.0
        for worker in workers:
            try:
                fields = Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
        return total

    @staticmethod
    def stop_workers(workers: list[subprocess.Popen]) -> None:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(30)

    def applied(self) -> int:
        with self.system.new_uow() as uow:
            return uow.meter_commands.counts_by_state().get(("iot", CommandState.APPLIED.value), 0)

    def offer(self, *, workers: int, rate_per_s: float, duration_s: float) -> Run:
        """Payments at `rate_per_s` for `duration_s` with `workers` worker processes; waits until all are applied."""
        run = Run(workers, rate_per_s)
        count = max(1, int(rate_per_s * duration_s))
        first = self.paid
        self.paid += count
        accepted: dict[tuple[str, int], float] = {}
        meters = len(self.serials)

        def pay(i: int) -> None:
            time.sleep(max(0.0, started + (i - first) / rate_per_s - time.perf_counter()))
            account = i % meters
            accept_payment(PaymentNotice("wallet", f"b{i}", 10_000 + i % 500, None, account_no=f"43{account:08d}"), self.system.new_uow())
            done_at = time.perf_counter()
            with self.system.new_uow() as uow:  # payments for one account are serialised by its meter row
                seq = uow.meters.get(self.serials[account]).purchase_seq_issued
            with self._lock:
                accepted[(self.serials[account], seq)] = done_at

        processes = self.start_workers(workers)
        try:
            applied_before = self.applied()
            cpu_before = self.cpu_s(processes)
            started = time.perf_counter()
            with ThreadPoolExecutor(PAYERS) as pool:
                list(pool.map(pay, range(first, first + count)))
            booked_s = time.perf_counter() - started
            deadline = time.monotonic() + DRAIN_WAIT_S
            while time.monotonic() < deadline:
                with self._lock:
                    if all(k in self.arrived for k in accepted):
                        break
                time.sleep(0.1)
            deadline = time.monotonic() + DRAIN_WAIT_S
            while self.applied() < applied_before + count and time.monotonic() < deadline:
                time.sleep(0.2)
            run.workers_cpu_s = self.cpu_s(processes) - cpu_before
        finally:
            self.stop_workers(processes)
        with self._lock:
            arrivals = [self.arrived[k] for k in accepted if k in self.arrived]
            run.latencies_s = [self.arrived[k] - accepted[k] for k in accepted if k in self.arrived]
        run.payments = count
        run.booked_per_s = count / booked_s
        run.delivered_per_s = len(arrivals) / (max(arrivals) - started) if arrivals else 0.0
        return run

    def proof(self, payments: int) -> tuple[bool, str]:
        """`gasworks check` holds, every purchase applied exactly once (by the meters and in the ledger)."""
        report = check_ledger(self.system.new_uow())
        applied_db = self.applied()
        once = all(len({seq for seq, _ in m.applied}) == len(m.applied) for m in self.fleet.meters.values())
        applied_by_meters = sum(len(m.applied) for m in self.fleet.meters.values())
        ok = report.ok and once and applied_db == payments == applied_by_meters
        findings = "" if report.ok else f"; ledger: {[f.code for f in report.findings[:3]]}"
        return ok, f"{applied_db:,} of {payments:,} applied, meters applied {applied_by_meters:,}, each once: {once}{findings}"

    def close(self) -> None:
        self.fleet.stop()
        self.system.engine.dispose()


def measure(scale: float = 1.0) -> list[BenchRow]:
    """200 payments/s for 60 s × scale with 1, 2 and 4 worker processes, then 500/s with 4; the raw limits in the same run."""
    configure_logging(level=40)
    console = Console()
    duration_s = max(2.0, DURATION_S * scale)
    rows: list[BenchRow] = []
    with fresh_database() as url:
        bench = DeliveryBench(url, meters=max(200, int(METERS * min(1.0, scale * 4))), console=console)
        try:
            raw = raw_publish_latency_s(2000)
            raw_rate = raw_publish_rate_per_s(10_000)
            raw_p50, raw_p95, raw_p99 = (quantile_ms(raw, q) for q in (50, 95, 99))
            runs = []
            for workers in WORKER_COUNTS:
                run = bench.offer(workers=workers, rate_per_s=RATE_PER_S, duration_s=duration_s)
                runs.append(run)
                console.print(f"{workers} worker(s) at {RATE_PER_S:g}/s: booked {run.booked_per_s:.0f}/s, p50 {run.q_ms(50):.1f} ms, p99 {run.q_ms(99):.1f} ms")
            peak = bench.offer(workers=max(WORKER_COUNTS), rate_per_s=PEAK_RATE_PER_S, duration_s=duration_s)
            console.print(f"{peak.workers} workers at {PEAK_RATE_PER_S:g}/s: booked {peak.booked_per_s:.0f}/s, p50 {peak.q_ms(50):.1f} ms, p99 {peak.q_ms(99):.1f} ms")
            proved, proof = bench.proof(sum(r.payments for r in [*runs, peak]))
        finally:
            bench.close()
    loaded = "machine shared with other work"
    for run in runs:
        label = f"accepted → frame at meter, {run.workers} worker process{'es' if run.workers > 1 else ''}, {RATE_PER_S:g}/s × {duration_s:g} s"
        note = f"booked {run.booked_per_s:.0f}/s, {len(run.latencies_s):,} frames; workers' CPU {run.workers_cpu_s * 1000 / max(1, run.payments):.1f} ms a purchase; {loaded}"
        rows.append(BenchRow(f"{label}: p50", run.q_ms(50), raw_p50, "ms", False, "—", True, note))
        rows.append(BenchRow(f"{label}: p95", run.q_ms(95), raw_p95, "ms", False, "—", True, note))
        rows.append(BenchRow(f"{label}: p99", run.q_ms(99), raw_p99, "ms", False, f"≤ {P99_TARGET_MS:g} ms", run.q_ms(99) <= P99_TARGET_MS, note))
    label = f"accepted → frame at meter, {peak.workers} worker processes, {PEAK_RATE_PER_S:g}/s offered"
    note = f"booked {peak.booked_per_s:.0f}/s; p50 {peak.q_ms(50):.1f} ms, p95 {peak.q_ms(95):.1f} ms; {loaded}"
    rows.append(BenchRow(f"{label}: p99", peak.q_ms(99), raw_p99, "ms", False, "report", True, note))
    within = [r for r in [*runs, peak] if r.q_ms(99) <= P99_TARGET_MS]
    best = max(within or [*runs, peak], key=lambda r: r.delivered_per_s)
    rows.append(
        BenchRow(
            f"highest rate sustained{' with p99 ≤ 200 ms' if within else ' (none kept p99 ≤ 200 ms)'} (frames at meters per s)", best.delivered_per_s, raw_rate,
            "frames/s", True, f"≥ {RATE_PER_S:g}/s with p99 ≤ {P99_TARGET_MS:g} ms", bool(within) and best.delivered_per_s >= RATE_PER_S * 0.95,
            f"{best.workers} workers, {best.offered_per_s:g}/s offered, booked {best.booked_per_s:.0f}/s, p99 {best.q_ms(99):.0f} ms; raw: bare QoS 1 publishes/s",
        )
    )  # fmt: skip
    rows.append(BenchRow("exactly once: gasworks check holds, each purchase applied once", 1.0 if proved else 0.0, 1.0, "yes=1", True, "1", proved, proof))
    return rows


def main(scale: float = typer.Option(1.0, help="1.0: 60 s per run (the issue's size); smaller for a quick run.")) -> None:
    rows = measure(scale)
    print_table(rows, title="delivery: payment accepted → purchase frame at an awake meter (PostgreSQL + Mosquitto, worker processes)", console=Console(width=240))
    if not rows[-1].met:
        sys.exit(1)


if __name__ == "__main__":
    typer.run(main)
