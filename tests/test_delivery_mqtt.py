"""Meter delivery end to end on real PostgreSQL and a real Mosquitto broker.

Most tests use the machine's broker (GASWORKS_TEST_MQTT_URL, default mqtt://127.0.0.1:1883) with a
topic prefix of their own. The restart test starts a private Mosquitto (with persistence) so it can
stop and start it without disturbing anything else.
"""

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gasworks.adapters.meters.transport import MqttTransport
from gasworks.bootstrap import bootstrap
from gasworks.config import Settings
from gasworks.domain.delivery import CommandState
from gasworks.entrypoints.workers.worker import Worker
from gasworks.services.checks import check_ledger
from gasworks.sim.meter import MqttMeter, SimulatedMeter
from tests.conftest import reachable, service_missing
from tests.delivery_rig import IOT_SERIAL, Rig
from tests.support import set_up


class PrivateBroker:
    """A Mosquitto of this test's own, with persistence, that can be restarted."""

    def __init__(self, directory: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.config = directory / "mosquitto.conf"
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {directory}/\n")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(["mosquitto", "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not reachable("127.0.0.1", self.port):
            if time.monotonic() > deadline:
                raise TimeoutError("private mosquitto did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    if shutil.which("mosquitto") is None:
        service_missing("mosquitto binary not found (apt-get install mosquitto)")
    broker = PrivateBroker(tmp_path)
    broker.start()
    yield broker
    broker.stop()


def until(worker: Worker, condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        worker.run_once(wait_s=0.05)


@pytest.fixture
def mqtt_rig(postgres_only_url, clock, broker_url) -> Iterator[Callable[..., Rig]]:
    """Builds rigs whose worker and meter talk through a broker, each test on its own topics."""
    made: list[tuple[Rig, MqttMeter]] = []
    prefix = f"test-{uuid.uuid4().hex[:10]}/meters"

    def make(url: str = broker_url) -> Rig:
        system = bootstrap(Settings(database_url=postgres_only_url, mqtt_url=url, mqtt_topic_prefix=prefix, mqtt_client_id=f"gw-{uuid.uuid4().hex[:8]}"), clock=clock)
        if not made:
            set_up(system)
        transport = MqttTransport(url, prefix=prefix, client_id=system.settings.mqtt_client_id)
        transport.start()
        rig = Rig(system, transport, meter=made[0][1].meter if made else SimulatedMeter(IOT_SERIAL))
        meter_client = MqttMeter(rig.meter, url, prefix=prefix)
        meter_client.start()
        rig.mqtt_meter = meter_client
        made.append((rig, meter_client))
        return rig

    yield make
    for rig, meter_client in made:
        meter_client.stop()
        rig.transport.stop()
        rig.system.engine.dispose()


def state_of(rig: Rig, payment_id: str) -> CommandState:
    return rig.orders(payment_id)[0].state


def test_a_payment_reaches_a_meter_over_mqtt_and_is_applied_once(mqtt_rig):
    rig = mqtt_rig()
    rig.mqtt_meter.wake(rig.system.clock.now())
    until(rig.worker, lambda: rig.meter.awake and rig.commands() == [] and _reported(rig))
    paid = rig.pay(10_000)
    until(rig.worker, lambda: state_of(rig, paid.payment_id) == CommandState.APPLIED)
    assert rig.meter.applied == [(1, 33_444)]
    assert check_ledger(rig.system.new_uow()).ok


def _reported(rig: Rig) -> bool:
    with rig.system.new_uow() as uow:
        return uow.meters.get(rig.meter.serial).last_report_at is not None


def test_a_lost_ack_over_mqtt_is_retried_and_applied_once(mqtt_rig):
    rig = mqtt_rig()
    rig.meter.acks_to_lose = 1
    paid = rig.pay(10_000)
    rig.mqtt_meter.wake(rig.system.clock.now())
    until(rig.worker, lambda: state_of(rig, paid.payment_id) == CommandState.SENT and len(rig.meter.frames_seen) == 1)
    rig.advance(seconds=rig.system.settings.meter_ack_wait_s)
    until(rig.worker, lambda: state_of(rig, paid.payment_id) == CommandState.APPLIED)
    assert len(rig.meter.frames_seen) == 2 and rig.meter.applied == [(1, 33_444)]


def test_a_meter_asleep_for_a_day_gets_its_purchase_when_it_wakes(mqtt_rig):
    rig = mqtt_rig()
    paid = rig.pay(5_000)
    for _ in range(10):
        rig.worker.run_once(wait_s=0.05)
    rig.advance(hours=24)
    for _ in range(10):
        rig.worker.run_once(wait_s=0.05)
    assert rig.meter.frames_seen == [] and state_of(rig, paid.payment_id) == CommandState.PENDING
    rig.mqtt_meter.wake(rig.system.clock.now())
    until(rig.worker, lambda: state_of(rig, paid.payment_id) == CommandState.APPLIED)
    assert len(rig.meter.applied) == 1


def test_a_worker_killed_between_send_and_ack_loses_nothing(mqtt_rig):
    first = mqtt_rig()
    first.mqtt_meter.wake(first.system.clock.now())
    until(first.worker, lambda: _reported(first))
    paid = first.pay(10_000)
    until(first.worker, lambda: len(first.meter.frames_seen) == 1)
    time.sleep(0.3)  # the meter's ack reaches the dying worker's queue and dies with it
    first.transport.stop()
    assert state_of(first, paid.payment_id) == CommandState.SENT
    first.meter.sleep()
    first.advance(hours=22)
    second = mqtt_rig()  # a new worker process, with its own connection
    second.mqtt_meter.wake(second.system.clock.now())
    until(second.worker, lambda: state_of(second, paid.payment_id) == CommandState.APPLIED)
    assert second.meter.applied == [(1, 33_444)]
    assert check_ledger(second.system.new_uow()).ok


def test_a_broker_restart_delays_delivery_but_loses_nothing(mqtt_rig, private_broker):
    rig = mqtt_rig(private_broker.url)
    rig.mqtt_meter.wake(rig.system.clock.now())
    until(rig.worker, lambda: _reported(rig))
    private_broker.stop()
    deadline = time.monotonic() + 10
    while rig.transport.connected or rig.mqtt_meter.listening:
        assert time.monotonic() < deadline, "clients did not notice the broker going away"
        time.sleep(0.05)
    paid = rig.pay(10_000)
    for _ in range(10):  # the broker is down: sending fails, the purchase stays pending
        rig.worker.run_once(wait_s=0.05)
    assert state_of(rig, paid.payment_id) == CommandState.PENDING
    private_broker.start()
    deadline = time.monotonic() + 20
    while not (rig.transport.connected and rig.mqtt_meter.listening):
        assert time.monotonic() < deadline, "clients did not reconnect"
        time.sleep(0.1)
    rig.advance(seconds=1)  # still inside the meter's window
    until(rig.worker, lambda: state_of(rig, paid.payment_id) == CommandState.APPLIED, timeout_s=20)
    assert rig.meter.applied == [(1, 33_444)]
    assert check_ledger(rig.system.new_uow()).ok


def test_a_spoofed_write_purchase_over_the_broker_credits_nothing_and_a_forged_report_is_refused(mqtt_rig, broker_url):
    """An anonymous client on the real broker publishes as gasworks and as the meter: nothing moves."""
    import os

    from gasworks.adapters.meters import cjt188
    from gasworks.adapters.meters.frame_security import compute_mac
    from gasworks.adapters.meters.transport import mqtt_client, topic_down, topic_up
    from gasworks.domain.meter_messages import PurchaseAck, WritePurchase
    from gasworks.domain.meter_security import MacScheme

    rig = mqtt_rig()
    rig.mqtt_meter.wake(rig.system.clock.now())
    until(rig.worker, lambda: _reported(rig))
    prefix = rig.system.settings.mqtt_topic_prefix
    fake_key = os.urandom(16)

    def forge(message) -> bytes:
        return cjt188.encode_sealed(message, key_version=1, counter=50_000, mac=lambda signed: compute_mac(MacScheme.SM4_CMAC, fake_key, signed))

    attacker = mqtt_client(broker_url, f"attacker-{uuid.uuid4().hex[:8]}")
    host, port = attacker._gasworks_address
    attacker.connect(host, port)
    attacker.loop_start()
    try:
        spoof = forge(WritePurchase(IOT_SERIAL, 1, 1, 5_000_000))
        attacker.publish(topic_down(prefix, IOT_SERIAL), spoof, qos=1).wait_for_publish(5)
        attacker.publish(topic_up(prefix, IOT_SERIAL), forge(PurchaseAck(IOT_SERIAL, 1, 3, 5_000_000)), qos=1).wait_for_publish(5)
        until(rig.worker, lambda: spoof in rig.meter.frames_seen and "FRAME_MAC_INVALID" in _meter_refusals(rig))
    finally:
        attacker.loop_stop()
        attacker.disconnect()
    assert rig.meter.refused == ["FRAME_MAC_INVALID"] and rig.meter.applied == []
    with rig.system.new_uow() as uow:
        assert uow.meters.get(IOT_SERIAL).applied_seq == 0
    paid = rig.pay(10_000)  # the real thing still goes through, once
    until(rig.worker, lambda: state_of(rig, paid.payment_id) == CommandState.APPLIED)
    assert rig.meter.applied == [(1, 33_444)]
    assert check_ledger(rig.system.new_uow()).ok


def _meter_refusals(rig: Rig) -> list[str]:
    with rig.system.new_uow() as uow:
        return [r["code"] for r in uow.rejections.list(limit=20, channel_id="meters")]
