"""The closed broker: who may publish and read what, uplinks shared between workers, reconnects.

Every test provisions its own Mosquitto with `gasworks broker provision` (tests/broker_rig.py). In
MQTT 3.1.1 a publish the ACL denies is still acknowledged, so a refusal is proved with a sentinel:
an allowed message sent after the forbidden one on the same connection; when the sentinel arrives,
the forbidden one would have arrived before it.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

import gasworks.adapters.meters.transport as transport_module
from gasworks.adapters.meters.broker import mosquitto_hash, password_for, read_site_secret, verify_mosquitto_hash
from gasworks.adapters.meters.transport import Backoff, MqttTransport, topic_down, topic_up
from gasworks.bootstrap import bootstrap
from gasworks.config import Settings
from gasworks.domain.clock import FixedClock
from gasworks.domain.delivery import CommandState
from gasworks.entrypoints.cli.main import app
from gasworks.observability import mqtt_connection_attempts
from gasworks.services.checks import check_ledger
from gasworks.sim.city import build_city
from gasworks.sim.meter import MqttMeter, SimulatedMeter
from gasworks.sim.outcome import summarise
from gasworks.sim.world import FaultRates, Simulation, simulation_start
from tests.broker_rig import METERS, Client, ClosedBroker, closed_broker, free_port  # noqa: F401 - the fixture
from tests.delivery_rig import IOT_SERIAL, Rig
from tests.support import set_up

A, B = METERS
UPLINK_FAILOVER_S_MAX = 5.0
SILENT_WORKER_DROP_S_MAX = 20.0  # at a keepalive of 1 s
SILENT_WORKER_TAKEOVER_IN_A_ROW = 20  # round robin between two would give every other one to the frozen worker  # a killed worker's socket is closed by the kernel: the broker drops it at once
GASWORKS = str(Path(sys.executable).parent / "gasworks")


def transport(url: str, prefix: str, **kwargs: object) -> MqttTransport:
    t = MqttTransport(url, prefix=prefix, **kwargs)
    t.start()
    assert t.subscribed, "worker transport did not subscribe"
    return t


def drain(t: MqttTransport, into: list[bytes]) -> None:
    while (item := t.uplinks.get(0)) is not None:
        into.append(item[1])


# ---- closed: credentials and ACL ------------------------------------------------------------------


def _raw_connect_and_publish(port: int, topic: str, payload: bytes) -> bytes:
    """An anonymous MQTT 3.1.1 CONNECT and a QoS 0 PUBLISH sent together, before any CONNACK."""

    def packet(kind: int, body: bytes) -> bytes:
        assert len(body) < 128
        return bytes([kind, len(body)]) + body

    def text(value: bytes) -> bytes:
        return len(value).to_bytes(2, "big") + value

    connect = packet(0x10, text(b"MQTT") + bytes([4, 0x02, 0, 30]) + text(b"anonymous-publisher"))
    publish = packet(0x30, text(topic.encode()) + payload)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(connect + publish)
        answer = b""
        try:
            while chunk := s.recv(64):  # the broker answers CONNACK and closes
                answer += chunk
        except ConnectionResetError:  # closed with our PUBLISH unread: the CONNACK may be lost with it
            pass
    return answer


def test_an_anonymous_client_is_refused_and_its_publish_never_reaches_a_worker(closed_broker):
    prefix = closed_broker.prefix
    worker = Client(closed_broker.worker_url)
    assert not worker.connect().is_failure
    worker.subscribe(topic_up(prefix, "+"))
    assert Client(closed_broker.anonymous_url).connect().is_failure  # CONNACK: not authorised
    assert Client(f"mqtt://{A}:wrong-password@127.0.0.1:{closed_broker.port}").connect().is_failure
    connack = _raw_connect_and_publish(closed_broker.port, topic_up(prefix, A), b"anonymous")
    assert connack == b"" or (connack[:2] == b"\x20\x02" and connack[3] != 0)  # refused (5: not authorised), or reset
    meter = Client(closed_broker.meter_url(A))
    assert not meter.connect().is_failure
    meter.publish(topic_up(prefix, A), b"sentinel")
    assert worker.wait_for(b"sentinel") == [(topic_up(prefix, A), b"sentinel")]
    for c in (worker, meter):
        c.close()


def test_meter_a_can_neither_publish_as_meter_b_nor_command_b_nor_read_b(closed_broker):
    prefix = closed_broker.prefix
    worker = Client(closed_broker.worker_url)
    worker.connect()
    worker.subscribe(topic_up(prefix, "+"))
    a, b = Client(closed_broker.meter_url(A)), Client(closed_broker.meter_url(B))
    a.connect()
    a.subscribe(topic_down(prefix, A), topic_down(prefix, B))  # B's is refused (SUBACK 0x80)
    b.connect()
    b.subscribe(topic_down(prefix, B))
    a.publish(topic_up(prefix, B), b"forged report as B")
    a.publish(topic_down(prefix, B), b"forged command to B")
    a.publish(topic_up(prefix, A), b"sentinel from A")
    assert worker.wait_for(b"sentinel from A") == [(topic_up(prefix, A), b"sentinel from A")]
    worker.publish(topic_down(prefix, B), b"for B only")  # sent after A's forgeries were handled
    worker.publish(topic_down(prefix, A), b"sentinel for A")
    assert b.wait_for(b"for B only") == [(topic_down(prefix, B), b"for B only")]
    assert a.wait_for(b"sentinel for A") == [(topic_down(prefix, A), b"sentinel for A")]
    for c in (worker, a, b):
        c.close()


def test_the_simulators_fleet_speaks_for_every_meter_but_cannot_send_commands(closed_broker):
    prefix = closed_broker.prefix
    worker = Client(closed_broker.worker_url)
    worker.connect()
    worker.subscribe(topic_up(prefix, "+"))
    a = Client(closed_broker.meter_url(A))
    a.connect()
    a.subscribe(topic_down(prefix, A))
    fleet = Client(closed_broker.fleet_url)
    fleet.connect()
    fleet.subscribe(topic_down(prefix, "+"))
    fleet.publish(topic_down(prefix, A), b"forged command")
    fleet.publish(topic_up(prefix, A), b"report A")
    fleet.publish(topic_up(prefix, B), b"report B")
    assert worker.wait_for(b"report B") == [(topic_up(prefix, A), b"report A"), (topic_up(prefix, B), b"report B")]
    worker.publish(topic_down(prefix, A), b"command A")
    worker.publish(topic_down(prefix, B), b"command B")
    assert a.wait_for(b"command A") == [(topic_down(prefix, A), b"command A")]
    assert fleet.wait_for(b"command B") == [(topic_down(prefix, A), b"command A"), (topic_down(prefix, B), b"command B")]
    for c in (worker, a, fleet):
        c.close()


def test_a_payment_reaches_a_meter_on_the_closed_broker_with_its_own_credentials(closed_broker, postgres_only_url, clock):
    system = bootstrap(Settings(database_url=postgres_only_url, mqtt_url=closed_broker.worker_url, mqtt_topic_prefix=closed_broker.prefix), clock=clock)
    set_up(system)
    rig = Rig(system, transport(closed_broker.worker_url, closed_broker.prefix), meter=SimulatedMeter(IOT_SERIAL))
    meter = MqttMeter(rig.meter, closed_broker.meter_url(IOT_SERIAL), prefix=closed_broker.prefix)
    meter.start()
    try:
        paid = rig.pay(10_000)
        meter.wake(clock.now())
        deadline = time.monotonic() + 15
        while rig.orders(paid.payment_id)[0].state != CommandState.APPLIED:
            assert time.monotonic() < deadline, "purchase not applied over the closed broker"
            rig.worker.run_once(wait_s=0.05)
        assert rig.meter.applied == [(1, 33_444)] and check_ledger(system.new_uow()).ok
    finally:
        meter.stop()
        rig.transport.stop()
        system.engine.dispose()


def test_the_simulated_city_runs_on_the_closed_broker_through_its_fleet_gateway(closed_broker, postgres_only_url):
    start = simulation_start()
    system = bootstrap(Settings(database_url=postgres_only_url, watchdog_interval_s=10**9), clock=FixedClock(start))
    sim = Simulation(
        system, build_city(40, seed=5), faults=FaultRates.preset("default"), start=start,
        mqtt_url=closed_broker.worker_url, fleet_mqtt_url=closed_broker.fleet_url, mqtt_topic_prefix=closed_broker.prefix,
    )  # fmt: skip
    try:
        outcome = sim.run(3)
    finally:
        sim.close()
    report = summarise(sim, outcome, hotline="12319")
    system.engine.dispose()
    assert report.money.holds and report.truth_violations == []
    assert sum(len(meter.applied) for meter in sim.fleet.meters.values()) > 0  # IoT purchases went over the closed broker


# ---- shared uplinks -------------------------------------------------------------------------------


def test_two_workers_share_the_uplinks_each_heard_by_exactly_one(closed_broker):
    first = transport(closed_broker.worker_url, closed_broker.prefix)
    second = transport(closed_broker.worker_url, closed_broker.prefix)
    fleet = Client(closed_broker.fleet_url)
    fleet.connect()
    sent = [f"uplink {i}".encode() for i in range(200)]
    for i, payload in enumerate(sent):
        fleet.publish(topic_up(closed_broker.prefix, METERS[i % 2]), payload)
    heard_first: list[bytes] = []
    heard_second: list[bytes] = []
    deadline = time.monotonic() + 10
    while len(heard_first) + len(heard_second) < len(sent) and time.monotonic() < deadline:
        drain(first, heard_first)
        drain(second, heard_second)
        time.sleep(0.01)
    drain(first, heard_first)
    drain(second, heard_second)
    assert sorted(heard_first + heard_second) == sorted(sent)  # every uplink once, none twice
    assert heard_first and heard_second, "the broker did not share the uplinks"
    fleet.close()
    first.stop()
    second.stop()


def test_a_meter_joining_a_share_group_takes_no_uplink_from_the_workers(closed_broker):
    """Found from outside: a meter that subscribed to the workers' share group by its well-known
    name took its turn of every uplink (and the broker then dropped it at the read check). The
    workers' group is named from their password, which no meter knows."""
    worker = transport(closed_broker.worker_url, closed_broker.prefix)
    assert "/gasworks/" not in worker.subscription.split(closed_broker.prefix)[0], "the group is not the well-known name"
    spies = [Client(closed_broker.meter_url(B)) for _ in range(3)]
    for spy in spies:
        spy.connect()
        spy.subscribe(f"$share/gasworks/{closed_broker.prefix}/+/up", f"$share/gasworks/{closed_broker.prefix}/{A}/up")
    meter = Client(closed_broker.meter_url(A))
    meter.connect()
    sent = [f"report {i}".encode() for i in range(40)]
    for payload in sent:
        meter.publish(topic_up(closed_broker.prefix, A), payload)
    heard: list[bytes] = []
    deadline = time.monotonic() + 10
    while len(heard) < len(sent) and time.monotonic() < deadline:
        drain(worker, heard)
        time.sleep(0.01)
    assert heard == sent, f"the worker heard {len(heard)} of {len(sent)}"
    for client in (*spies, meter):
        client.close()
    worker.stop()


def _start_worker_process(closed_broker: ClosedBroker, database_url: str, **env: str) -> tuple[subprocess.Popen, int]:
    metrics_port = free_port()
    process = subprocess.Popen(
        [GASWORKS, "worker"],
        env={
            **os.environ,
            "GASWORKS_DATABASE_URL": database_url,
            "GASWORKS_MQTT_URL": closed_broker.worker_url,
            "GASWORKS_MQTT_TOPIC_PREFIX": closed_broker.prefix,
            "GASWORKS_WORKER_METRICS_PORT": str(metrics_port),
            **env,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, metrics_port


def _metric(port: int, name: str) -> float | None:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    values = [float(line.split()[-1]) for line in body.splitlines() if line.startswith(name + " ") or line.startswith(name + "{")]
    return sum(values) if values else None


def _reports(meter: SimulatedMeter, start, n: int) -> list[bytes]:  # noqa: ANN001
    return [meter.report(start + timedelta(seconds=i)) for i in range(n)]


def _until_the_process_hears_its_share(process: subprocess.Popen, metrics_port: int, survivor: MqttTransport, fleet: Client, frames: list[bytes], prefix: str) -> list[bytes]:
    """Publish reports until the worker process's /metrics shows it received some: it is in the share."""
    heard: list[bytes] = []
    deadline = time.monotonic() + 30
    for frame in frames:
        fleet.publish(topic_up(prefix, IOT_SERIAL), frame)
        if (_metric(metrics_port, "gasworks_mqtt_uplinks_received_total") or 0) > 0:
            break
        assert process.poll() is None, "worker process died"
        assert time.monotonic() < deadline, "worker process never got a share of the uplinks"
        time.sleep(0.1)
    else:
        raise AssertionError("worker process never got a share of the uplinks")
    drain(survivor, heard)
    return heard


def test_a_worker_process_killed_holds_no_uplink_its_survivor_hears_all_at_once(closed_broker, postgres_only_url, clock):
    system = bootstrap(Settings(database_url=postgres_only_url), clock=clock)
    set_up(system)
    system.engine.dispose()
    process, metrics_port = _start_worker_process(closed_broker, postgres_only_url)
    survivor = transport(closed_broker.worker_url, closed_broker.prefix)
    fleet = Client(closed_broker.fleet_url)
    fleet.connect()
    meter = SimulatedMeter(IOT_SERIAL)
    try:
        _until_the_process_hears_its_share(process, metrics_port, survivor, fleet, _reports(meter, clock.now(), 200), closed_broker.prefix)
        assert _metric(metrics_port, "gasworks_mqtt_connected") == 1.0
        deadline = time.monotonic() + 10
        while (_metric(metrics_port, "gasworks_watchdog_runs_total") or 0) < 1:  # the worker's own /metrics
            assert time.monotonic() < deadline, "the worker's watchdog never ran"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        killed_at = time.monotonic()
        after = [f"after kill {i}".encode() for i in range(100)]
        for payload in after:
            fleet.publish(topic_up(closed_broker.prefix, IOT_SERIAL), payload)
        heard: list[bytes] = []
        while len(heard) < len(after) and time.monotonic() - killed_at < UPLINK_FAILOVER_S_MAX:
            drain(survivor, heard)
            heard = [p for p in heard if p.startswith(b"after kill")]  # reports from before the kill aside
            time.sleep(0.01)
        assert sorted(heard) == sorted(after), f"{len(after) - len(heard)} uplinks waited more than {UPLINK_FAILOVER_S_MAX} s for a dead worker"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        fleet.close()
        survivor.stop()


def test_a_silent_worker_is_dropped_from_the_share_by_the_brokers_keepalive_check(closed_broker, postgres_only_url, clock):
    """A worker frozen with its socket open (SIGSTOP; a dead host looks the same) holds its share only
    until the broker's keepalive check drops it (MQTT: 1.5 x mqtt_keepalive_s after its last packet;
    Mosquitto 2.0.11 was seen to take 2.5 to 8 s at a keepalive of 1-2 s). From then on the survivor
    hears every uplink; those the frozen one swallowed are said again by the meter's next report."""
    keepalive_s = 1
    system = bootstrap(Settings(database_url=postgres_only_url), clock=clock)
    set_up(system)
    system.engine.dispose()
    process, metrics_port = _start_worker_process(closed_broker, postgres_only_url, GASWORKS_MQTT_KEEPALIVE_S=str(keepalive_s))
    survivor = transport(closed_broker.worker_url, closed_broker.prefix)
    fleet = Client(closed_broker.fleet_url)
    fleet.connect()
    try:
        _until_the_process_hears_its_share(process, metrics_port, survivor, fleet, _reports(SimulatedMeter(IOT_SERIAL), clock.now(), 200), closed_broker.prefix)
        process.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        in_a_row = 0  # uplinks in a row heard by the survivor: once the frozen worker is out of the share
        heard: list[bytes] = []
        while in_a_row < SILENT_WORKER_TAKEOVER_IN_A_ROW:
            assert time.monotonic() - frozen_at < SILENT_WORKER_DROP_S_MAX, f"a frozen worker still held its share after {SILENT_WORKER_DROP_S_MAX} s"
            payload = f"while frozen {time.monotonic()}".encode()
            fleet.publish(topic_up(closed_broker.prefix, IOT_SERIAL), payload)
            deadline = time.monotonic() + 0.2
            while payload not in heard and time.monotonic() < deadline:
                drain(survivor, heard)
                time.sleep(0.005)
            in_a_row = in_a_row + 1 if payload in heard else 0
        assert len(heard) == len(set(heard))
    finally:
        process.kill()
        process.wait(10)
        fleet.close()
        survivor.stop()


# ---- reconnects -----------------------------------------------------------------------------------


def test_backoff_doubles_from_its_minimum_up_to_its_cap_with_jitter():
    import random

    backoff = Backoff(delay_s_min=0.5, delay_s_max=30.0)
    rng = random.Random(7)
    for attempt in range(40):
        cap = min(30.0, 0.5 * 2**attempt)
        delays = [backoff.delay_s(attempt, rng) for _ in range(50)]
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len(set(delays)) > 1  # jitter: workers do not knock in step
    with pytest.raises(ValueError):
        Backoff(delay_s_min=0, delay_s_max=1)


class RecordingLog:
    def __init__(self) -> None:
        self.events: list[str] = []

    def __getattr__(self, level: str):  # noqa: ANN204
        return lambda event, **fields: self.events.append(event)


def test_an_unreachable_broker_is_retried_with_backoff_logged_once_and_counted(monkeypatch):
    recorded = RecordingLog()
    monkeypatch.setattr(transport_module, "log", recorded)
    failed_before = mqtt_connection_attempts.labels("failed")._value.get()
    t = MqttTransport(f"mqtt://127.0.0.1:{free_port()}", prefix="nobody/meters", backoff=Backoff(delay_s_min=0.1, delay_s_max=0.4))
    t.start(connect_timeout_s=3.0)
    t.stop()
    attempts = mqtt_connection_attempts.labels("failed")._value.get() - failed_before
    # 3 s at 0.05-0.1, 0.1-0.2, then 0.2-0.4 s each: at least 8 attempts, at most about 3 / 0.2 + 3; never a busy loop.
    assert 8 <= attempts <= 20, attempts
    assert recorded.events.count("mqtt_unreachable") == 1, recorded.events


def test_a_worker_with_a_wrong_password_is_refused_logged_once_and_reconnects_once_it_is_right(closed_broker, monkeypatch):
    recorded = RecordingLog()
    monkeypatch.setattr(transport_module, "log", recorded)
    wrong = closed_broker.worker_url.replace("worker:", "worker:x")
    t = MqttTransport(wrong, prefix=closed_broker.prefix, backoff=Backoff(delay_s_min=0.05, delay_s_max=0.2))
    t.start(connect_timeout_s=1.5)
    assert not t.connected
    t.stop()
    assert recorded.events.count("mqtt_refused") == 1, recorded.events
    right = transport(closed_broker.worker_url, closed_broker.prefix, backoff=Backoff(delay_s_min=0.05, delay_s_max=0.2))
    closed_broker.stop()
    closed_broker.start()
    deadline = time.monotonic() + 10
    while not right.subscribed:
        assert time.monotonic() < deadline, "did not come back after the broker restarted"
        time.sleep(0.05)
    right.stop()
    assert recorded.events.count("mqtt_lost") == 1 and recorded.events.count("mqtt_connected") == 2, recorded.events


def test_during_an_outage_the_worker_neither_retries_each_pass_nor_floods_the_log(closed_broker, postgres_only_url, clock, monkeypatch):
    import gasworks.entrypoints.workers.worker as worker_module

    recorded = RecordingLog()
    monkeypatch.setattr(transport_module, "log", recorded)
    monkeypatch.setattr(worker_module, "log", recorded)
    system = bootstrap(Settings(database_url=postgres_only_url), clock=clock)
    set_up(system)
    backoff = Backoff(delay_s_min=0.05, delay_s_max=0.4)
    rig = Rig(system, transport(closed_broker.worker_url, closed_broker.prefix, backoff=backoff), meter=SimulatedMeter(IOT_SERIAL))
    meter = MqttMeter(rig.meter, closed_broker.meter_url(IOT_SERIAL), prefix=closed_broker.prefix)
    meter.start()
    try:
        meter.wake(clock.now())
        deadline = time.monotonic() + 10
        while not _reported(rig):
            assert time.monotonic() < deadline
            rig.worker.run_once(wait_s=0.05)
        closed_broker.stop()
        while rig.transport.connected:
            assert time.monotonic() < deadline + 10, "the worker did not notice the broker going away"
            time.sleep(0.02)
        paid = rig.pay(10_000)  # due for an awake meter, with no broker to send it through
        for _ in range(40):
            rig.worker.run_once(wait_s=0.05)
        assert recorded.events.count("meter_send_failed") <= 1 and recorded.events.count("mqtt_lost") == 1, recorded.events
        assert recorded.events.count("mqtt_unreachable") == 1, recorded.events  # one line for the whole outage
        assert rig.orders(paid.payment_id)[0].state == CommandState.PENDING
        closed_broker.start()
        deadline = time.monotonic() + 20
        while not (rig.transport.subscribed and meter.listening):
            assert time.monotonic() < deadline, "clients did not reconnect"
            time.sleep(0.05)
        rig.advance(seconds=1)  # still inside the meter's window
        while rig.orders(paid.payment_id)[0].state != CommandState.APPLIED:
            assert time.monotonic() < deadline, "not delivered after the broker came back"
            rig.worker.run_once(wait_s=0.05)
        assert rig.meter.applied == [(1, 33_444)]
    finally:
        meter.stop()
        rig.transport.stop()
        system.engine.dispose()


def _reported(rig: Rig) -> bool:
    with rig.system.new_uow() as uow:
        return uow.meters.get(rig.meter.serial).last_report_at is not None


def test_the_worker_command_refuses_bad_options_with_exit_2(tmp_path):
    url = f"sqlite:///{tmp_path / 'g.db'}"
    bad = CliRunner().invoke(app, ["worker", "--database-url", url, "--mqtt-url", "mqtt://127.0.0.1:1", "--metrics-port", "70000"])
    assert bad.exit_code == 2 and "INVALID_WORKER_OPTION" in bad.output
    never = CliRunner().invoke(app, ["worker", "--database-url", url, "--mqtt-url", "mqtt://127.0.0.1:1", "--watchdog-interval-s", "0"])
    assert never.exit_code == 2 and "INVALID_WORKER_OPTION" in never.output
    bad_url = CliRunner().invoke(app, ["worker", "--database-url", url, "--mqtt-url", "http://broker", "--metrics-port", "0"])
    assert bad_url.exit_code == 2 and "INVALID_MQTT_SETTING" in bad_url.output
    bad_delays = CliRunner().invoke(app, ["worker", "--database-url", url, "--mqtt-url", "mqtt://127.0.0.1:1", "--metrics-port", "0"], env={"GASWORKS_MQTT_RECONNECT_DELAY_S_MIN": "60"})
    assert bad_delays.exit_code == 2 and "INVALID_MQTT_SETTING" in bad_delays.output


# ---- the provisioning command ----------------------------------------------------------------------


def test_provision_admits_the_databases_iot_meters_and_reissues_the_same_passwords(tmp_path):
    url = f"sqlite:///{tmp_path / 'g.db'}"
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade", "--database-url", url]).exit_code == 0
    for account, serial, kind in (("4301000001", "00000000000011", "iot"), ("4301000002", "00000000000012", "card")):
        opened = runner.invoke(app, ["accounts", "add", account, "--name", "张三", "--phone", "13812345678", "--meter-serial", serial, "--meter-kind", kind, "--database-url", url])
        assert opened.exit_code == 0, opened.output
    directory = tmp_path / "broker"
    first = runner.invoke(app, ["broker", "provision", "--out", str(directory), "--port", "18883", "--database-url", url])
    assert first.exit_code == 0, first.output
    users = {line.split(":", 1)[0]: line.split(":", 1)[1] for line in (directory / "passwd").read_text().splitlines()}
    assert set(users) == {"worker", "fleet", "00000000000011"}  # the card meter never talks MQTT
    secret = read_site_secret(directory / "site-secret")
    assert all(verify_mosquitto_hash(password_for(secret, user), hashed) for user, hashed in users.items())
    assert password_for(secret, "worker") in first.output and password_for(secret, "00000000000011") not in (directory / "passwd").read_text()
    assert (directory / "site-secret").stat().st_mode & 0o077 == 0
    conf = (directory / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "listener 18883" in conf
    assert "pattern write gasworks/meters/%u/up" in (directory / "acl").read_text()
    again = runner.invoke(app, ["broker", "provision", "--out", str(directory), "--port", "18883", "--database-url", url])
    assert password_for(secret, "worker") in again.output  # same site secret, same passwords
    shown = runner.invoke(app, ["broker", "meter-credentials", "00000000000099", "--out", str(directory)])
    assert shown.exit_code == 0 and f"password: {password_for(secret, '00000000000099')}" in shown.output
    assert "00000000000099:$7$101$" in (directory / "passwd").read_text()


def test_provision_refuses_bad_input_with_a_code_and_exit_2(tmp_path):
    runner = CliRunner()
    bad_prefix = runner.invoke(app, ["broker", "provision", "--out", str(tmp_path / "b"), "--prefix", "gas/+/x", "--no-from-database"])
    assert bad_prefix.exit_code == 2 and "INVALID_TOPIC_PREFIX" in bad_prefix.output
    bad_serial = runner.invoke(app, ["broker", "provision", "--out", str(tmp_path / "b"), "--meter", "worker", "--no-from-database"])
    assert bad_serial.exit_code == 2 and "INVALID_METER_SERIAL" in bad_serial.output
    no_secret = runner.invoke(app, ["broker", "meter-credentials", "00000000000001", "--out", str(tmp_path / "nowhere")])
    assert no_secret.exit_code == 2 and "NO_SITE_SECRET" in no_secret.output
    not_migrated = runner.invoke(app, ["broker", "provision", "--out", str(tmp_path / "c"), "--database-url", f"sqlite:///{tmp_path / 'empty.db'}"])
    assert not_migrated.exit_code == 2 and "DATABASE_NOT_MIGRATED" in not_migrated.output
    for result in (bad_prefix, bad_serial, no_secret, not_migrated):
        assert "Traceback" not in result.output


def test_mosquitto_hash_is_the_format_mosquitto_passwd_writes():
    hashed = mosquitto_hash("secret", salt=b"0123456789ab", iterations=101)
    assert hashed.startswith("$7$101$MDEyMzQ1Njc4OWFi$") and verify_mosquitto_hash("secret", hashed)
    assert not verify_mosquitto_hash("Secret", hashed)
