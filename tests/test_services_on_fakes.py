"""The money path's use cases, run on the in-memory fakes (tests/fakes.py): the whole file in seconds.

Each mirrors what a SQL-backed test asserts through HTTP or the database (named in its docstring);
those stay as they are. tests/test_repository_contract.py keeps the fakes honest to SQL.
"""

import copy
from datetime import date, timedelta

import pytest

from gasworks.domain.accounts import MeterKind
from gasworks.domain.channels import PaymentNotice
from gasworks.domain.clock import FixedClock
from gasworks.domain.errors import Conflict, GasworksError, IntakeRefused, InvalidInput
from gasworks.domain.ledger import SUSPENSE, TransactionKind
from gasworks.domain.payments import HoldReason, IllegalTransition, PaymentState
from gasworks.services import accounts, holds, orders, reconciliation
from gasworks.services.cards import CardRead, CardWrite, confirm_card_write, read_card
from gasworks.services.checks import check_ledger
from gasworks.services.intake import Refusal, accept_payment, record_refusal
from gasworks.services.outbound import OutboundPolicy, configure_gateway, recover_orders
from gasworks.services.timeline import payment_timeline
from tests.conftest import START
from tests.fakes import FakeChannel, FakeSystem, Tables
from tests.support import ACCOUNT_NO, OTHER_ACCOUNT_NO, balance_fen, credited_fen, set_up

UNKNOWN_ACCOUNT_NO = "9999999999"


@pytest.fixture(scope="module")
def set_up_books() -> Tables:
    """The channels and accounts of tests/support.set_up, made once (its keys are slow to make) and copied."""
    system = FakeSystem(FixedClock(START))
    set_up(system)
    return system.db.tables


@pytest.fixture
def fake(set_up_books: Tables) -> FakeSystem:
    system = FakeSystem(FixedClock(START))
    system.db.tables = copy.deepcopy(set_up_books)
    return system


def pay(system: FakeSystem, txn: str, amount_fen: int, account_no: str = ACCOUNT_NO, channel: str = "wo-wallet", nonce: str | None = None):
    notice = PaymentNotice(
        channel_id=channel, channel_txn_id=txn, amount_fen=amount_fen, paid_at=system.clock.now() - timedelta(minutes=5), account_no=account_no, replay_nonce=nonce
    )  # fmt: skip
    return accept_payment(notice, system.new_uow())


def pay_order(system: FakeSystem, txn: str, out_trade_no: str, amount_fen: int):
    notice = PaymentNotice(channel_id="wechat", channel_txn_id=txn, amount_fen=amount_fen, paid_at=system.clock.now(), out_trade_no=out_trade_no)
    return accept_payment(notice, system.new_uow())


def ledger_kinds(system: FakeSystem, payment_id: str) -> list[str]:
    return sorted(t.kind for t in system.db.tables.ledger_transactions.values() if t.payment_id == payment_id)


def suspense_fen(system: FakeSystem) -> int:
    with system.new_uow() as uow:
        return -uow.ledger.entries_sum_fen(SUSPENSE)


def assert_books_hold(system: FakeSystem) -> None:
    report = check_ledger(system.new_uow())
    assert report.ok, report.findings


def test_an_opened_account_has_a_zero_balance_and_its_number_and_meter_are_its_own(fake):
    """As test_channel_intake's operator opening an account, and the refusals of a second one."""
    shown = accounts.get_account(ACCOUNT_NO, fake.new_uow())
    assert shown.balance_fen == 0 and shown.customer.meter.kind == MeterKind.IOT
    again = accounts.OpenAccount(ACCOUNT_NO, "李四", "蒸湘区 2 栋", "华新苑", "G-01", "13900000000", "00000000000099", MeterKind.CARD)
    with pytest.raises(Conflict) as refused:
        accounts.open_account(again, fake.new_uow(), actor="test")
    assert refused.value.code == "ACCOUNT_EXISTS"
    same_meter = accounts.OpenAccount("4301000099", "李四", "蒸湘区 2 栋", "华新苑", "G-01", "13900000000", "00000000000001", MeterKind.CARD)
    with pytest.raises(Conflict) as refused:
        accounts.open_account(same_meter, fake.new_uow(), actor="test")
    assert refused.value.code == "METER_TAKEN"
    with fake.new_uow() as uow:
        assert uow.audit.count_actions("account.open") == 2, "the two of set_up, none for the refused"
        assert uow.meter_keys.key("00000000000001", 1) is not None, "an IoT meter gets its first key when its account opens"
    assert_books_hold(fake)


def test_a_payment_is_booked_once_and_its_retry_gets_the_first_answer(fake):
    """As test_wallet_retry_returns_the_first_answer and test_duplicate_notification_books_nothing_more."""
    first = pay(fake, "WO-0002", 2_000)
    again = pay(fake, "WO-0002", 2_000)
    assert first.state == PaymentState.BOOKED and not first.duplicate
    assert again.payment_id == first.payment_id and again.duplicate
    assert credited_fen(fake, ACCOUNT_NO) == 2_000
    with fake.new_uow() as uow:
        (bought,) = uow.meter_commands.for_payment(first.payment_id)
        assert bought.purchase_seq == 1 and bought.cost_fen == 2_000 - balance_fen(fake, ACCOUNT_NO)
        assert uow.payments.totals_by_state() == {"booked": (1, 2_000)}
    assert fake.db.tables.announced == ["00000000000001"], "the worker is told once, at the booking's commit"
    assert ledger_kinds(fake, first.payment_id) == [TransactionKind.PAYMENT_BOOKED, TransactionKind.PURCHASE]
    assert_books_hold(fake)


def test_a_retry_with_a_different_amount_is_a_conflict_and_the_first_stands(fake):
    """As test_wallet_retry_with_a_different_amount_is_a_conflict_and_the_first_stands."""
    first = pay(fake, "WO-0003", 2_000)
    with pytest.raises(Conflict) as refused:
        pay(fake, "WO-0003", 9_000)
    assert refused.value.code == "TXN_ID_CONFLICT" and first.payment_id in refused.value.message
    assert pay(fake, "WO-0003", 2_000).payment_id == first.payment_id
    assert credited_fen(fake, ACCOUNT_NO) == 2_000
    assert_books_hold(fake)


def test_a_reused_nonce_is_refused_and_books_nothing(fake):
    """As test_wallet_reused_nonce_is_refused: the nonce is claimed with the first payment."""
    pay(fake, "WO-N-1", 2_000, nonce="n-1")
    with pytest.raises(IntakeRefused) as refused:
        pay(fake, "WO-N-2", 3_000, nonce="n-1")
    assert refused.value.code == "NONCE_REUSED"
    assert credited_fen(fake, ACCOUNT_NO) == 2_000
    with fake.new_uow() as uow:
        assert uow.payments.get_by_channel_txn("wo-wallet", "WO-N-2") is None


def test_a_refused_request_is_kept(fake):
    record_refusal(Refusal(channel_id="wo-wallet", code="BAD_SIGNATURE", message="x" * 900, remote_addr="10.0.0.9"), fake.new_uow())
    with fake.new_uow() as uow:
        (kept,) = uow.rejections.list(limit=10, channel_id="wo-wallet")
    assert kept["code"] == "BAD_SIGNATURE" and len(kept["message"]) == 500


def test_money_above_the_ceiling_on_a_synchronous_channel_is_refused_and_nothing_is_written(fake):
    """A use case that raises leaves nothing behind: the claim and the nonce roll back."""
    notice = PaymentNotice(channel_id="kiosk", channel_txn_id="K-1", amount_fen=fake.payment_ceiling.fen_max + 1, paid_at=None, account_no=ACCOUNT_NO, replay_nonce="k-n-1")
    with pytest.raises(InvalidInput) as refused:
        accept_payment(notice, fake.new_uow(), refuse_above_ceiling=True)
    assert refused.value.code == "AMOUNT_ABOVE_LIMIT"
    with fake.new_uow() as uow:
        assert uow.payments.get_by_channel_txn("kiosk", "K-1") is None
    assert fake.db.tables.nonces == {}
    assert pay(fake, "K-2", 1_000, channel="kiosk", nonce="k-n-1").state == PaymentState.BOOKED, "the nonce was never used"


def test_a_payment_for_an_unknown_account_is_held_in_suspense(fake):
    """As test_wallet_payment_for_an_unknown_account_is_held."""
    held = pay(fake, "WO-0004", 2_000, account_no=UNKNOWN_ACCOUNT_NO)
    assert held.state == PaymentState.HELD and held.hold_reason == HoldReason.UNKNOWN_ACCOUNT
    assert suspense_fen(fake) == 2_000
    with fake.new_uow() as uow:
        assert [p.id for p in uow.payments.list_in_state(PaymentState.HELD, 10)] == [held.payment_id]
    assert_books_hold(fake)


def test_orders_are_paid_once_and_a_mismatch_is_held(fake):
    """As test_second_payment_for_a_paid_order_is_held, test_amount_mismatch_is_held_in_suspense_not_credited
    and test_notification_for_an_unknown_order_goes_to_suspense."""
    order = orders.create_order(channel_id="wechat", account_no=ACCOUNT_NO, amount_fen=5_000, ceiling=fake.payment_ceiling, uow=fake.new_uow())
    assert pay_order(fake, "4200000010", order.out_trade_no, 5_000).state == PaymentState.BOOKED
    second = pay_order(fake, "4200000011", order.out_trade_no, 5_000)
    assert second.hold_reason == HoldReason.ORDER_ALREADY_PAID
    other = orders.create_order(channel_id="wechat", account_no=ACCOUNT_NO, amount_fen=5_000, ceiling=fake.payment_ceiling, uow=fake.new_uow())
    assert pay_order(fake, "4200000008", other.out_trade_no, 4_000).hold_reason == HoldReason.AMOUNT_MISMATCH
    assert pay_order(fake, "4200000009", "GW20261123NOSUCHORDER", 2_500).hold_reason == HoldReason.UNKNOWN_ORDER
    assert credited_fen(fake, ACCOUNT_NO) == 5_000 and suspense_fen(fake) == 5_000 + 4_000 + 2_500
    assert orders.get_order(other.out_trade_no, fake.new_uow()).state.value == "open"
    assert_books_hold(fake)


def test_an_operator_credits_a_hold_and_it_buys_gas_once(fake):
    """As test_an_operator_credits_a_held_payment_to_the_right_account_and_it_buys_gas."""
    held = pay(fake, "WO-0200", 2_000, account_no=UNKNOWN_ACCOUNT_NO)
    credited = holds.decide_hold(held.payment_id, holds.HoldDecision.CREDIT, reason="resident typed a wrong digit", account_no=ACCOUNT_NO, uow=fake.new_uow(), actor="op")
    assert credited.state == PaymentState.BOOKED and credited.account_no == ACCOUNT_NO
    assert suspense_fen(fake) == 0 and credited_fen(fake, ACCOUNT_NO) == 2_000
    with fake.new_uow() as uow:
        assert [c.purchase_seq for c in uow.meter_commands.for_payment(held.payment_id)] == [1]
    with pytest.raises(IllegalTransition) as refused:
        holds.decide_hold(held.payment_id, holds.HoldDecision.REFUND, reason="twice", uow=fake.new_uow(), actor="op")
    assert refused.value.code == "HOLD_NOT_OPEN"
    with fake.new_uow() as uow:
        assert [a["action"] for a in uow.audit.list(limit=10, subject=f"payment:{held.payment_id}")] == ["hold.credit"]
    assert_books_hold(fake)


def test_a_refund_is_requested_until_the_channel_confirms_it(fake):
    """As test_a_refund_is_requested_until_the_channel_confirms_it (there through HTTP)."""
    held = pay(fake, "WO-0201", 2_000, account_no=UNKNOWN_ACCOUNT_NO)
    with fake.new_uow() as uow:
        owed_before = uow.ledger.entries_sum_fen("clearing:wo-wallet")
    requested = holds.decide_hold(held.payment_id, holds.HoldDecision.REFUND, reason="no such customer", uow=fake.new_uow(), actor="op")
    assert requested.state == PaymentState.REFUND_REQUESTED
    with fake.new_uow() as uow:
        assert uow.ledger.entries_sum_fen("clearing:wo-wallet") == owed_before, "nothing has gone back yet"
        assert -uow.ledger.entries_sum_fen("refunds") == 2_000
    assert suspense_fen(fake) == 0
    assert_books_hold(fake)
    confirmed = holds.confirm_refund(held.payment_id, evidence="WO refund R-1", uow=fake.new_uow(), actor="op")
    assert confirmed.state == PaymentState.REFUNDED
    with pytest.raises(IllegalTransition) as refused:
        holds.confirm_refund(held.payment_id, evidence="again", uow=fake.new_uow(), actor="op")
    assert refused.value.code == "PAYMENT_ALREADY_REFUNDED" and "refund confirmed by wo-wallet" in refused.value.message
    with fake.new_uow() as uow:
        assert uow.ledger.entries_sum_fen("clearing:wo-wallet") == owed_before - 2_000
        assert uow.ledger.entries_sum_fen("refunds") == 0
    assert ledger_kinds(fake, held.payment_id) == [TransactionKind.PAYMENT_HELD, TransactionKind.REFUND_CONFIRMED, TransactionKind.REFUND_REQUESTED]
    assert_books_hold(fake)


def test_a_refund_is_confirmed_only_when_one_was_requested_and_external_only_when_none_was(fake):
    """As the test of the same name in test_payment_life_cycle."""
    booked = pay(fake, "WO-F-1", 2_000)
    with pytest.raises(IllegalTransition) as refused:
        holds.confirm_refund(booked.payment_id, evidence="x", uow=fake.new_uow(), actor="op")
    assert refused.value.code == "REFUND_NOT_REQUESTED"
    held = pay(fake, "WO-F-2", 2_000, account_no=UNKNOWN_ACCOUNT_NO)
    holds.decide_hold(held.payment_id, holds.HoldDecision.REFUND, reason="unknown", uow=fake.new_uow(), actor="op")
    with pytest.raises(IllegalTransition) as refused:
        holds.record_external_refund(held.payment_id, evidence="x", uow=fake.new_uow(), actor="op")
    assert refused.value.code == "REFUND_REQUESTED_CONFIRM_IT"
    assert ledger_kinds(fake, booked.payment_id) == [TransactionKind.PAYMENT_BOOKED, TransactionKind.PURCHASE]
    assert_books_hold(fake)


def plain_statement(lines: list[tuple[str, str, int]], day: date) -> bytes:
    body = "txn_id,account_no,amount_fen,paid_at,status\n"
    body += "".join(f"{txn},{account},{fen},{day.isoformat()}T10:00:00+08:00,SUCCESS\n" for txn, account, fen in lines)
    return (body + f"# total,{len(lines)},{sum(fen for _, _, fen in lines)}\n").encode()


def test_importing_a_day_twice_and_reversing_twice_moves_the_money_once(fake):
    """As the test of the same name in test_payment_life_cycle: statements, the matcher and decisions on fakes."""
    day = fake.clock.now().date()
    lost = pay(fake, "WO-NEVER-COLLECTED", 10_000)
    pay(fake, "WO-REAL-1", 3_000)
    runs = []
    for lines in ([("WO-REAL-1", ACCOUNT_NO, 3_000)], [("WO-REAL-1", ACCOUNT_NO, 3_000), ("WO-OTHER", OTHER_ACCOUNT_NO, 1)]):
        imported = reconciliation.import_statement(channel_id="wo-wallet", statement_date=day, filename="s.csv", raw=plain_statement(lines, day), uow=fake.new_uow(), actor="test")
        runs.append(reconciliation.reconcile(file_id=imported.file_id, uow_factory=fake.new_uow, actor="test"))
    unknown = [d for r in runs for d in r.discrepancies if d.payment_id == lost.payment_id]
    assert len(unknown) == 2, "each import of the day finds the payment the channel never collected"
    with fake.new_uow() as uow:
        clearing_before = uow.ledger.entries_sum_fen("clearing:wo-wallet")
    first = reconciliation.decide(unknown[0].id, "reverse", "the wallet never collected it", fake.new_uow(), actor="op:wang")
    assert first.state == "resolved"
    with pytest.raises(IllegalTransition) as second:
        reconciliation.decide(unknown[1].id, "reverse", "the wallet never collected it", fake.new_uow(), actor="op:li")
    assert second.value.code == "PAYMENT_ALREADY_REVERSED" and "discrepancy" in second.value.message, "the second answer says what the first did"
    with fake.new_uow() as uow:
        assert uow.payments.get(lost.payment_id).state == PaymentState.REVERSED
        assert uow.ledger.entries_sum_fen("clearing:wo-wallet") == clearing_before - 10_000
    assert ledger_kinds(fake, lost.payment_id).count(TransactionKind.PAYMENT_REVERSED) == 1
    report = check_ledger(fake.new_uow())
    assert report.ok, report.findings
    again = reconciliation.import_statement(
        channel_id="wo-wallet", statement_date=day, filename="s.csv", raw=plain_statement([("WO-REAL-1", ACCOUNT_NO, 3_000)], day), uow=fake.new_uow(), actor="test"
    )  # fmt: skip
    assert not again.new, "the same content twice is one import"


def test_a_reversal_after_the_gas_was_bought_leaves_arrears_paid_first_by_the_next_payment(fake):
    """As the test of the same name in test_payment_life_cycle."""
    first = pay(fake, "WO-A-1", 10_000, account_no=OTHER_ACCOUNT_NO)
    with fake.new_uow() as uow:
        (order,) = uow.meter_commands.for_payment(first.payment_id)
    remainder = balance_fen(fake, OTHER_ACCOUNT_NO)
    assert order.cost_fen == 10_000 - remainder
    holds.record_external_refund(first.payment_id, evidence="refund line in the wallet's statement", uow=fake.new_uow(), actor="op:wang")
    assert balance_fen(fake, OTHER_ACCOUNT_NO) == remainder - 10_000 < 0
    report = check_ledger(fake.new_uow())
    assert report.ok and report.arrears == (1, 10_000 - remainder)
    small = pay(fake, "WO-A-2", 2_000, account_no=OTHER_ACCOUNT_NO)
    with fake.new_uow() as uow:
        assert uow.meter_commands.for_payment(small.payment_id) == [], "nothing bought while the account owes"
    shown = payment_timeline(small.payment_id, fake.new_uow(), hotline="12319")
    assert shown.status == "ARREARS" and "owes" in shown.headline.en
    big = pay(fake, "WO-A-3", 20_000, account_no=OTHER_ACCOUNT_NO)
    with fake.new_uow() as uow:
        (bought,) = uow.meter_commands.for_payment(big.payment_id)
    owed_before = 10_000 - remainder - 2_000
    assert bought.cost_fen + balance_fen(fake, OTHER_ACCOUNT_NO) == 20_000 - owed_before
    report = check_ledger(fake.new_uow())
    assert report.ok and report.arrears == (0, 0)
    with pytest.raises(IllegalTransition):
        holds.record_external_refund(first.payment_id, evidence="again", uow=fake.new_uow(), actor="op:wang")


def test_a_hold_above_the_ceiling_is_not_credited_whole(fake):
    """As the test of the same name in test_payment_life_cycle."""
    notice = PaymentNotice(channel_id="wechat", channel_txn_id="4200777", amount_fen=fake.payment_ceiling.fen_max + 1, paid_at=None, out_trade_no="GW-NONE")
    held = accept_payment(notice, fake.new_uow())
    assert held.state == PaymentState.HELD
    with pytest.raises(GasworksError) as refused:
        holds.decide_hold(held.payment_id, holds.HoldDecision.CREDIT, reason="found", account_no=ACCOUNT_NO, uow=fake.new_uow(), actor="op")
    assert refused.value.code == "AMOUNT_ABOVE_LIMIT"
    with fake.new_uow() as uow:
        assert uow.payments.get(held.payment_id).state == PaymentState.HELD
    assert_books_hold(fake)


def test_a_card_purchase_goes_read_write_applied(fake):
    """As test_a_card_purchase_goes_read_write_applied_and_the_timeline_follows, without HTTP."""
    paid = pay(fake, "WO-CARD-1", 10_000, account_no=OTHER_ACCOUNT_NO)
    card, serial = "C0000000000002", "00000000000002"
    first = read_card(CardRead(card, serial, 0, 0), fake.new_uow(), actor="kiosk")
    assert [(o.purchase_seq, o.volume_litres) for o in first.to_write] == [(1, 33_444)]
    order, changed = confirm_card_write(CardWrite(card, serial, 1, 1), fake.new_uow(), actor="kiosk")
    assert changed and order.state.value == "written_to_card"
    assert confirm_card_write(CardWrite(card, serial, 1, 1), fake.new_uow(), actor="kiosk")[1] is False, "a replayed confirmation changes nothing"
    assert payment_timeline(paid.payment_id, fake.new_uow(), hotline="12319").status == "CARD_WRITTEN"
    again = read_card(CardRead(card, serial, 1, 1), fake.new_uow(), actor="kiosk")
    assert [o.purchase_seq for o in again.applied_now] == [1] and again.to_write == []
    assert payment_timeline(paid.payment_id, fake.new_uow(), hotline="12319").status == "GAS_AVAILABLE"
    assert_books_hold(fake)


def test_check_names_the_payment_whose_state_differs_from_its_money(fake):
    """As the test of the same name in test_payment_life_cycle: the state edited behind the life cycle's back."""
    taken = pay(fake, "WO-C-1", 5_000)
    assert_books_hold(fake)
    fake.db.tables.payments[taken.payment_id].state = PaymentState.REVERSED
    findings = {(f.code, f.subject.split(" and ")[0]) for f in check_ledger(fake.new_uow()).findings}
    assert ("PAYMENT_STATE_DIFFERS_FROM_LEDGER", f"payment {taken.payment_id}") in findings
    assert ("PAYMENT_MONEY_NOT_WHERE_STATE_SAYS", f"payment {taken.payment_id}") in findings


def test_an_order_the_channel_never_notified_is_found_by_asking_and_booked_once(fake):
    """The worker's order recovery (services/outbound.recover_orders) asks the channel about open orders
    after ten minutes; a late notification books nothing more. As test_channel_jobs' order recovery, without HTTP."""
    wechat = FakeChannel("wechat", fake.clock)
    configure_gateway("wechat", "http://wechat.invalid", uow=fake.new_uow(), actor="test")
    policy = OutboundPolicy()

    def recover() -> int:
        return recover_orders(fake.new_uow, lambda channel_id: wechat if channel_id == "wechat" else None, policy).booked

    order = orders.create_order(channel_id="wechat", account_no=ACCOUNT_NO, amount_fen=5_000, ceiling=fake.payment_ceiling, uow=fake.new_uow())
    unpaid = orders.create_order(channel_id="wechat", account_no=ACCOUNT_NO, amount_fen=7_000, ceiling=fake.payment_ceiling, uow=fake.new_uow())
    late = wechat.collect(order.out_trade_no, "4200000100", 5_000)
    assert recover() == 0 and wechat.queries == 0, "the notification gets ten minutes first"
    fake.clock.advance(policy.query_after_s + 1)
    assert recover() == 1 and wechat.queries == 2
    assert credited_fen(fake, ACCOUNT_NO) == 5_000
    assert accept_payment(late, fake.new_uow()).duplicate, "the notification arriving after all books nothing more"
    fake.clock.advance(policy.order_backoff.first_s)  # the unpaid order's next try is due
    assert recover() == 0 and wechat.queries == 3, "only the unpaid order is asked again"
    assert orders.get_order(unpaid.out_trade_no, fake.new_uow()).state.value == "open"
    with fake.new_uow() as uow:
        assert uow.audit.count_actions("payment.recovered") == 1
    assert credited_fen(fake, ACCOUNT_NO) == 5_000
    assert_books_hold(fake)
