"""Meters on NATS (its MQTT gateway), uplinks shared among workers by a JetStream work queue: each
uplink handled by exactly one worker, and purchases applied once, on real PostgreSQL and a private
nats-server (JetStream and MQTT on free ports; the cluster kill is the drill in scripts/nats-cluster,
not a CI test)."""

import shutil
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from gasworks.adapters.meters.jetstream import JetStreamTransport
from gasworks.bootstrap import System
from gasworks.domain.accounts import MeterKind
from gasworks.domain.channels import PaymentNotice
from gasworks.services import accounts, meter_keys
from gasworks.services.checks import check_ledger
from gasworks.services.delivery import dispatch_due
from gasworks.services.intake import accept_payment
from gasworks.sim.fleet import MqttFleet
from gasworks.sim.meter import SimulatedMeter
from gasworks.sim.soak_rig import free_port
from tests.conftest import make_system, reachable, service_missing
from tests.support import handle_frame, set_up

METERS = 12
WAIT_S = 20.0


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A private nats-server with JetStream and MQTT: (nats URL, mqtt URL)."""
    binary = shutil.which("nats-server") or ("/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None)
    if binary is None:
        service_missing("nats-server is not installed (Debian: nats-server)")
    client, mqtt = free_port(), free_port()
    (tmp_path / "nats.conf").write_text(f'server_name: gasworks-test\nlisten: 127.0.0.1:{client}\njetstream {{ store_dir: "{tmp_path}/js" }}\nmqtt {{ listen: 127.0.0.1:{mqtt} }}\n')
    process = subprocess.Popen([binary, "-c", str(tmp_path / "nats.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
    deadline = time.monotonic() + 15
    while not (reachable("127.0.0.1", client) and reachable("127.0.0.1", mqtt)):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            service_missing("the private nats-server did not start")
        time.sleep(0.1)
    yield f"nats://127.0.0.1:{client}", f"mqtt://127.0.0.1:{mqtt}"
    process.terminate()
    process.wait(10)


def _serial(i: int) -> str:
    return f"{21_000_000_000_000 + i:014d}"


@pytest.fixture
def nats_city(postgres_only_url, clock) -> Iterator[tuple[System, list[SimulatedMeter]]]:
    system = make_system(postgres_only_url, clock)
    set_up(system)
    meters = []
    for i in range(METERS):
        accounts.open_account(accounts.OpenAccount(f"4304{i:06d}", "赵六", "", "华新苑", "G-04", "13900000000", _serial(i), MeterKind.IOT), system.new_uow(), actor="test")
        meter = SimulatedMeter(_serial(i), awake=True)
        meter.install_key(meter_keys.export_key(_serial(i), system.new_uow(), actor="test"))
        meters.append(meter)
    yield system, meters
    system.engine.dispose()


def _workers(nats_url: str, prefix: str, n: int) -> list[JetStreamTransport]:
    transports = [JetStreamTransport([nats_url], prefix=prefix) for _ in range(n)]
    for transport in transports:
        transport.start()
        assert transport.subscribed
    return transports


def _take(transports: list[JetStreamTransport], expected: int) -> list[list[tuple[str, bytes]]]:
    taken: list[list[tuple[str, bytes]]] = [[] for _ in transports]
    deadline = time.monotonic() + WAIT_S
    while sum(map(len, taken)) < expected and time.monotonic() < deadline:
        for k, transport in enumerate(transports):
            while (item := transport.uplinks.get(0)) is not None:
                taken[k].append(item)
        time.sleep(0.02)
    time.sleep(0.5)  # anything handed out twice would arrive about now
    for k, transport in enumerate(transports):
        while (item := transport.uplinks.get(0)) is not None:
            taken[k].append(item)
    return taken


def test_each_uplink_a_meter_sends_over_mqtt_goes_to_exactly_one_of_the_workers(nats_server, clock):
    nats_url, mqtt_url = nats_server
    prefix = f"t{uuid.uuid4().hex[:8]}/meters"
    workers = _workers(nats_url, prefix, 2)
    meters = [SimulatedMeter(_serial(i), awake=True) for i in range(METERS)]
    fleet = MqttFleet(mqtt_url, prefix=prefix, meters=meters)
    fleet.start()
    try:
        for _ in range(5):
            for meter in meters:
                fleet.report(meter.serial, clock.now())
        taken = _take(workers, 5 * METERS)
    finally:
        fleet.stop()
        for worker in workers:
            worker.stop()
    everything = [item for share in taken for item in share]
    assert len(everything) == 5 * METERS, f"{len(everything)} uplinks taken of {5 * METERS} sent"
    assert Counter(serial for serial, _ in everything) == Counter({m.serial: 5 for m in meters})
    assert len(set(everything)) == len(everything), "an uplink was handed to two workers"


def test_a_worker_that_stops_leaves_its_share_to_the_others(nats_server, clock):
    nats_url, mqtt_url = nats_server
    prefix = f"t{uuid.uuid4().hex[:8]}/meters"
    first, second = _workers(nats_url, prefix, 2)
    first.stop()
    meters = [SimulatedMeter(_serial(i), awake=True) for i in range(METERS)]
    fleet = MqttFleet(mqtt_url, prefix=prefix, meters=meters)
    fleet.start()
    try:
        for meter in meters:
            fleet.report(meter.serial, clock.now())
        taken = _take([second], METERS)
    finally:
        fleet.stop()
        second.stop()
    assert sorted(serial for serial, _ in taken[0]) == sorted(m.serial for m in meters)


def test_purchases_go_down_over_nats_and_are_applied_once_with_two_workers(nats_server, nats_city):
    nats_url, mqtt_url = nats_server
    system, meters = nats_city
    prefix = f"t{uuid.uuid4().hex[:8]}/meters"
    for i in range(METERS):
        accept_payment(PaymentNotice("wo-wallet", f"N-{i}", 4_000, None, account_no=f"4304{i:06d}"), system.new_uow())
    workers = _workers(nats_url, prefix, 2)
    fleet = MqttFleet(mqtt_url, prefix=prefix, meters=meters)
    fleet.start()
    stop = threading.Event()

    def work(transport: JetStreamTransport) -> None:  # as the worker's loop: each uplink handled, then what is due sent
        while not stop.is_set():
            item = transport.uplinks.get(0.1)
            if item is not None and item[0]:
                handle_frame(item[0], item[1], system.new_uow())
            dispatch_due(system.new_uow(), transport, batch_max=50)

    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    try:
        for meter in meters:
            fleet.report(meter.serial, system.clock.now())
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and any(len(m.applied) < 1 for m in meters):
            time.sleep(0.1)
        time.sleep(1.0)  # a second application would show about now
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        fleet.stop()
        for worker in workers:
            worker.stop()
    assert [len(m.applied) for m in meters] == [1] * METERS
    assert check_ledger(system.new_uow()).ok
