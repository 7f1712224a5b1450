"""Three-way reconciliation of the simulator's statements: each fault in its class, repairs once, reruns no-ops."""

import hashlib
from dataclasses import replace
from datetime import date, datetime, timedelta

import pytest

from gasworks.domain.statements import DiscrepancyClass, DiscrepancyState, StatementRefused
from gasworks.services import reconciliation
from gasworks.services.checks import check_ledger
from gasworks.sim.statements import write_statements
from gasworks.sim.world import LOCAL, Collected
from tests.test_simulation import simulate


def reconcile_all(system, files):
    reports = []
    for path in files:
        channel_id, day = path.stem.rsplit("-", 3)[0], path.stem[-10:]
        imported = reconciliation.import_statement(channel_id=channel_id, statement_date=date.fromisoformat(day), filename=path.name, raw=path.read_bytes(), uow=system.new_uow(), actor="test")
        reports.append(reconciliation.reconcile(file_id=imported.file_id, uow_factory=system.new_uow, actor="test"))
    return reports


@pytest.fixture
def faulty_statements(database_url, tmp_path):
    """A small city's days, then the statements with one fault of every class planted."""
    sim, outcome, _ = simulate(database_url, households=80, days=3, seed=8, faults="none")
    by_channel = {}
    for c in outcome.collected:
        if c.reached_gasworks and c.paid_at.astimezone(LOCAL).hour < 22:
            by_channel.setdefault(c.channel_id, []).append(c)
    planted = {
        DiscrepancyClass.STATUS_MISMATCH: by_channel["wechat"][0],
        DiscrepancyClass.FEE_MISMATCH: by_channel["wechat"][1],
        DiscrepancyClass.UNKNOWN_PAYMENT: by_channel["wechat"][2],
        DiscrepancyClass.AMOUNT_MISMATCH: by_channel["alipay"][0],
        DiscrepancyClass.DUPLICATE: by_channel["wo-wallet"][0],
    }
    planted[DiscrepancyClass.STATUS_MISMATCH].refunded = True
    planted[DiscrepancyClass.FEE_MISMATCH].statement_fee_fen = 1
    planted[DiscrepancyClass.UNKNOWN_PAYMENT].left_out = True
    planted[DiscrepancyClass.AMOUNT_MISMATCH].statement_amount_fen = planted[DiscrepancyClass.AMOUNT_MISMATCH].amount_fen - 100
    planted[DiscrepancyClass.DUPLICATE].listed_twice = True
    wallet = by_channel["wo-wallet"][1]
    lost = replace(wallet, channel_txn_id="WO-LOST-0001", reached_gasworks=False, fault="wallet showed success; its request never reached gasworks")
    outcome.collected.append(lost)
    planted[DiscrepancyClass.MISSING_NOTIFICATION] = lost
    files = write_statements(outcome.collected, tmp_path / "statements")
    return sim, outcome, planted, files


def test_every_planted_fault_is_found_in_its_class_and_the_lost_payment_is_booked_once(faulty_statements):
    sim, outcome, planted, files = faulty_statements
    reports = reconcile_all(sim.system, files)
    found = {(d.klass, d.channel_txn_id): d for r in reports for d in r.discrepancies}
    for klass, collected in planted.items():
        assert (klass, collected.channel_txn_id) in found, f"{klass} for {collected.channel_txn_id} not found"
    money_found = {key for key, d in found.items() if key[0] != DiscrepancyClass.NOT_DELIVERED}
    assert money_found == {(k, c.channel_txn_id) for k, c in planted.items()}, "nothing else is a discrepancy"
    repaired = found[(DiscrepancyClass.MISSING_NOTIFICATION, "WO-LOST-0001")]
    assert repaired.state == DiscrepancyState.REPAIRED and repaired.payment_id
    with sim.system.new_uow() as uow:
        payment = uow.payments.get_by_channel_txn("wo-wallet", "WO-LOST-0001")
        assert payment.state == "booked" and payment.method == "statement" and payment.amount_fen == planted[DiscrepancyClass.MISSING_NOTIFICATION].amount_fen
        assert uow.meter_commands.for_payment(payment.id), "the repaired payment buys gas like any other"
        assert uow.audit.list(limit=5, subject=f"payment:{payment.id}")[0]["action"] == "payment.booked_from_statement"
    assert {r.verdict for r in reports} <= {"clean", "repaired", "unclean"}
    assert any(r.verdict == "unclean" for r in reports)
    assert check_ledger(sim.system.new_uow()).ok


def test_reconciling_the_same_file_again_changes_nothing_and_a_late_notification_books_nothing(faulty_statements):
    sim, outcome, planted, files = faulty_statements
    first = reconcile_all(sim.system, files)
    again = reconcile_all(sim.system, files)
    assert [r.run_id for r in again] == [r.run_id for r in first] and not any(r.new for r in again)
    with sim.system.new_uow() as uow:
        booked_before = uow.payments.totals_by_state()["booked"]
    lost = planted[DiscrepancyClass.MISSING_NOTIFICATION]
    sim._wallet_post(lost)  # the wallet's request finally arrives, after the repair
    assert lost.reached_gasworks
    with sim.system.new_uow() as uow:
        assert uow.payments.totals_by_state()["booked"] == booked_before  # the same count and money: it booked nothing
        assert len([p for p in uow.payments.list_for_account(lost.account_no, 100) if p.channel_txn_id == "WO-LOST-0001"]) == 1
    assert check_ledger(sim.system.new_uow()).ok


def test_an_operator_reverses_a_refunded_payment_and_adjusts_an_amount_with_ledger_transactions(faulty_statements):
    sim, _, planted, files = faulty_statements
    reconcile_all(sim.system, files)
    with sim.system.new_uow() as uow:
        open_ = {d.klass: d for d in uow.reconciliations.discrepancies(state=DiscrepancyState.OPEN, limit=100)}
        clearing_before = uow.ledger.totals_by_kind()["clearing"]
    refunded = reconciliation.decide(open_[DiscrepancyClass.STATUS_MISMATCH].id, "reverse", "refunded at WeChat on the resident's request", sim.system.new_uow(), actor="op:wang")
    adjusted = reconciliation.decide(open_[DiscrepancyClass.AMOUNT_MISMATCH].id, "adjust", "Alipay's amount is right", sim.system.new_uow(), actor="op:wang")
    assert refunded.state == adjusted.state == DiscrepancyState.RESOLVED and "ledger transaction" in refunded.resolution
    with sim.system.new_uow() as uow:
        clearing_after = uow.ledger.totals_by_kind()["clearing"]
        audit = {a["action"] for a in uow.audit.list(limit=50)}
    assert clearing_before - clearing_after == planted[DiscrepancyClass.STATUS_MISMATCH].amount_fen + 100
    assert {"discrepancy.reverse", "discrepancy.adjust"} <= audit
    with pytest.raises(Exception, match="DISCREPANCY_NOT_OPEN|is resolved"):
        reconciliation.decide(open_[DiscrepancyClass.STATUS_MISMATCH].id, "reverse", "again", sim.system.new_uow(), actor="op:wang")
    assert check_ledger(sim.system.new_uow()).ok


@pytest.mark.parametrize(
    ("mangle", "fmt", "code"),
    [
        (lambda raw: raw.decode("gbk").encode("utf-8"), "alipay-business-bill", "STATEMENT_ENCODING"),
        (lambda raw: raw.replace("应结订单金额".encode(), "金额".encode(), 1), "wechat-trade-bill", "STATEMENT_COLUMNS"),
        (lambda raw: raw[: raw.rfind("总交易单数".encode())], "wechat-trade-bill", "STATEMENT_TRUNCATED"),
        (lambda raw: raw.replace(b"# total,", b"# total,9", 1), "plain-csv", "STATEMENT_TOTALS"),
        (lambda raw: raw.replace("#交易合计：".encode("gbk"), "#交易合计：9".encode("gbk"), 1), "alipay-business-bill", "STATEMENT_TOTALS"),
    ],
)
def test_a_bad_file_is_refused_with_its_reason_and_nothing_is_imported(faulty_statements, mangle, fmt, code):
    sim, _, _, files = faulty_statements
    prefix = {"alipay-business-bill": "alipay", "wechat-trade-bill": "wechat", "plain-csv": "wo-wallet"}[fmt]
    path = next(p for p in files if p.name.startswith(prefix + "-"))
    raw = mangle(path.read_bytes())
    with pytest.raises(StatementRefused) as refused:
        reconciliation.import_statement(channel_id=prefix, statement_date=date.fromisoformat(path.stem[-10:]), filename=path.name, raw=raw, uow=sim.system.new_uow(), actor="test")
    assert refused.value.code == code
    with sim.system.new_uow() as uow:
        assert uow.statements.find(prefix, date.fromisoformat(path.stem[-10:]), hashlib.sha256(raw).hexdigest()) is None


def _wallet_statement(tmp_path, day, payments):
    from gasworks.sim.statements import plain_statement

    path = tmp_path / f"wo-wallet-{day.isoformat()}.csv"
    path.write_bytes(plain_statement(day, payments))
    return path


@pytest.mark.parametrize("in_next_file", [True, False])
def test_a_payment_just_before_midnight_is_carried_over_to_the_next_days_file(any_system, tmp_path, in_next_file):
    """On the fakes too: the statement and reconciliation fakes export the CSV the DuckDB matcher reads."""
    from gasworks.domain.channels import PaymentNotice
    from gasworks.services.intake import accept_payment
    from tests.support import ACCOUNT_NO, set_up

    system = any_system
    set_up(system)
    day = date(2026, 11, 22)
    late_at = datetime(2026, 11, 22, 23, 50, tzinfo=LOCAL)
    accept_payment(PaymentNotice("wo-wallet", "WO-2350", 5_000, late_at, account_no=ACCOUNT_NO), system.new_uow())
    late = Collected("wo-wallet", "WO-2350", ACCOUNT_NO, 5_000, late_at + timedelta(minutes=20))  # the wallet dates it after midnight
    first = reconcile_all(system, [_wallet_statement(tmp_path, day, [])])[0]
    [carried] = first.discrepancies
    assert (carried.klass, carried.state) == (DiscrepancyClass.UNKNOWN_PAYMENT, DiscrepancyState.CARRIED_OVER)
    assert first.verdict == "clean"  # not missing yet
    second = reconcile_all(system, [_wallet_statement(tmp_path, day + timedelta(days=1), [late] if in_next_file else [])])[0]
    with system.new_uow() as uow:
        assert uow.reconciliations.discrepancies(run_id=first.run_id, limit=10)[0].state == DiscrepancyState.SUPERSEDED
    if in_next_file:
        assert second.discrepancies == [] and second.verdict == "clean" and second.matched == 1
    else:
        [missing] = second.discrepancies
        assert (missing.klass, missing.state, missing.channel_txn_id) == (DiscrepancyClass.UNKNOWN_PAYMENT, DiscrepancyState.OPEN, "WO-2350")
        assert second.verdict == "unclean"


def test_an_operator_uploads_a_statement_over_http_and_exports_the_run(faulty_statements):
    from fastapi.testclient import TestClient

    from gasworks.entrypoints.api.app import create_app
    from gasworks.services.access import Role
    from tests.support import api_key

    sim, _, planted, files = faulty_statements
    client = TestClient(create_app(sim.system))
    operator = {"Authorization": f"Bearer {api_key(sim.system, Role.OPERATOR)}"}
    auditor = {"Authorization": f"Bearer {api_key(sim.system, Role.AUDITOR)}"}
    path = next(p for p in files if p.name.startswith("wechat-") and planted[DiscrepancyClass.FEE_MISMATCH].channel_txn_id.encode() in p.read_bytes())
    params = {"channel_id": "wechat", "date": path.stem[-10:], "filename": path.name}
    run = client.post("/v1/statements", params=params, content=path.read_bytes(), headers=operator)
    assert run.status_code == 200, run.text
    assert any(d["class"] == "fee_mismatch" for d in run.json()["discrepancies"])
    again = client.post("/v1/statements", params=params, content=path.read_bytes(), headers=operator)
    assert again.json()["run_id"] == run.json()["run_id"]
    exported = client.get(f"/v1/reconciliations/{run.json()['run_id']}/discrepancies.csv", headers=auditor)
    assert exported.status_code == 200 and exported.text.startswith("id,class,state") and "fee_mismatch" in exported.text
    bad = client.post("/v1/statements", params=params | {"date": "2026-01-01"}, content=b"garbage", headers=operator)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "STATEMENT_COLUMNS"  # "garbage" has no WeChat header
    assert client.post("/v1/statements", params=params, content=path.read_bytes(), headers=auditor).status_code == 403
    held = client.get("/v1/discrepancies", params={"class": "fee_mismatch"}, headers=auditor).json()
    decided = client.post(f"/v1/discrepancies/{held[0]['id']}/decisions", json={"decision": "accept", "reason": "rate changed on the 1st"}, headers=operator)
    assert decided.status_code == 200 and decided.json()["state"] == "resolved"
    refused = client.post(f"/v1/discrepancies/{held[0]['id']}/decisions", json={"decision": "reverse", "reason": "x"}, headers=operator)
    assert refused.status_code == 409


def test_the_command_line_reconciles_a_file_and_says_unclean_with_exit_1(faulty_statements, tmp_path):
    from typer.testing import CliRunner

    from gasworks.entrypoints.cli.main import app

    sim, _, planted, files = faulty_statements
    url = sim.system.settings.database_url
    path = next(p for p in files if p.name.startswith("alipay-") and planted[DiscrepancyClass.AMOUNT_MISMATCH].channel_txn_id.encode() in p.read_bytes())
    result = CliRunner().invoke(app, ["reconcile", str(path), "--channel", "alipay", "--date", path.stem[-10:], "--csv", str(tmp_path / "out.csv"), "--database-url", url])
    assert result.exit_code == 1 and "verdict: unclean" in result.output and "amount_mismatch" in result.output
    assert "amount_mismatch" in (tmp_path / "out.csv").read_text()
    bad = CliRunner().invoke(app, ["reconcile", str(path), "--channel", "alipay", "--date", "yesterday", "--database-url", url])
    assert bad.exit_code == 2 and "INVALID_DATE" in bad.output
