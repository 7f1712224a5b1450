"""Delivery faults through a real Mosquitto and PostgreSQL: a late, stale report and a busy meter.

Each test's meter has a serial of its own (and so an MQTT client id of its own): the machine's
broker is shared, and two clients with one id take each other's session over."""

import random
import uuid
from collections.abc import Callable, Iterator

import pytest

from gasworks.adapters.meters.transport import MqttTransport, topic_up
from gasworks.bootstrap import bootstrap
from gasworks.config import Settings
from gasworks.domain.accounts import MeterKind
from gasworks.domain.delivery import AlertKind, CommandState
from gasworks.services import accounts
from gasworks.services.checks import check_ledger
from gasworks.sim.meter import MqttMeter, SimulatedMeter
from tests.delivery_rig import Rig
from tests.support import set_up
from tests.test_delivery_mqtt import until

ACCOUNT_NO = "4301009999"


@pytest.fixture
def rig(postgres_only_url, clock, broker_url) -> Iterator[Rig]:
    prefix = f"test-{uuid.uuid4().hex[:10]}/meters"
    serial = f"77{random.randrange(10**12):012d}"
    system = bootstrap(Settings(database_url=postgres_only_url, mqtt_url=broker_url, mqtt_topic_prefix=prefix, mqtt_client_id=f"gw-{uuid.uuid4().hex[:8]}"), clock=clock)
    set_up(system)
    accounts.open_account(accounts.OpenAccount(ACCOUNT_NO, "李四", "雁峰区 2 栋 202", "华新苑", "G-01", "13812345679", serial, MeterKind.IOT), system.new_uow(), actor="test")
    transport = MqttTransport(broker_url, prefix=prefix, client_id=system.settings.mqtt_client_id)
    transport.start()
    made = Rig(system, transport, meter=SimulatedMeter(serial))
    made.mqtt_meter = MqttMeter(made.meter, broker_url, prefix=prefix)
    made.mqtt_meter.start()
    yield made
    made.mqtt_meter.stop()
    transport.stop()
    system.engine.dispose()


def _pay(rig: Rig, amount_fen: int):
    return rig.pay(amount_fen, account_no=ACCOUNT_NO)


def _state(rig: Rig, payment_id: str) -> CommandState:
    return rig.orders(payment_id)[0].state


def _publish_raw(rig: Rig, frame: bytes) -> None:
    """A frame on the meter's up topic as a broker would hand over a queued one, late."""
    rig.mqtt_meter._client.publish(topic_up(rig.mqtt_meter.prefix, rig.meter.serial), frame, qos=1).wait_for_publish(5)


def _rejections(rig: Rig) -> list[str]:
    with rig.system.new_uow() as uow:
        return [r["code"] for r in uow.rejections.list(limit=100, channel_id="meters")]


def _until(rig: Rig, condition: Callable[[], bool]) -> None:
    until(rig.worker, condition)


def test_a_stale_report_delivered_late_over_mqtt_changes_nothing_and_raises_no_reset_alert(rig):
    old_report = rig.meter.report(rig.system.clock.now())  # taken by a worker that died with it queued
    rig.meter.sleep()
    rig.advance(minutes=5)
    paid = _pay(rig, 10_000)
    rig.mqtt_meter.wake(rig.system.clock.now())
    _until(rig, lambda: _state(rig, paid.payment_id) == CommandState.APPLIED)
    with rig.system.new_uow() as uow:
        before = uow.meters.get(rig.meter.serial)
    rig.advance(seconds=5)
    _publish_raw(rig, old_report)
    # Sealed before the newest report, its frame counter is below the last one taken: refused as a
    # replay before its clock is read (a frame counter is the first key of report order).
    _until(rig, lambda: bool({"STALE_REPORT", "FRAME_REPLAYED"} & set(_rejections(rig))))
    with rig.system.new_uow() as uow:
        after = uow.meters.get(rig.meter.serial)
        kinds = {a.kind for a in uow.alerts.list(limit=100)}
    assert (after.applied_seq, after.credit_litres, after.awake_until, after.last_report_clock) == (1, 33_444, before.awake_until, before.last_report_clock)
    assert AlertKind.METER_SEQUENCE_BACKWARDS not in kinds
    assert check_ledger(rig.system.new_uow()).ok


def test_a_busy_meter_over_mqtt_gets_the_purchase_again_in_the_wake_and_applies_it_once(rig):
    rig.meter.busy_replies = 1
    paid = _pay(rig, 10_000)
    rig.mqtt_meter.wake(rig.system.clock.now())
    _until(rig, lambda: "busy" in rig.orders(paid.payment_id)[0].note)
    assert _state(rig, paid.payment_id) == CommandState.SENT and rig.meter.applied == []
    rig.advance(seconds=rig.system.settings.meter_ack_wait_s)
    _until(rig, lambda: _state(rig, paid.payment_id) == CommandState.APPLIED)
    assert rig.meter.applied == [(1, 33_444)] and len(rig.meter.frames_seen) == 2
    assert check_ledger(rig.system.new_uow()).ok


def test_a_report_over_mqtt_claiming_an_unissued_purchase_settles_nothing(rig):
    paid = _pay(rig, 10_000)
    rig.meter.applied_seq = 6
    rig.mqtt_meter.wake(rig.system.clock.now())
    _until(rig, lambda: "SERIAL_NOT_ISSUED" in _rejections(rig))
    assert _state(rig, paid.payment_id) == CommandState.PENDING
    report = check_ledger(rig.system.new_uow())
    assert [(f.code, f.subject) for f in report.findings] == [("METER_CLAIMS_UNISSUED", f"meter:{rig.meter.serial}")]
