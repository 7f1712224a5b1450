"""Delivery faults through a real Mosquitto and PostgreSQL: a late, stale report and a busy meter."""

from gasworks.adapters.meters.transport import topic_up
from gasworks.domain.delivery import AlertKind, CommandState
from gasworks.services.checks import check_ledger
from tests.delivery_rig import Rig
from tests.test_delivery_mqtt import mqtt_rig, state_of, until  # noqa: F401 - the fixture is used by name


def _publish_raw(rig: Rig, frame: bytes) -> None:
    """A frame on the meter's up topic as a broker would hand over a queued one, late."""
    rig.mqtt_meter._client.publish(topic_up(rig.mqtt_meter.prefix, rig.meter.serial), frame, qos=1).wait_for_publish(5)


def _rejections(rig: Rig) -> list[str]:
    with rig.system.new_uow() as uow:
        return [r["code"] for r in uow.rejections.list(limit=100, channel_id="meters")]


def test_a_stale_report_delivered_late_over_mqtt_changes_nothing_and_raises_no_reset_alert(mqtt_rig):
    rig = mqtt_rig()
    old_report = rig.meter.report(rig.system.clock.now())  # taken by a worker that died with it queued
    rig.meter.sleep()
    rig.advance(minutes=5)
    paid = rig.pay(10_000)
    rig.mqtt_meter.wake(rig.system.clock.now())
    until(rig.worker, lambda: state_of(rig, paid.payment_id) == CommandState.APPLIED)
    with rig.system.new_uow() as uow:
        before = uow.meters.get(rig.meter.serial)
    rig.advance(seconds=5)
    _publish_raw(rig, old_report)
    until(rig.worker, lambda: "STALE_REPORT" in _rejections(rig))
    with rig.system.new_uow() as uow:
        after = uow.meters.get(rig.meter.serial)
        kinds = {a.kind for a in uow.alerts.list(limit=100)}
    assert (after.applied_seq, after.credit_litres, after.awake_until, after.last_report_clock) == (1, 33_444, before.awake_until, before.last_report_clock)
    assert AlertKind.METER_SEQUENCE_BACKWARDS not in kinds
    assert check_ledger(rig.system.new_uow()).ok


def test_a_busy_meter_over_mqtt_gets_the_purchase_again_in_the_wake_and_applies_it_once(mqtt_rig):
    rig = mqtt_rig()
    rig.meter.busy_replies = 1
    paid = rig.pay(10_000)
    rig.mqtt_meter.wake(rig.system.clock.now())
    until(rig.worker, lambda: "busy" in rig.orders(paid.payment_id)[0].note)
    assert state_of(rig, paid.payment_id) == CommandState.SENT and rig.meter.applied == []
    rig.advance(seconds=rig.system.settings.meter_ack_wait_s)
    until(rig.worker, lambda: state_of(rig, paid.payment_id) == CommandState.APPLIED)
    assert rig.meter.applied == [(1, 33_444)] and len(rig.meter.frames_seen) == 2
    assert check_ledger(rig.system.new_uow()).ok


def test_a_report_over_mqtt_claiming_an_unissued_purchase_settles_nothing(mqtt_rig):
    rig = mqtt_rig()
    paid = rig.pay(10_000)
    rig.meter.applied_seq = 6
    rig.mqtt_meter.wake(rig.system.clock.now())
    until(rig.worker, lambda: "SERIAL_NOT_ISSUED" in _rejections(rig))
    assert state_of(rig, paid.payment_id) == CommandState.PENDING
    report = check_ledger(rig.system.new_uow())
    assert [(f.code, f.subject) for f in report.findings] == [("METER_CLAIMS_UNISSUED", f"meter:{rig.meter.serial}")]
