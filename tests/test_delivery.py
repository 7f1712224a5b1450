"""Meter delivery over the in-process transport, on SQLite and PostgreSQL: every purchase is applied once."""

from collections.abc import Iterator

import pytest

from gasworks.adapters.meters.transport import LoopbackTransport
from gasworks.domain.delivery import CommandKind, CommandState, MeterModel
from gasworks.domain.meter_messages import Alarm
from gasworks.services.checks import check_ledger
from gasworks.services.delivery import add_meter_model, set_meter
from tests.conftest import make_system, sqlite_copy
from tests.delivery_rig import IOT_SERIAL, Rig
from tests.fakes import FakeSystem
from tests.support import ACCOUNT_NO, balance_fen, handle_frame, set_up


@pytest.fixture(params=["fake", "sqlite", "postgres"])
def rig(request: pytest.FixtureRequest, tmp_path, clock) -> Iterator[Rig]:
    """The delivery use cases on the in-memory fakes (tests/fakes.py) and on both databases: the same assertions."""
    if request.param == "fake":
        system = FakeSystem(clock)
    else:
        system = make_system(sqlite_copy(request, tmp_path) if request.param == "sqlite" else request.getfixturevalue("postgres_only_url"), clock)
    set_up(system)
    yield Rig(system, LoopbackTransport())
    engine = getattr(system, "engine", None)
    if engine is not None:
        engine.dispose()


def test_a_payment_reaches_an_awake_meter_and_is_applied_once(rig):
    rig.wake()
    rig.settle()
    accepted = rig.pay(10_000)
    [order] = rig.orders(accepted.payment_id)
    assert (order.purchase_seq, order.volume_litres, order.state) == (1, 33_444, CommandState.PENDING)
    rig.settle()
    [order] = rig.orders(accepted.payment_id)
    assert order.state == CommandState.APPLIED
    assert [e.state for e in order.events] == [CommandState.PENDING, CommandState.SENT, CommandState.DELIVERED, CommandState.APPLIED]
    assert rig.meter.applied == [(1, 33_444)]
    assert rig.meter.credit_litres == 33_444
    assert balance_fen(rig.system, ACCOUNT_NO) == 10_000 - order.cost_fen
    assert check_ledger(rig.system.new_uow()).ok


def test_a_sleeping_meter_gets_nothing_until_it_reports_even_a_day_later(rig):
    accepted = rig.pay(5_000)
    rig.settle()
    assert rig.meter.frames_seen == []
    rig.advance(hours=24)
    rig.settle()
    assert rig.orders(accepted.payment_id)[0].state == CommandState.PENDING
    rig.wake()
    rig.settle()
    assert rig.orders(accepted.payment_id)[0].state == CommandState.APPLIED
    assert len(rig.meter.applied) == 1


def test_a_lost_acknowledgement_is_retried_and_the_meter_applies_the_purchase_only_once(rig):
    rig.wake()
    rig.settle()
    rig.meter.acks_to_lose = 1
    accepted = rig.pay(10_000)
    rig.settle()
    [order] = rig.orders(accepted.payment_id)
    assert order.state == CommandState.SENT  # no answer yet: not "failed", not "applied"
    rig.advance(seconds=rig.system.settings.meter_ack_wait_s)
    rig.settle()
    [order] = rig.orders(accepted.payment_id)
    assert order.state == CommandState.APPLIED
    assert len(rig.meter.frames_seen) == 2  # sent twice ...
    assert rig.meter.applied == [(1, 33_444)]  # ... applied once
    assert check_ledger(rig.system.new_uow()).ok


def test_when_every_ack_is_lost_the_next_report_decides(rig):
    rig.wake()
    rig.settle()
    rig.meter.acks_to_lose = 100
    accepted = rig.pay(10_000)
    for _ in range(6):  # 120 s: past the 60 s window; the ack waits are 8, 16, 32 s
        rig.settle()
        rig.advance(seconds=20)
    sends = len(rig.meter.frames_seen)
    assert sends == rig.system.settings.meter_sends_per_wake_max  # bounded, then it waits
    assert rig.orders(accepted.payment_id)[0].state == CommandState.SENT
    rig.meter.sleep()
    rig.meter.acks_to_lose = 0
    rig.advance(hours=20)
    rig.wake()
    rig.settle()
    assert rig.orders(accepted.payment_id)[0].state == CommandState.APPLIED
    assert rig.meter.applied == [(1, 33_444)]


def test_purchases_go_one_at_a_time_in_serial_order(rig):
    first, second, third = rig.pay(3_000), rig.pay(4_000), rig.pay(5_000)
    serials = [rig.orders(p.payment_id)[0].purchase_seq for p in (first, second, third)]
    assert serials == [1, 2, 3]
    rig.wake()
    rig.settle()
    assert [seq for seq, _ in rig.meter.applied] == [1, 2, 3]
    assert all(rig.orders(p.payment_id)[0].state == CommandState.APPLIED for p in (first, second, third))
    assert check_ledger(rig.system.new_uow()).ok


def test_a_worker_that_dies_after_sending_loses_nothing(rig):
    rig.wake()
    rig.settle()
    accepted = rig.pay(10_000)
    # The worker publishes, the meter applies and answers, and the worker dies before reading it.
    rig.worker.run_once()
    while rig.transport.uplinks.get(0) is not None:
        pass
    assert rig.orders(accepted.payment_id)[0].state == CommandState.SENT
    rig.meter.sleep()
    rig.advance(hours=23)
    rig.worker = type(rig.worker)(rig.system, rig.transport)  # a new worker process
    rig.wake()
    rig.settle()
    assert rig.orders(accepted.payment_id)[0].state == CommandState.APPLIED
    assert rig.meter.applied == [(1, 33_444)]
    assert check_ledger(rig.system.new_uow()).ok


def test_an_unapplied_command_expires_after_its_ttl_with_an_alert_and_the_meter_still_settles_it(rig):
    accepted = rig.pay(5_000)
    rig.advance(hours=48, seconds=1)
    rig.worker.watch()
    [order] = rig.orders(accepted.payment_id)
    assert order.state == CommandState.EXPIRED
    assert "COMMAND_EXPIRED" in rig.alerts()
    # Expired is not forgotten: money stays in delivery, and the meter's word still counts.
    rig.meter.applied_seq = 1
    rig.wake()
    rig.settle()
    assert rig.orders(accepted.payment_id)[0].state == CommandState.APPLIED
    assert "COMMAND_EXPIRED" not in rig.alerts()
    assert check_ledger(rig.system.new_uow()).ok


def test_a_meter_silent_for_more_than_25_hours_is_marked_offline_and_back_online_when_it_reports(rig):
    rig.wake()
    rig.settle()
    rig.advance(hours=25, seconds=1)
    rig.worker.watch()
    assert "METER_OFFLINE" in rig.alerts()
    rig.wake()
    rig.settle()
    assert "METER_OFFLINE" not in rig.alerts()


def test_a_purchase_not_applied_ten_minutes_after_the_meter_reported_raises_an_alert(rig):
    rig.meter.acks_to_lose = 100
    accepted = rig.pay(5_000)
    rig.wake()
    for _ in range(5):
        rig.settle()
        rig.advance(seconds=40)
    rig.advance(minutes=10)
    rig.worker.watch()
    assert "PURCHASE_NOT_APPLIED" in rig.alerts()
    assert rig.orders(accepted.payment_id)[0].state == CommandState.SENT


def test_exhausted_credit_closes_the_valve_and_a_purchase_reopens_it_after_the_credit(rig):
    rig.meter.credit_litres = -3_400
    rig.wake()
    rig.settle()
    assert rig.meter.valve_open is False
    accepted = rig.pay(10_000)
    rig.settle()
    kinds = [(c.kind, c.state) for c in rig.commands()]
    assert kinds == [
        (CommandKind.VALVE_CLOSE, CommandState.APPLIED),
        (CommandKind.CREDIT, CommandState.APPLIED),
        (CommandKind.VALVE_OPEN, CommandState.APPLIED),
    ]
    assert rig.meter.valve_open is True
    assert rig.orders(accepted.payment_id)[0].state == CommandState.APPLIED


def test_the_valve_is_never_reopened_remotely_while_the_meter_reports_a_leak(rig):
    rig.meter.valve_open = False
    rig.meter.alarms = Alarm.LEAK
    rig.wake()
    rig.settle()
    rig.pay(10_000)
    rig.settle()
    assert rig.meter.valve_open is False
    assert [c.kind for c in rig.commands()] == [CommandKind.CREDIT]
    assert "METER_LEAK" in rig.alerts()


def test_a_refused_command_fails_with_an_alert(rig):
    rig.meter.applied_seq = 0
    rig.wake()
    rig.settle()
    accepted = rig.pay(5_000)
    rig.meter.applied_seq = -5  # firmware lost count: the next serial looks like a gap to it
    rig.settle()
    [order] = rig.orders(accepted.payment_id)
    assert order.state == CommandState.FAILED
    assert "COMMAND_REFUSED" in rig.alerts()


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x68\x30garbage", "MALFORMED_FRAME"),
        (bytes.fromhex("fefe68300100000000000004840316"), "MALFORMED_FRAME"),
    ],
)
def test_a_malformed_frame_is_refused_and_recorded_and_the_worker_carries_on(rig, payload, code):
    outcome = handle_frame(IOT_SERIAL, payload, rig.system.new_uow())
    assert not outcome.accepted and outcome.what.startswith(code)
    with rig.system.new_uow() as uow:
        [rejection] = uow.rejections.list(limit=10, channel_id="meters")
    assert rejection["code"] == code
    rig.wake()
    rig.settle()


def test_a_frame_for_another_meter_on_this_meters_topic_is_refused(rig):
    outcome = handle_frame("00000000000009", rig.meter.report(rig.system.clock.now()), rig.system.new_uow())
    assert not outcome.accepted and outcome.what.startswith("FOREIGN_FRAME")


def test_a_meter_alarm_opens_an_alert_once_and_closes_it_when_the_meter_stops_reporting_it(rig):
    rig.meter.alarms = Alarm.LOW_BATTERY
    rig.wake()
    rig.settle()
    rig.wake()
    rig.settle()
    with rig.system.new_uow() as uow:
        assert [a.kind for a in uow.alerts.list(limit=10, open_only=False)] == ["METER_LOW_BATTERY"]
    rig.meter.alarms = Alarm(0)
    rig.wake()
    rig.settle()
    assert "METER_LOW_BATTERY" not in rig.alerts()


def test_an_expired_purchase_goes_again_when_the_meter_comes_back(rig):
    rig.meter.credit_litres = -3_400
    rig.wake()
    rig.meter.acks_to_lose = 100  # the valve-close is sent, never acknowledged
    rig.settle()
    rig.meter.sleep()
    accepted = rig.pay(5_000)
    rig.advance(hours=49)
    rig.worker.watch()
    assert {(c.kind, c.state) for c in rig.commands()} == {(CommandKind.VALVE_CLOSE, CommandState.EXPIRED), (CommandKind.CREDIT, CommandState.EXPIRED)}
    rig.meter.acks_to_lose = 0
    rig.wake()
    rig.settle()
    assert rig.orders(accepted.payment_id)[0].state == CommandState.APPLIED
    assert [e.state for e in rig.orders(accepted.payment_id)[0].events][-4:] == [CommandState.PENDING, CommandState.SENT, CommandState.DELIVERED, CommandState.APPLIED]
    # The meter had closed its valve (only the acknowledgement was lost): its report settles that, too.
    assert (CommandKind.VALVE_CLOSE, CommandState.APPLIED) in {(c.kind, c.state) for c in rig.commands()}
    assert rig.meter.valve_open is True  # reopened after the purchase
    assert "COMMAND_EXPIRED" not in rig.alerts()
    assert check_ledger(rig.system.new_uow()).ok


def test_an_expired_valve_command_is_not_sent_days_later():
    from datetime import UTC, datetime

    from gasworks.domain.delivery import revive_on_return, valve_command

    at = datetime(2026, 11, 23, tzinfo=UTC)
    command = valve_command(meter_serial=IOT_SERIAL, account_no="4301000001", open_=False, at=at, ttl_s=60, why="credit gone")
    command.move_to(CommandState.EXPIRED, at, "ttl")
    assert revive_on_return([command], at=at, ttl_s=60) == []
    assert command.state == CommandState.CANCELLED


def test_after_a_wake_of_unanswered_sends_the_next_wake_sends_again(rig):
    """Found from outside: the fresh allowance of sends a new wake gives was never saved, so a
    purchase sent three times to a meter that did not hear it waited for its 48 h expiry."""
    rig.wake()
    rig.meter.sleep()  # it dozes off at once: the frames sent in this window reach no one
    accepted = rig.pay(10_000)
    for _ in range(6):
        rig.settle()
        rig.advance(seconds=20)
    [order] = rig.orders(accepted.payment_id)
    assert order.state == CommandState.SENT and order.window_sends == rig.system.settings.meter_sends_per_wake_max
    assert rig.meter.applied == []
    rig.advance(hours=20)
    rig.wake()
    rig.settle()
    assert rig.orders(accepted.payment_id)[0].state == CommandState.APPLIED
    assert rig.meter.applied == [(1, 33_444)]


def test_the_residents_page_never_says_gas_available_while_the_valve_stays_closed(rig):
    """Found from outside: a purchase that only paid off the overdraft showed "gas available"."""
    from gasworks.services.timeline import payment_timeline

    rig.meter.credit_litres = -30_000  # far past the overdraft: the valve closes
    rig.wake()
    rig.settle()
    assert rig.meter.valve_open is False
    small = rig.pay(500)  # buys ~1.6 m³: the credit stays below the overdraft
    rig.settle()
    assert rig.orders(small.payment_id)[0].state == CommandState.APPLIED and rig.meter.valve_open is False
    shown = payment_timeline(small.payment_id, rig.system.new_uow(), hotline="12319")
    assert shown.status == "VALVE_CLOSED" and "gas available" not in shown.headline.en
    enough = rig.pay(20_000)
    rig.settle()
    assert rig.meter.valve_open is True
    assert payment_timeline(enough.payment_id, rig.system.new_uow(), hotline="12319").status == "GAS_AVAILABLE"


def test_a_meter_whose_model_reports_weekly_is_offline_only_after_its_week_and_the_margin(rig):
    add_meter_model(MeterModel("nbiot-weekly", report_interval_s=7 * 86_400), rig.system.new_uow(), actor="test")
    set_meter(IOT_SERIAL, rig.system.new_uow(), actor="test", model="nbiot-weekly")
    rig.wake()
    rig.settle()
    rig.advance(days=3)
    rig.worker.watch()
    assert "METER_OFFLINE" not in rig.alerts()  # a daily model's meter would be offline by now
    rig.advance(days=4, seconds=rig.system.settings.meter_offline_margin_s + 1)
    rig.worker.watch()
    assert "METER_OFFLINE" in rig.alerts()
