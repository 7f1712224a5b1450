"""Delivery faults handled as a head-end would, on SQLite and PostgreSQL through the real worker path:
a meter is believed no further than what was issued to it, stale reports are not news, BUSY is
retried, a valve closure carries its reasons, and a leak is shown to the resident as a leak."""

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from gasworks.adapters.meters.transport import LoopbackTransport
from gasworks.domain.delivery import (
    AlertKind,
    ClaimVerdict,
    ClearedBy,
    CommandKind,
    CommandState,
    DeliveryPolicy,
    ReportKey,
    ReportOrder,
    ValveReason,
    credit_past_overdraft,
    judge_claim,
    report_order,
    unwrap_seq,
)
from gasworks.domain.ledger import REVENUE
from gasworks.domain.meter_messages import Alarm, PurchaseAck
from gasworks.entrypoints.api.app import create_app
from gasworks.services.access import Role
from gasworks.services.checks import check_ledger
from tests.delivery_rig import IOT_SERIAL, Rig
from tests.support import api_key, handle_frame, set_up


@pytest.fixture
def rig(system) -> Rig:
    set_up(system)
    return Rig(system, LoopbackTransport())


@pytest.fixture
def api(rig):
    client = TestClient(create_app(rig.system))
    return client, {"Authorization": f"Bearer {api_key(rig.system, Role.OPERATOR)}"}


def revenue_fen(rig: Rig) -> int:
    with rig.system.new_uow() as uow:
        return -uow.ledger.entries_sum_fen(REVENUE)


def open_alerts(rig: Rig, kind: AlertKind):
    with rig.system.new_uow() as uow:
        return [a for a in uow.alerts.list(limit=100) if a.kind == kind]


def meter_rejections(rig: Rig) -> list[str]:
    with rig.system.new_uow() as uow:
        return [r["code"] for r in uow.rejections.list(limit=100, channel_id="meters")]


def link(rig: Rig):
    with rig.system.new_uow() as uow:
        return uow.meters.get(IOT_SERIAL)


def findings(rig: Rig) -> list[tuple[str, str, str]]:
    return [(f.code, f.subject, f.detail) for f in check_ledger(rig.system.new_uow()).findings]


# ---- a meter is believed no further than what was issued to it -----------------------------------


def test_a_report_claiming_a_purchase_five_above_the_highest_issued_settles_nothing_and_is_found(rig, api):
    client, operator = api
    paid = rig.pay(10_000)
    rig.meter.applied_seq = 6  # five above the one purchase issued
    rig.wake()
    rig.settle()
    [order] = rig.orders(paid.payment_id)
    assert order.state == CommandState.PENDING  # not applied, nothing sent on a report we refused
    assert revenue_fen(rig) == 0
    [alert] = open_alerts(rig, AlertKind.METER_CLAIMS_UNISSUED)
    assert "claims purchase #6; highest issued #1" in alert.reason
    assert "SERIAL_NOT_ISSUED" in meter_rejections(rig)
    assert link(rig).applied_seq == 0
    assert ("METER_CLAIMS_UNISSUED", f"meter:{IOT_SERIAL}") in [(code, subject) for code, subject, _ in findings(rig)]
    shown = client.get(f"/v1/payments/{paid.payment_id}", headers=operator).json()["delivery"]
    assert shown["status"] != "GAS_AVAILABLE"
    # A person looks, records what it was, and the check holds again; the alert said how it clears.
    listed = client.get("/v1/alerts", headers=operator).json()
    assert {a["kind"]: a["cleared_by"] for a in listed}["METER_CLAIMS_UNISSUED"] == ClearedBy.PERSON.value
    resolved = client.post(f"/v1/alerts/{alert.id}/resolution", headers=operator, json={"note": "meter swapped by a fitter; old serial counter"})
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["resolved_by"] and resolved.json()["cleared_at"]
    assert check_ledger(rig.system.new_uow()).ok


def test_a_forged_acknowledgement_settles_nothing_and_one_matching_no_command_is_refused(rig):
    rig.wake()
    rig.settle()
    rig.meter.acks_to_lose = 1
    paid = rig.pay(10_000)
    rig.settle()
    [order] = rig.orders(paid.payment_id)
    assert order.state == CommandState.SENT
    # Sealed with the meter's own key: a lying firmware, or a key that leaked. The MAC passes; the
    # serial check is what stops it.
    forged = rig.meter._encode(PurchaseAck(IOT_SERIAL, order.frame_seq, 6, 999_999))
    outcome = handle_frame(IOT_SERIAL, forged, rig.system.new_uow())
    assert not outcome.accepted and outcome.what.startswith("SERIAL_NOT_ISSUED")
    unmatched = rig.meter._encode(PurchaseAck(IOT_SERIAL, (order.frame_seq + 1) % 256, 1, 999_999))
    outcome = handle_frame(IOT_SERIAL, unmatched, rig.system.new_uow())
    assert not outcome.accepted and outcome.what.startswith("UNMATCHED_REPLY")
    assert rig.orders(paid.payment_id)[0].state == CommandState.SENT
    assert revenue_fen(rig) == 0 and link(rig).credit_litres == 0
    assert {"SERIAL_NOT_ISSUED", "UNMATCHED_REPLY"} <= set(meter_rejections(rig))
    assert open_alerts(rig, AlertKind.METER_CLAIMS_UNISSUED)
    # The real meter's answer still counts, once.
    rig.advance(seconds=rig.system.settings.meter_ack_wait_s)
    rig.settle()
    assert rig.orders(paid.payment_id)[0].state == CommandState.APPLIED
    assert rig.meter.applied == [(1, 33_444)] and revenue_fen(rig) == order.cost_fen


def test_check_finds_an_applied_purchase_its_meter_never_confirmed(rig, system):
    paid = rig.pay(5_000)
    with system.engine.begin() as c:  # someone marks it applied behind gasworks' back
        c.exec_driver_sql("UPDATE meter_commands SET state = 'applied' WHERE payment_id = %s" if system.engine.dialect.name == "postgresql" else "UPDATE meter_commands SET state = 'applied' WHERE payment_id = ?", (paid.payment_id,))
    found = findings(rig)
    assert ("PURCHASE_APPLIED_WITHOUT_PROOF", f"meter:{IOT_SERIAL}", "purchase #1 is applied; the meter has applied #0, highest issued #1") in found


def _one_byte_meter_near_the_wrap(rig: Rig, client, operator, at: int) -> None:
    assert client.post("/v1/meter-models", headers=operator, json={"name": "money-1b", "purchase_seq_bytes": 1}).status_code == 201
    assert client.patch(f"/v1/meters/{IOT_SERIAL}", headers=operator, json={"model": "money-1b"}).json()["model"] == "money-1b"
    with rig.system.new_uow() as uow:  # a meter long in service: `at` purchases issued and applied
        meter = uow.meters.get(IOT_SERIAL, lock=True)
        meter.purchase_seq_issued = meter.applied_seq = at
        uow.meters.save(meter)
        uow.commit()
    rig.meter.seq_modulus, rig.meter.applied_seq = 256, at % 256


def test_a_one_byte_serial_wraps_at_255_and_every_purchase_is_applied_once(rig, api):
    client, operator = api
    _one_byte_meter_near_the_wrap(rig, client, operator, 253)
    paid = [rig.pay(3_000) for _ in range(4)]
    assert [rig.orders(p.payment_id)[0].purchase_seq for p in paid] == [254, 255, 256, 257]
    rig.wake()
    rig.settle()
    assert [seq for seq, _ in rig.meter.applied] == [254, 255, 0, 1]  # what the firmware counts
    assert all(rig.orders(p.payment_id)[0].state == CommandState.APPLIED for p in paid)
    assert link(rig).applied_seq == 257
    rig.advance(hours=1)
    rig.wake()  # its daily report says 1: purchase 257, not 1
    rig.settle()
    assert link(rig).applied_seq == 257 and not open_alerts(rig, AlertKind.METER_SEQUENCE_BACKWARDS)
    assert check_ledger(rig.system.new_uow()).ok
    rig.meter.applied_seq = 6  # 262 after unwrapping: five above the highest issued
    rig.advance(hours=1)
    rig.wake()
    rig.settle()
    [alert] = open_alerts(rig, AlertKind.METER_CLAIMS_UNISSUED)
    assert "claims purchase #262; highest issued #257" in alert.reason
    assert link(rig).applied_seq == 257


def test_a_one_byte_claim_that_goes_backwards_is_flagged_not_accepted(rig, api):
    client, operator = api
    _one_byte_meter_near_the_wrap(rig, client, operator, 300)
    rig.meter.applied_seq = 40  # 296 after unwrapping: below the 300 it had applied
    rig.wake()
    rig.settle()
    assert link(rig).applied_seq == 300
    [alert] = open_alerts(rig, AlertKind.METER_SEQUENCE_BACKWARDS)
    assert "#296" in alert.reason and alert.cleared_by == ClearedBy.PERSON.value


def test_claims_are_judged_after_unwrapping_between_what_was_applied_and_the_highest_issued():
    assert unwrap_seq(0, applied_seq=255, highest_issued=255, modulus=256) == 256  # one past the highest issued: refused
    assert unwrap_seq(255, applied_seq=255, highest_issued=256, modulus=256) == 255
    assert unwrap_seq(0, applied_seq=255, highest_issued=256, modulus=256) == 256
    assert unwrap_seq(5, applied_seq=0, highest_issued=1, modulus=256) == 5
    assert unwrap_seq(200, applied_seq=300, highest_issued=300, modulus=256) == 200  # far behind: backwards, never far ahead
    assert unwrap_seq(200, applied_seq=1, highest_issued=1, modulus=256) == 200  # no serial below 0: beyond what was issued
    assert unwrap_seq(300, applied_seq=0, highest_issued=1, modulus=256) > 1  # no one-byte firmware says 300
    assert unwrap_seq(7, applied_seq=0, highest_issued=3, modulus=None) == 7
    assert judge_claim(6, applied_seq=0, highest_issued=1) == ClaimVerdict.BEYOND_ISSUED
    assert judge_claim(0, applied_seq=1, highest_issued=2) == ClaimVerdict.BACKWARDS
    assert judge_claim(2, applied_seq=1, highest_issued=2) == ClaimVerdict.IN_RANGE


@given(applied=st.integers(0, 10**6), outstanding=st.integers(0, 127), step=st.integers(-128, 127))
def test_a_one_byte_serial_within_the_window_unwraps_to_the_serial_meant(applied, outstanding, step):
    meant = applied + min(step, outstanding)
    if meant < 0:
        return
    assert unwrap_seq(meant % 256, applied_seq=applied, highest_issued=applied + outstanding, modulus=256) == meant


@given(applied=st.integers(0, 10**6), outstanding=st.integers(0, 600), claimed_ahead=st.integers(0, 255))
def test_a_one_byte_claim_is_never_read_further_along_than_the_lowest_serial_it_can_mean(applied, outstanding, claimed_ahead):
    """With 256 or more purchases outstanding the byte is ambiguous: gasworks reads it low (gas owed), never high (gas given twice)."""
    wire = (applied + claimed_ahead) % 256
    read = unwrap_seq(wire, applied_seq=applied, highest_issued=applied + outstanding, modulus=256)
    if claimed_ahead <= outstanding:
        assert read == applied + claimed_ahead
    else:
        assert judge_claim(read, applied_seq=applied, highest_issued=applied + outstanding) != ClaimVerdict.IN_RANGE


# ---- stale reports are not news ----------------------------------------------------------------


def test_a_stale_report_after_a_newer_one_is_ignored_and_raises_no_reset_alert(rig):
    # Sealed frames are ordered by their counter: a frame sealed before the newest one taken and
    # delivered late is refused before its clock is read, and changes nothing.
    old_frame = rig.meter.report(rig.system.clock.now())
    rig.meter.sleep()
    rig.advance(minutes=5)
    paid = rig.pay(10_000)
    rig.wake()
    rig.settle()
    assert rig.orders(paid.payment_id)[0].state == CommandState.APPLIED
    newest = link(rig)
    rig.advance(minutes=1)
    outcome = handle_frame(IOT_SERIAL, old_frame, rig.system.new_uow())
    assert not outcome.accepted and outcome.what.startswith("FRAME_REPLAYED")
    after = link(rig)
    assert (after.applied_seq, after.credit_litres, after.valve_open, after.awake_until, after.last_report_at) == (
        newest.applied_seq, newest.credit_litres, newest.valve_open, newest.awake_until, newest.last_report_at,
    )  # fmt: skip
    assert not open_alerts(rig, AlertKind.METER_SEQUENCE_BACKWARDS)
    assert "FRAME_REPLAYED" in meter_rejections(rig)
    # A genuine reset is a newer report with a lower serial: flagged, and the serial is not lowered.
    rig.meter.applied_seq = 0
    rig.advance(hours=1)
    rig.wake()
    rig.settle()
    assert open_alerts(rig, AlertKind.METER_SEQUENCE_BACKWARDS) and link(rig).applied_seq == 1


def test_reports_are_ordered_by_counter_when_both_have_one_else_by_clock():
    t = datetime(2026, 11, 23, 9, 0)
    assert report_order(ReportKey(t), None) == ReportOrder.NEWER
    assert report_order(ReportKey(t - timedelta(seconds=1)), ReportKey(t)) == ReportOrder.OLDER
    assert report_order(ReportKey(t), ReportKey(t)) == ReportOrder.SAME
    assert report_order(ReportKey(t - timedelta(hours=1), counter=8), ReportKey(t, counter=7)) == ReportOrder.NEWER


# ---- BUSY is retried within the wake -------------------------------------------------------------


def test_a_busy_meter_gets_the_purchase_again_later_in_the_wake_and_applies_it_once(rig):
    rig.wake()
    rig.settle()
    rig.meter.busy_replies = 1
    paid = rig.pay(10_000)
    rig.settle()
    [order] = rig.orders(paid.payment_id)
    assert order.state == CommandState.SENT and "busy" in order.note
    assert rig.meter.applied == [] and len(rig.meter.frames_seen) == 1
    rig.advance(seconds=rig.system.settings.meter_ack_wait_s)
    rig.settle()
    [order] = rig.orders(paid.payment_id)
    assert order.state == CommandState.APPLIED
    assert CommandState.FAILED not in [e.state for e in order.events]
    assert len(rig.meter.frames_seen) == 2 and rig.meter.applied == [(1, 33_444)]
    assert not open_alerts(rig, AlertKind.COMMAND_REFUSED)
    assert check_ledger(rig.system.new_uow()).ok


# ---- the valve: reasons, one threshold, the button ---------------------------------------------


def test_the_valve_closes_below_minus_the_overdraft_not_at_it(rig):
    overdraft = rig.system.settings.meter_overdraft_litres
    assert not credit_past_overdraft(-overdraft, DeliveryPolicy(overdraft_litres=overdraft))
    rig.meter.credit_litres = -overdraft
    rig.wake()
    rig.settle()
    assert rig.meter.valve_open is True and rig.commands() == []
    rig.meter.credit_litres = -overdraft - 1
    rig.advance(minutes=1)
    rig.wake()
    rig.settle()
    assert rig.meter.valve_open is False and link(rig).valve_reasons


def test_a_top_up_does_not_reopen_a_valve_closed_for_a_leak_until_a_technician_resolves_it(rig, api):
    client, operator = api
    rig.meter.credit_litres = -3_400
    rig.meter.alarms = Alarm.LEAK
    rig.wake()
    rig.settle()
    assert rig.meter.valve_open is False
    assert client.get(f"/v1/meters/{IOT_SERIAL}", headers=operator).json()["valve_reasons"] == ["credit", "leak_or_tamper"]
    paid = rig.pay(10_000)
    rig.settle()
    assert rig.orders(paid.payment_id)[0].state == CommandState.APPLIED
    assert rig.meter.valve_open is False  # the top-up cleared credit, not the leak
    assert client.get(f"/v1/meters/{IOT_SERIAL}", headers=operator).json()["valve_reasons"] == ["leak_or_tamper"]
    early = client.post(f"/v1/meters/{IOT_SERIAL}/valve/resolutions", headers=operator, json={"reason": "leak_or_tamper", "note": "on my way"})
    assert early.status_code == 409 and early.json()["error"]["code"] == "METER_STILL_ALARMED"
    rig.meter.alarms = Alarm(0)
    rig.advance(minutes=10)
    rig.wake()
    rig.settle()
    assert rig.meter.valve_open is False and "METER_LEAK" not in rig.alerts()  # the alarm is gone; the reason is not
    [safety] = open_alerts(rig, AlertKind.VALVE_CLOSED_FOR_SAFETY)
    by_alert = client.post(f"/v1/alerts/{safety.id}/resolution", headers=operator, json={"note": "fine"})
    assert by_alert.status_code == 409 and by_alert.json()["error"]["code"] == "NOT_CLEARED_BY_A_PERSON"
    done = client.post(f"/v1/meters/{IOT_SERIAL}/valve/resolutions", headers=operator, json={"reason": "leak_or_tamper", "note": "technician Li: hose replaced, no leak at 14:00"})
    assert done.status_code == 200, done.text
    assert done.json()["valve_reasons"] == []
    rig.settle()
    assert rig.meter.valve_open is True
    assert not open_alerts(rig, AlertKind.VALVE_CLOSED_FOR_SAFETY)
    audit = client.get("/v1/audit", headers=operator).json()
    assert any(a["action"] == "valve.resolve" for a in (audit if isinstance(audit, list) else audit.get("items", [])))


def test_a_hazard_stop_holds_through_a_top_up_and_only_its_resolution_reopens(rig, api):
    client, operator = api
    rig.wake()
    rig.settle()
    stop = client.post(f"/v1/meters/{IOT_SERIAL}/valve/close", headers=operator, json={"reason": "hazard_stop", "note": "works on the main, block 3"})
    assert stop.status_code == 200, stop.text
    rig.settle()
    assert rig.meter.valve_open is False
    paid = rig.pay(10_000)
    rig.settle()
    assert rig.orders(paid.payment_id)[0].state == CommandState.APPLIED and rig.meter.valve_open is False
    shown = client.get(f"/v1/payments/{paid.payment_id}", headers=operator).json()["delivery"]
    assert shown["status"] == "CLOSED_FOR_SAFETY" and "stopped gas for safety" in shown["next_step"]["en"]
    assert client.post(f"/v1/meters/{IOT_SERIAL}/valve/resolutions", headers=operator, json={"reason": "hazard_stop", "note": "works done"}).status_code == 200
    rig.settle()
    assert rig.meter.valve_open is True
    assert client.get(f"/v1/payments/{paid.payment_id}", headers=operator).json()["delivery"]["status"] == "GAS_AVAILABLE"
    kinds = [(c.kind, c.state) for c in rig.commands()]
    assert kinds == [(CommandKind.VALVE_CLOSE, CommandState.APPLIED), (CommandKind.CREDIT, CommandState.APPLIED), (CommandKind.VALVE_OPEN, CommandState.APPLIED)]


def test_reopen_needs_button_is_set_per_model_and_per_meter(rig, api):
    client, operator = api
    assert client.post("/v1/meter-models", headers=operator, json={"name": "press-3s", "reopen_needs_button": True}).status_code == 201
    assert client.patch(f"/v1/meters/{IOT_SERIAL}", headers=operator, json={"model": "press-3s"}).json()["reopen_needs_button"] is True
    rig.meter.credit_litres = -3_400
    rig.wake()
    rig.settle()
    paid = rig.pay(10_000)
    rig.settle()
    assert rig.meter.valve_open is False  # applied, but this model reopens by the resident's button
    shown = client.get(f"/v1/payments/{paid.payment_id}", headers=operator).json()["delivery"]
    assert "red button" in shown["next_step"]["en"]
    assert client.patch(f"/v1/meters/{IOT_SERIAL}", headers=operator, json={"reopen_needs_button": False}).json()["reopen_needs_button"] is False
    changed = client.patch("/v1/meter-models/press-3s", headers=operator, json={"reopen_needs_button": True})
    assert changed.json()["meters_changed"] == 1
    assert client.get(f"/v1/meters/{IOT_SERIAL}", headers=operator).json()["reopen_needs_button"] is True


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("post", f"/v1/meters/{IOT_SERIAL}/valve/close", {"reason": "credit", "note": "x"}, 422, None),
        ("post", "/v1/meters/00000000000099/valve/close", {"reason": "operator", "note": "x"}, 404, "METER_NOT_FOUND"),
        ("post", f"/v1/meters/{IOT_SERIAL}/valve/resolutions", {"reason": "hazard_stop", "note": "x"}, 409, "VALVE_REASON_NOT_SET"),
        ("post", "/v1/meter-models", {"name": "two-byte", "purchase_seq_bytes": 2}, 422, "INVALID_SERIAL_WIDTH"),
        ("patch", f"/v1/meters/{IOT_SERIAL}", {"model": "nope"}, 404, "METER_MODEL_NOT_FOUND"),
        ("patch", f"/v1/meters/{IOT_SERIAL}", {}, 422, "NOTHING_TO_SET"),
        ("post", "/v1/alerts/999/resolution", {"note": "x"}, 404, "ALERT_NOT_FOUND"),
    ],
)
def test_bad_operator_input_is_a_clear_4xx(api, method, path, body, status, code):
    client, operator = api
    r = getattr(client, method)(path, headers=operator, json=body)
    assert r.status_code == status, r.text
    assert "error" in r.json()
    if code:
        assert r.json()["error"]["code"] == code


# ---- the resident's page on a leak -------------------------------------------------------------


def test_the_residents_page_on_a_leak_says_closed_for_safety_and_gives_the_hotline_never_gas_available(rig, api):
    client, operator = api
    rig.wake()
    rig.settle()
    paid = rig.pay(10_000)
    rig.settle()
    assert rig.orders(paid.payment_id)[0].state == CommandState.APPLIED
    rig.meter.alarms = Alarm.LEAK
    rig.advance(hours=2)
    rig.wake()
    rig.settle()
    assert rig.meter.valve_open is False
    shown = client.get(f"/v1/payments/{paid.payment_id}", headers=operator).json()["delivery"]
    assert shown["status"] == "CLOSED_FOR_SAFETY"
    page = client.get(shown["resident_url"].split("testserver", 1)[-1])
    assert page.status_code == 200
    html = page.text
    hotline = rig.system.settings.service_hotline
    assert "燃气已因安全原因关闭" in html and "Gas closed for safety" in html
    assert html.index("燃气已因安全原因关闭") < html.index("Gas closed for safety")  # Chinese first
    assert f"致电 {hotline}" in html and f"call {hotline}" in html and "leak" in html
    assert "可以用气" not in html and "Gas available" not in html and "gas available" not in html


# ---- the command line, and the valve rules on their own ----------------------------------------


@given(reasons=st.integers(0, 0x1F), credit=st.one_of(st.none(), st.integers(-(10**7), 10**7)))
def test_a_top_up_never_clears_a_leak_or_a_hazard_stop(reasons, credit):
    from gasworks.domain.delivery import SAFETY_REASONS, ValveReason, clear_by_top_up

    after = clear_by_top_up(reasons, credit_litres=credit)
    assert after & SAFETY_REASONS == reasons & SAFETY_REASONS
    assert after & ValveReason.OPERATOR == reasons & ValveReason.OPERATOR
    assert not after & ValveReason.ARREARS


def test_operators_set_models_buttons_and_valve_reasons_from_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from gasworks.entrypoints.cli.main import app

    url = f"sqlite:///{tmp_path / 'g.db'}"

    def run(*args):
        return CliRunner().invoke(app, [*args, "--database-url", url], env={"COLUMNS": "400"})

    assert run("db", "upgrade").exit_code == 0
    assert run("accounts", "add", "4301000001", "--name", "张三", "--phone", "13812345678", "--meter-serial", IOT_SERIAL, "--meter-kind", "iot").exit_code == 0
    assert run("meters", "models", "add", "money-1b", "--serial-bytes", "1", "--reopen-needs-button").exit_code == 0
    assert "money-1b" in run("meters", "models", "list").output
    assert "needs the button: yes" in run("meters", "set", IOT_SERIAL, "--model", "money-1b").output
    assert "needs the button: no" in run("meters", "set", IOT_SERIAL, "--no-reopen-needs-button").output
    assert "(1 meters)" in run("meters", "models", "set", "money-1b", "--reopen-needs-button").output
    closed = run("meters", "close-valve", IOT_SERIAL, "--reason", "hazard_stop", "--note", "works on the main")
    assert closed.exit_code == 0 and "hazard_stop" in closed.output
    shown = run("meters", "show", IOT_SERIAL)
    assert "model money-1b" in shown.output and "hazard_stop" in shown.output
    alerts = run("alerts")
    assert alerts.exit_code == 0 and "VALVE_CLOSED_FOR_SAFETY" in alerts.output
    resolved = run("meters", "resolve", IOT_SERIAL, "--reason", "hazard_stop", "--note", "works done")
    assert resolved.exit_code == 0 and "nothing any more" in resolved.output
    for args, code in (
        (("meters", "close-valve", IOT_SERIAL, "--reason", "credit", "--note", "x"), "INVALID_VALVE_REASON"),
        (("meters", "resolve", IOT_SERIAL, "--reason", "credit", "--note", "x"), "CLEARED_BY_TOP_UP"),
        (("meters", "models", "add", "two", "--serial-bytes", "2"), "INVALID_SERIAL_WIDTH"),
        (("meters", "set", "00000000000099", "--model", "money-1b"), "METER_NOT_FOUND"),
        (("alerts", "resolve", "1", "--note", "x"), "ALERT_NOT_OPEN"),
    ):
        bad = run(*args)
        assert bad.exit_code == 2 and code in bad.output and "Traceback" not in bad.output, (args, bad.output)


def test_a_report_with_its_clock_in_the_future_does_not_make_later_reports_stale(rig):
    """Found from outside: one report dated 2030 made every later report 'stale' (no wake, no
    purchase sent, alarms never cleared). Sealed frames are ordered by their counter."""
    rig.meter.sleep()
    future = rig.meter.report(datetime(2030, 1, 1, tzinfo=UTC))
    assert handle_frame(IOT_SERIAL, future, rig.system.new_uow()).accepted
    rig.meter.sleep()
    paid = rig.pay(10_000)
    rig.advance(minutes=5)
    rig.wake()
    rig.settle()
    assert rig.orders(paid.payment_id)[0].state == CommandState.APPLIED
    assert "STALE_REPORT" not in meter_rejections(rig)


def test_a_report_claiming_an_unissued_serial_still_raises_its_leak(rig):
    """Found from outside: such a report was dropped whole, its leak alarm with it."""
    rig.meter.applied_seq = 7  # the firmware lies about its serial, and reports a leak
    rig.meter.alarms = Alarm.LEAK
    outcome = handle_frame(IOT_SERIAL, rig.meter.report(rig.system.clock.now()), rig.system.new_uow())
    assert not outcome.accepted and outcome.what.startswith("SERIAL_NOT_ISSUED")
    assert open_alerts(rig, AlertKind.METER_CLAIMS_UNISSUED)
    assert open_alerts(rig, AlertKind.for_alarm("LEAK"))
    assert link(rig).valve_reasons & ValveReason.LEAK_OR_TAMPER


def test_sealed_reports_are_ordered_by_their_counter_against_the_newest_taken():
    """Two workers may take frames 10 and 11 of one meter in either order: the one applied second
    must not overwrite the newer one's state, whatever the meter clocks say."""
    clock = datetime(2026, 11, 24, 9, 0)
    assert report_order(ReportKey(clock + timedelta(hours=1), 10), ReportKey(clock, 11)) == ReportOrder.OLDER
    assert report_order(ReportKey(datetime(2000, 1, 1), 12), ReportKey(datetime(2030, 1, 1), 11)) == ReportOrder.NEWER
    assert report_order(ReportKey(datetime(2000, 1, 1), 1), ReportKey(datetime(2030, 1, 1), None)) == ReportOrder.NEWER
    assert report_order(ReportKey(clock, None), ReportKey(clock + timedelta(minutes=1), None)) == ReportOrder.OLDER
