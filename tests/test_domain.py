"""The pure rules: money text, the ledger's balance, payment transitions, masking."""

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gasworks.domain.accounts import check_account_no, mask_name, mask_phone
from gasworks.domain.errors import InvalidInput, InvariantViolated
from gasworks.domain.ledger import Entry, LedgerTransaction, TransactionKind, presented_balance_fen, transfer
from gasworks.domain.money import fen_to_yuan_text, yuan_text_to_fen
from gasworks.domain.payments import IllegalTransition, Payment, PaymentState

AT = datetime(2026, 11, 23, tzinfo=UTC)


@given(st.integers(min_value=0, max_value=10**13))
def test_yuan_text_round_trips_to_the_fen(amount_fen):
    assert yuan_text_to_fen(fen_to_yuan_text(amount_fen)) == amount_fen


@pytest.mark.parametrize("text", ["12.345", "1e3", "-1.00", "01.00", " 1.00", "1,00", "", "NaN", "1.", ".5"])
def test_yuan_text_that_is_not_an_exact_amount_is_refused(text):
    with pytest.raises(InvalidInput):
        yuan_text_to_fen(text)


@given(st.lists(st.integers(min_value=-(10**9), max_value=10**9).filter(bool), min_size=1, max_size=6))
def test_a_transaction_that_does_not_sum_to_zero_is_refused(amounts):
    entries = tuple(Entry(f"prepaid:{i:010d}", a) for i, a in enumerate(amounts))
    if sum(amounts) == 0 and len(amounts) >= 2:
        LedgerTransaction(TransactionKind.PAYMENT_BOOKED, entries, AT)
    else:
        with pytest.raises(InvariantViolated):
            LedgerTransaction(TransactionKind.PAYMENT_BOOKED, entries, AT)


def test_transfer_refuses_non_positive_and_non_integer_amounts():
    for bad in (0, -1):
        with pytest.raises(InvariantViolated):
            transfer(TransactionKind.PAYMENT_BOOKED, debit="clearing:x", credit="suspense", amount_fen=bad, at=AT)
    with pytest.raises(InvariantViolated):
        LedgerTransaction(TransactionKind.PAYMENT_BOOKED, (Entry("clearing:x", 1.5), Entry("suspense", -1.5)), AT)  # type: ignore[arg-type]


def test_customer_balance_reads_positive_when_we_owe_gas():
    assert presented_balance_fen("prepaid:4301000001", -5000) == 5000
    assert presented_balance_fen("clearing:wechat", 5000) == 5000


def test_payment_moves_only_along_legal_transitions():
    payment = Payment.received(id="p", channel_id="c", channel_txn_id="t", amount_fen=1, account_no="4301000001", out_trade_no=None, method="", paid_at=None, at=AT)
    with pytest.raises(IllegalTransition):  # a refusal with a code (409), no longer a crash: operators meet it
        payment.move_to(PaymentState.BOOKED, AT)  # not verified yet
    payment.move_to(PaymentState.VERIFIED, AT)
    payment.move_to(PaymentState.BOOKED, AT)
    with pytest.raises(IllegalTransition):
        payment.move_to(PaymentState.HELD, AT)
    assert [e.state for e in payment.events] == [PaymentState.RECEIVED, PaymentState.VERIFIED, PaymentState.BOOKED]


def test_personal_details_are_masked():
    assert mask_phone("13812345678") == "138****5678"
    assert mask_phone("07348123456") == "073****3456"
    assert mask_phone("12") == "12"
    assert mask_name("张三丰") == "张**"


@pytest.mark.parametrize("account_no", ["123456789", "1234567890123", "12345abcde", ""])
def test_account_numbers_are_10_to_12_digits(account_no):
    with pytest.raises(InvalidInput):
        check_account_no(account_no)
