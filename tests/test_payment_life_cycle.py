"""A payment owns its life cycle: every decision about its money is a legal transition, posted once,
and `gasworks check` proves each payment's state against its money.

The use cases run on the in-memory fakes (tests/fakes.py), SQLite and PostgreSQL (fixture
`any_books`); what edits rows behind the repositories' back, or races threads, on the databases."""

import sqlite3
import threading
from datetime import date, timedelta

import pytest
from sqlalchemy import insert, text, update
from sqlalchemy.exc import IntegrityError

from gasworks.adapters.db import tables as t
from gasworks.domain.channels import PaymentNotice
from gasworks.domain.errors import GasworksError
from gasworks.domain.ledger import REFUNDS, TransactionKind
from gasworks.domain.payments import IllegalTransition, PaymentState, check_transition
from gasworks.services import holds, reconciliation
from gasworks.services.cards import CardRead, CardWrite, confirm_card_write, read_card
from gasworks.services.checks import check_ledger
from gasworks.services.intake import accept_payment
from gasworks.services.timeline import payment_timeline
from tests.conftest import make_system
from tests.fakes import FakeSystem
from tests.support import ACCOUNT_NO, OTHER_ACCOUNT_NO, balance_fen, set_up

CARD_NO = "C0000000000002"
CARD_SERIAL = "00000000000002"


@pytest.fixture
def books(system):
    set_up(system)
    return system


@pytest.fixture
def any_books(any_system):
    """set_up's channels and accounts on the fakes and on both databases (conftest's any_system)."""
    set_up(any_system)
    return any_system


def pay(system, txn: str, amount_fen: int, account_no: str = ACCOUNT_NO, channel: str = "wo-wallet"):
    notice = PaymentNotice(channel_id=channel, channel_txn_id=txn, amount_fen=amount_fen, paid_at=system.clock.now() - timedelta(minutes=5), account_no=account_no)
    return accept_payment(notice, system.new_uow())


def ledger_kinds(system, payment_id: str) -> list[str]:
    """The kinds of the ledger transactions naming the payment, read from the store (no port lists them)."""
    if isinstance(system, FakeSystem):
        return sorted(t.kind for t in system.db.tables.ledger_transactions.values() if t.payment_id == payment_id)
    with system.engine.connect() as c:
        return sorted(r.kind for r in c.execute(t.ledger_transactions.select().where(t.ledger_transactions.c.payment_id == payment_id)))


def test_the_life_cycle_refuses_what_it_does_not_have():
    assert check_transition(PaymentState.HELD, PaymentState.REFUND_REQUESTED) == TransactionKind.REFUND_REQUESTED
    assert check_transition(PaymentState.BOOKED, PaymentState.REVERSED) == TransactionKind.PAYMENT_REVERSED
    for current, new, code in [
        (PaymentState.REVERSED, PaymentState.REVERSED, "PAYMENT_ALREADY_REVERSED"),
        (PaymentState.REFUNDED, PaymentState.REVERSED, "PAYMENT_ALREADY_REFUNDED"),
        (PaymentState.REFUND_REQUESTED, PaymentState.BOOKED, "PAYMENT_ALREADY_REFUND_REQUESTED"),
        (PaymentState.BOOKED, PaymentState.REFUND_REQUESTED, "PAYMENT_TRANSITION_ILLEGAL"),
        (PaymentState.BOOKED, PaymentState.HELD, "PAYMENT_TRANSITION_ILLEGAL"),
    ]:
        with pytest.raises(IllegalTransition) as refused:
            check_transition(current, new)
        assert refused.value.code == code and refused.value.http_status == 409


def plain_statement(lines: list[tuple[str, str, int]], day: date) -> bytes:
    body = "txn_id,account_no,amount_fen,paid_at,status\n"
    body += "".join(f"{txn},{account},{fen},{day.isoformat()}T10:00:00+08:00,SUCCESS\n" for txn, account, fen in lines)
    return (body + f"# total,{len(lines)},{sum(fen for _, _, fen in lines)}\n").encode()


def test_importing_a_day_twice_and_reversing_twice_moves_the_money_once(any_books):
    """The reported hole: two statement files for one day, "reverse" decided on both: two reversals."""
    system = any_books
    day = system.clock.now().date()
    lost = pay(system, "WO-NEVER-COLLECTED", 10_000)
    pay(system, "WO-REAL-1", 3_000)
    runs = []
    for lines in ([("WO-REAL-1", ACCOUNT_NO, 3_000)], [("WO-REAL-1", ACCOUNT_NO, 3_000), ("WO-OTHER", OTHER_ACCOUNT_NO, 1)]):
        imported = reconciliation.import_statement(channel_id="wo-wallet", statement_date=day, filename="s.csv", raw=plain_statement(lines, day), uow=system.new_uow(), actor="test")
        runs.append(reconciliation.reconcile(file_id=imported.file_id, uow_factory=system.new_uow, actor="test"))
    unknown = [d for r in runs for d in r.discrepancies if d.payment_id == lost.payment_id]
    assert len(unknown) == 2, "each import of the day finds the payment the channel never collected"
    with system.new_uow() as uow:
        clearing_before = uow.ledger.entries_sum_fen("clearing:wo-wallet")
    first = reconciliation.decide(unknown[0].id, "reverse", "the wallet never collected it", system.new_uow(), actor="op:wang")
    assert first.state == "resolved"
    with pytest.raises(IllegalTransition) as second:
        reconciliation.decide(unknown[1].id, "reverse", "the wallet never collected it", system.new_uow(), actor="op:li")
    assert second.value.code == "PAYMENT_ALREADY_REVERSED" and "discrepancy" in second.value.message, "the second answer says what the first did"
    with system.new_uow() as uow:
        assert uow.payments.get(lost.payment_id).state == PaymentState.REVERSED
        assert uow.ledger.entries_sum_fen("clearing:wo-wallet") == clearing_before - 10_000
    assert ledger_kinds(system, lost.payment_id).count(TransactionKind.PAYMENT_REVERSED) == 1
    report = check_ledger(system.new_uow())
    assert report.ok, report.findings


def test_a_reversal_after_the_gas_was_bought_leaves_arrears_paid_first_by_the_next_payment(any_books):
    system = any_books
    first = pay(system, "WO-A-1", 10_000, account_no=OTHER_ACCOUNT_NO)
    with system.new_uow() as uow:
        (order,) = uow.meter_commands.for_payment(first.payment_id)
    remainder = balance_fen(system, OTHER_ACCOUNT_NO)
    assert order.cost_fen == 10_000 - remainder
    holds.record_external_refund(first.payment_id, evidence="refund line in the wallet's statement", uow=system.new_uow(), actor="op:wang")
    assert balance_fen(system, OTHER_ACCOUNT_NO) == remainder - 10_000 < 0, "the gas stays bought: the account owes it"
    report = check_ledger(system.new_uow())
    assert report.ok and report.arrears == (1, 10_000 - remainder)
    small = pay(system, "WO-A-2", 2_000, account_no=OTHER_ACCOUNT_NO)
    with system.new_uow() as uow:
        assert uow.meter_commands.for_payment(small.payment_id) == [], "nothing bought while the account owes"
    shown = payment_timeline(small.payment_id, system.new_uow(), hotline="12319")
    assert shown.status == "ARREARS" and "owes" in shown.headline.en
    big = pay(system, "WO-A-3", 20_000, account_no=OTHER_ACCOUNT_NO)
    with system.new_uow() as uow:
        (bought,) = uow.meter_commands.for_payment(big.payment_id)
    owed_before = 10_000 - remainder - 2_000
    assert bought.cost_fen + balance_fen(system, OTHER_ACCOUNT_NO) == 20_000 - owed_before
    report = check_ledger(system.new_uow())
    assert report.ok and report.arrears == (0, 0)
    with pytest.raises(IllegalTransition):
        holds.record_external_refund(first.payment_id, evidence="again", uow=system.new_uow(), actor="op:wang")


def test_the_database_refuses_a_second_reversal_of_one_payment(books):
    system = books
    taken = pay(system, "WO-U-1", 5_000)
    row = {"kind": TransactionKind.PAYMENT_REVERSED.value, "payment_id": taken.payment_id, "at": system.clock.now(), "memo": "by hand"}
    with system.engine.begin() as c:
        c.execute(insert(t.ledger_transactions).values(**row))
    with pytest.raises(IntegrityError), system.engine.begin() as c:
        c.execute(insert(t.ledger_transactions).values(**row))


def test_check_names_the_payment_whose_state_differs_from_its_money(books):
    system = books
    taken = pay(system, "WO-C-1", 5_000)
    assert check_ledger(system.new_uow()).ok
    with system.engine.begin() as c:  # someone edits the state behind the life cycle's back
        c.execute(update(t.payments).where(t.payments.c.id == taken.payment_id).values(state="reversed"))
    findings = {(f.code, f.subject.split(" and ")[0]) for f in check_ledger(system.new_uow()).findings}
    assert ("PAYMENT_STATE_DIFFERS_FROM_LEDGER", f"payment {taken.payment_id}") in findings
    assert ("PAYMENT_MONEY_NOT_WHERE_STATE_SAYS", f"payment {taken.payment_id}") in findings


def test_check_finds_money_moved_for_no_payment(books):
    system = books
    pay(system, "WO-N-1", 5_000)
    with system.engine.begin() as c:  # what the old reconciliation "reverse" posted: a reversal naming no payment
        txn_id = c.execute(insert(t.ledger_transactions).values(kind="payment_reversed", payment_id=None, at=system.clock.now(), memo="")).inserted_primary_key[0]
        c.execute(insert(t.ledger_entries), [
            {"transaction_id": txn_id, "account_code": f"prepaid:{ACCOUNT_NO}", "amount_fen": 5_000},
            {"transaction_id": txn_id, "account_code": "clearing:wo-wallet", "amount_fen": -5_000},
        ])  # fmt: skip
        c.execute(text("UPDATE ledger_accounts SET entries_sum_fen = entries_sum_fen + 5000 WHERE code = :code"), {"code": f"prepaid:{ACCOUNT_NO}"})
    codes = {f.code for f in check_ledger(system.new_uow()).findings}
    assert "MONEY_MOVED_FOR_NO_PAYMENT" in codes


@pytest.mark.postgres
def test_two_operators_refunding_one_hold_at_once_move_the_money_once(postgres_only_url, clock):
    system = make_system(postgres_only_url, clock)
    set_up(system)
    held = pay(system, "WO-H-1", 4_000, account_no="9999999999")
    assert held.state == PaymentState.HELD
    start, answers = threading.Barrier(4), []

    def decide() -> None:
        start.wait()
        try:
            answers.append(holds.decide_hold(held.payment_id, holds.HoldDecision.REFUND, reason="no such customer", uow=system.new_uow(), actor="op").state)
        except GasworksError as refused:
            answers.append(refused.code)

    threads = [threading.Thread(target=decide) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == ["HOLD_NOT_OPEN"] * 3 + [PaymentState.REFUND_REQUESTED]
    assert ledger_kinds(system, held.payment_id) == [TransactionKind.PAYMENT_HELD, TransactionKind.REFUND_REQUESTED]
    with system.new_uow() as uow:
        assert -uow.ledger.entries_sum_fen(REFUNDS) == 4_000
    assert check_ledger(system.new_uow()).ok
    system.engine.dispose()


def write_card_and_insert_it(system) -> None:
    """A kiosk writes every pending purchase to the card; the resident inserts it; the card comes
    back showing the meter applied them all."""
    with system.new_uow() as uow:
        link = uow.meters.get(CARD_SERIAL)
    seq = link.card_purchase_seq
    answer = read_card(CardRead(CARD_NO, CARD_SERIAL, seq, min(seq, link.applied_seq)), system.new_uow(), actor="kiosk")
    for order in answer.to_write:
        confirm_card_write(CardWrite(CARD_NO, CARD_SERIAL, order.purchase_seq, order.purchase_seq), system.new_uow(), actor="kiosk")
        seq = order.purchase_seq
    read_card(CardRead(CARD_NO, CARD_SERIAL, seq, seq), system.new_uow(), actor="kiosk")


def test_a_requested_refund_is_confirmed_by_the_refund_line_in_the_channels_statement(any_books):
    system = any_books
    day = system.clock.now().date()
    held = pay(system, "WO-R-1", 4_000, account_no="9999999999")
    holds.decide_hold(held.payment_id, holds.HoldDecision.REFUND, reason="no such customer", uow=system.new_uow(), actor="op")
    raw = (f"txn_id,account_no,amount_fen,paid_at,status\nWO-R-1,9999999999,4000,{day.isoformat()}T16:00:00+08:00,SUCCESS\nWO-R-1,9999999999,4000,{day.isoformat()}T16:30:00+08:00,REFUND\n# total,2,4000\n").encode()
    imported = reconciliation.import_statement(channel_id="wo-wallet", statement_date=day, filename="s.csv", raw=raw, uow=system.new_uow(), actor="test")
    report = reconciliation.reconcile(file_id=imported.file_id, uow_factory=system.new_uow, actor="test")
    (confirmed,) = [d for d in report.discrepancies if d.payment_id == held.payment_id]
    assert confirmed.state == "repaired" and "refund confirmed" in confirmed.detail
    with system.new_uow() as uow:
        assert uow.payments.get(held.payment_id).state == PaymentState.REFUNDED
        assert uow.ledger.entries_sum_fen(REFUNDS) == 0
    assert report.verdict == "repaired" and check_ledger(system.new_uow()).ok


def test_check_finds_money_on_another_account_and_transactions_of_a_deleted_payment(books):
    system = books
    moved = pay(system, "WO-M-1", 5_000)
    gone = pay(system, "WO-M-2", 3_000, account_no="9999999999")
    assert check_ledger(system.new_uow()).ok
    with system.engine.begin() as c:  # behind the life cycle's back: the payment now names another account
        c.execute(update(t.payments).where(t.payments.c.id == moved.payment_id).values(account_no=OTHER_ACCOUNT_NO))
    findings = {(f.code, f.subject) for f in check_ledger(system.new_uow()).findings}
    assert ("PAYMENT_MONEY_NOT_WHERE_STATE_SAYS", f"payment {moved.payment_id}") in findings
    if system.engine.dialect.name == "postgresql":  # refused outright: its timeline refers to it
        with pytest.raises(IntegrityError), system.engine.begin() as c:
            c.execute(t.payments.delete().where(t.payments.c.id == gone.payment_id))
        return
    shell = sqlite3.connect(system.engine.url.database)  # the sqlite3 shell: foreign keys off by default
    with shell:
        shell.execute("DELETE FROM payments WHERE id = ?", (gone.payment_id,))
    shell.close()
    findings = {f.code for f in check_ledger(system.new_uow()).findings}
    assert "MONEY_MOVED_FOR_NO_PAYMENT" in findings


def test_a_statement_line_that_cannot_be_booked_leaves_the_day_unclean_and_the_rest_reconciled(books):
    """Found from outside: a line reusing a known transaction id with other content aborted the run
    after booking earlier lines, and the day could never be reconciled; a held repair said "repaired"."""
    system = books
    day = system.clock.now().date()
    known = pay(system, "WO-K-1", 100)
    with system.engine.begin() as c:  # booked long before this statement's days
        c.execute(update(t.payments).where(t.payments.c.id == known.payment_id).values(received_at=system.clock.now() - timedelta(days=30)))
    lines = [("WO-NEW-1", ACCOUNT_NO, 400), ("WO-K-1", OTHER_ACCOUNT_NO, 100), ("WO-NEW-2", "9999999999", 700)]
    imported = reconciliation.import_statement(channel_id="wo-wallet", statement_date=day, filename="s.csv", raw=plain_statement(lines, day), uow=system.new_uow(), actor="test")
    report = reconciliation.reconcile(file_id=imported.file_id, uow_factory=system.new_uow, actor="test")
    by_txn = {d.channel_txn_id: d for d in report.discrepancies}
    assert by_txn["WO-NEW-1"].state == "repaired"
    assert by_txn["WO-K-1"].state == "open" and "TXN_ID_CONFLICT" in by_txn["WO-K-1"].detail
    assert by_txn["WO-NEW-2"].state == "open" and "decide the hold" in by_txn["WO-NEW-2"].detail
    assert report.verdict == "unclean"
    with system.new_uow() as uow:
        assert uow.payments.get_by_channel_txn("wo-wallet", "WO-NEW-2").state == PaymentState.HELD
    closed = reconciliation.decide(by_txn["WO-NEW-2"].id, "accept", "hold credited after a call", system.new_uow(), actor="op")
    assert closed.state == "resolved"
    assert check_ledger(system.new_uow()).ok


@pytest.mark.parametrize(
    ("line", "reason"),
    [(",4301000001,100,", "transaction id"), ("WO-BIG,4301000001,18446744073709551616,", "beyond any real payment"), ("WO-BIG,4301000001,10000000001,", "beyond any real payment")],
)
def test_a_statement_line_without_a_transaction_or_with_impossible_money_refuses_the_file(any_books, line, reason):
    system = any_books
    day = system.clock.now().date()
    amount = int(line.split(",")[2])
    raw = f"txn_id,account_no,amount_fen,paid_at,status\n{line}{day}T10:00:00+08:00,SUCCESS\n# total,1,{amount}\n".encode()
    with pytest.raises(GasworksError) as refused:
        reconciliation.import_statement(channel_id="wo-wallet", statement_date=day, filename="s.csv", raw=raw, uow=system.new_uow(), actor="test")
    assert "line 2" in refused.value.message and reason in refused.value.message
    with system.new_uow() as uow:
        assert uow.statements.find("wo-wallet", day, __import__("hashlib").sha256(raw).hexdigest()) is None


def test_a_refund_is_confirmed_only_when_one_was_requested_and_external_only_when_none_was(any_books):
    system = any_books
    booked = pay(system, "WO-F-1", 2_000)
    with pytest.raises(IllegalTransition) as refused:
        holds.confirm_refund(booked.payment_id, evidence="x", uow=system.new_uow(), actor="op")
    assert refused.value.code == "REFUND_NOT_REQUESTED"
    held = pay(system, "WO-F-2", 2_000, account_no="9999999999")
    holds.decide_hold(held.payment_id, holds.HoldDecision.REFUND, reason="unknown", uow=system.new_uow(), actor="op")
    with pytest.raises(IllegalTransition) as refused:
        holds.record_external_refund(held.payment_id, evidence="x", uow=system.new_uow(), actor="op")
    assert refused.value.code == "REFUND_REQUESTED_CONFIRM_IT"
    assert ledger_kinds(system, booked.payment_id) == [TransactionKind.PAYMENT_BOOKED, TransactionKind.PURCHASE]
    assert check_ledger(system.new_uow()).ok


@pytest.mark.postgres
def test_racing_decisions_on_one_payment_answer_409_never_500(postgres_only_url, clock):
    system = make_system(postgres_only_url, clock)
    set_up(system)
    booked = pay(system, "WO-RACE-1", 6_000)
    start, answers = threading.Barrier(6), []

    def refund() -> None:
        start.wait()
        try:
            answers.append(holds.record_external_refund(booked.payment_id, evidence="statement", uow=system.new_uow(), actor="op").state)
        except GasworksError as refused:
            answers.append(refused.code)

    threads = [threading.Thread(target=refund) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers.count(PaymentState.REFUNDED) == 1 and len(answers) == 6
    assert set(answers) - {PaymentState.REFUNDED} <= {"PAYMENT_ALREADY_REFUNDED", "PAYMENT_DECIDED_MEANWHILE"}
    assert ledger_kinds(system, booked.payment_id).count(TransactionKind.REFUND_EXTERNAL) == 1
    assert check_ledger(system.new_uow()).ok
    system.engine.dispose()


def test_a_hold_above_the_ceiling_is_not_credited_whole(any_books):
    system = any_books
    above = pay(system, "WO-CEIL-1", 5_000)  # below the ceiling: booked
    assert above.state == PaymentState.BOOKED
    notice = PaymentNotice(channel_id="wechat", channel_txn_id="4200777", amount_fen=system.payment_ceiling.fen_max + 1, paid_at=None, out_trade_no="GW-NONE")
    held = accept_payment(notice, system.new_uow())  # money WeChat already took: held, never refused
    assert held.state == PaymentState.HELD
    with pytest.raises(GasworksError) as refused:
        holds.decide_hold(held.payment_id, holds.HoldDecision.CREDIT, reason="found", account_no=ACCOUNT_NO, uow=system.new_uow(), actor="op")
    assert refused.value.code == "AMOUNT_ABOVE_LIMIT"
    with system.new_uow() as uow:
        assert uow.payments.get(held.payment_id).state == PaymentState.HELD
    assert check_ledger(system.new_uow()).ok
