"""The broker-node-kill drill: real `gasworks worker` processes pulling uplinks from a JetStream
work queue on the three-node NATS cluster of scripts/nats-cluster, simulated IoT meters on its MQTT
gateway, payments booked at a steady rate, and one node killed (SIGKILL) mid-run.

Meters report every few seconds (awake, as after a button press); each report lets a worker send
what is due. After the load, the drill waits for every purchase to reach its meter and counts, per
meter, purchases booked vs applied: lost (booked, never applied) and applied twice (the meter's
firmware applies serial n only after n - 1, so a second application would show as more applied
than booked). It measures the time from the kill to the first frame a worker sent that reached a
meter after it, and the longest time around the kill with none.
"""

import random
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from gasworks.bootstrap import bootstrap
from gasworks.config import Settings
from gasworks.domain.accounts import MeterKind
from gasworks.domain.channels import ChannelKind, PaymentNotice
from gasworks.services import accounts, channels, meter_keys
from gasworks.services.checks import check_ledger
from gasworks.services.intake import accept_payment
from gasworks.sim.fleet import MqttFleet
from gasworks.sim.meter import SimulatedMeter
from gasworks.sim.soak_rig import GasworksProcess, free_port, gasworks_env, new_run_directory

REPORT_EVERY_S = 2.0  # an awake meter's report interval in the drill
DRAIN_WAIT_S_MAX = 120.0
TOP_UP_FEN = 3_000


@dataclass(frozen=True)
class BrokerDrillOptions:
    database_url: str
    uplink_queue_urls: str  # scripts/nats-cluster/up prints them
    mqtt_url: str  # the cluster's MQTT gateways, mqtt://h:p1,h:p2,h:p3
    scripts: Path  # scripts/nats-cluster
    households: int = 24
    payments_per_s: int = 10
    before_kill_s: float = 10.0
    after_kill_s: float = 30.0
    kill_node: int = 1
    workers: int = 2
    replicas: int = 3


@dataclass
class BrokerDrillReport:
    payments_booked: int = 0
    purchases_applied: int = 0
    lost: list[str] = field(default_factory=list)  # meter: booked > applied after the drain
    applied_twice: list[str] = field(default_factory=list)  # meter: applied > booked
    killed: str = ""
    kill_to_first_downlink_s: float | None = None
    longest_gap_s: float = 0.0  # longest time without any downlink reaching a meter, around the kill
    ledger_ok: bool = False
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.lost and not self.applied_twice and self.ledger_ok and self.purchases_applied == self.payments_booked


class BrokerDrill:
    def __init__(self, options: BrokerDrillOptions, *, say=lambda _line: None) -> None:  # noqa: ANN001
        self.options = options
        self.say = say
        self.run_id = datetime.now(UTC).strftime("%H%M%S")
        self.prefix = f"drill{self.run_id}/meters"
        self.report = BrokerDrillReport()
        self.downlinks_at: list[float] = []
        self.lock = threading.Lock()
        self.killed_at: float | None = None

    def run(self) -> BrokerDrillReport:
        started = time.monotonic()
        o = self.options
        system = bootstrap(Settings(database_url=o.database_url))
        system.migrate()
        channel_id = f"drill-{self.run_id}"
        channels.add_channel(channel_id=channel_id, kind=ChannelKind.KIOSK, name="演练", merchant_id="", keys=[], uow=system.new_uow(), actor="drill")
        meters: dict[str, SimulatedMeter] = {}
        account_of: dict[str, str] = {}
        for i in range(o.households):
            serial = f"{46_000_000_000_000 + int(self.run_id) * 10_000 + i:014d}"
            account_no = f"46{self.run_id}{i:04d}"
            accounts.open_account(accounts.OpenAccount(account_no, f"住户{i}", "", "演练苑", "G-01", "13800000000", serial, MeterKind.IOT), system.new_uow(), actor="drill")
            meter = SimulatedMeter(serial, awake=True)
            meter.install_key(meter_keys.export_key(serial, system.new_uow(), actor="drill"))
            meters[serial], account_of[serial] = meter, account_no
        directory = new_run_directory()
        env = gasworks_env(database_url=o.database_url, uplink_queue_urls=o.uplink_queue_urls, uplink_queue_replicas=str(o.replicas), mqtt_topic_prefix=self.prefix, meter_ack_wait_s="2", meter_ack_wait_s_max="4", log_json="true")
        workers = [GasworksProcess(f"worker {k}", ["worker", "--metrics-port", str(free_port())], env, directory / f"worker-{k}.log") for k in range(1, o.workers + 1)]
        for worker in workers:
            worker.start()
        fleet = MqttFleet(o.mqtt_url, prefix=self.prefix, meters=list(meters.values()), on_frame=self._heard)
        fleet.start()
        self.say(f"{o.workers} gasworks workers on NATS ({o.uplink_queue_urls}), {o.households} meters on its MQTT; logs in {directory}")
        stop = threading.Event()
        reporter = threading.Thread(target=self._report_forever, args=(fleet, list(meters), stop), daemon=True)
        reporter.start()
        booked: dict[str, int] = dict.fromkeys(meters, 0)
        try:
            time.sleep(3)  # workers connected and pulling
            for worker in workers:
                if worker.process is not None and worker.process.poll() is not None:
                    raise RuntimeError(f"{worker.name} exited with {worker.process.returncode}; see {worker.log}")
            kill = threading.Timer(o.before_kill_s, self._kill)
            kill.start()
            load_ends = time.monotonic() + o.before_kill_s + o.after_kill_s
            n = 0
            serials = list(meters)
            self.say(f"{o.payments_per_s} payments/s for {o.before_kill_s + o.after_kill_s:.0f} s; node {o.kill_node} dies at {o.before_kill_s:.0f} s")
            while time.monotonic() < load_ends:
                serial = serials[n % len(serials)]
                taken = accept_payment(PaymentNotice(channel_id, f"B{self.run_id}{n:06d}", TOP_UP_FEN, None, account_no=account_of[serial]), system.new_uow())
                if taken.state.value == "booked":
                    booked[serial] += 1
                n += 1
                time.sleep(1 / o.payments_per_s)
            kill.join()
            self.say("load stopped; waiting for every purchase to reach its meter")
            deadline = time.monotonic() + DRAIN_WAIT_S_MAX
            while time.monotonic() < deadline and any(len(meters[s].applied) < booked[s] for s in serials):
                time.sleep(0.5)
            time.sleep(2 * REPORT_EVERY_S)  # a second application would show about now
        finally:
            stop.set()
            reporter.join(10)
            fleet.stop()
            for worker in workers:
                worker.stop()
        r = self.report
        r.payments_booked = sum(booked.values())
        r.purchases_applied = sum(len(m.applied) for m in meters.values())
        r.lost = [s for s in serials if len(meters[s].applied) < booked[s]]
        r.applied_twice = [s for s in serials if len(meters[s].applied) > booked[s]]
        r.ledger_ok = check_ledger(system.new_uow()).ok
        if self.killed_at is not None:
            after = sorted(at for at in self.downlinks_at if at >= self.killed_at)
            r.kill_to_first_downlink_s = after[0] - self.killed_at if after else None
            times = sorted(self.downlinks_at)
            around = [t for t in times if self.killed_at - 10 <= t <= self.killed_at + 60]
            r.longest_gap_s = max((b - a for a, b in zip(around, around[1:], strict=False)), default=0.0)
        system.engine.dispose()
        r.wall_s = time.monotonic() - started
        return r

    def _heard(self, serial: str, frame: bytes, at: float) -> None:
        with self.lock:
            self.downlinks_at.append(time.monotonic())  # a downlink reached a meter: deliveries flow

    def _report_forever(self, fleet: MqttFleet, serials: list[str], stop: threading.Event) -> None:
        rng = random.Random(1)
        while not stop.is_set():
            for serial in rng.sample(serials, len(serials)):
                try:
                    fleet.report(serial, datetime.now(UTC))
                except Exception:  # noqa: BLE001, S112 - the node is gone: paho reconnects to the next; report again later
                    continue
            stop.wait(REPORT_EVERY_S)

    def _kill(self) -> None:
        self.killed_at = time.monotonic()
        subprocess.run([str(self.options.scripts / "kill-node"), str(self.options.kill_node)], check=False)  # noqa: S603
        self.report.killed = f"node {self.options.kill_node}"
        self.say(f"NATS node {self.options.kill_node} killed with SIGKILL")
