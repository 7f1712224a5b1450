"""Ledger invariants hold after any sequence of payments, retries, holds and refusals (hypothesis)."""

import itertools
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gasworks.domain.channels import PaymentNotice
from gasworks.domain.errors import GasworksError
from gasworks.domain.ledger import SUSPENSE, clearing_account
from gasworks.domain.money import PaymentCeiling
from gasworks.services import orders
from gasworks.services.checks import check_ledger
from gasworks.services.intake import accept_payment
from tests.support import ACCOUNT_NO, OTHER_ACCOUNT_NO, credited_fen, set_up

RUNS = itertools.count()
ACCOUNTS = [ACCOUNT_NO, OTHER_ACCOUNT_NO, "9999999999"]  # the last one does not exist

operation = st.one_of(
    st.tuples(st.just("bill"), st.integers(0, 7), st.sampled_from(ACCOUNTS), st.integers(1, 100_000)),
    st.tuples(st.just("order"), st.integers(0, 7), st.sampled_from(ACCOUNTS[:2]), st.integers(1, 100_000), st.integers(-2, 2)),
    st.tuples(st.just("nonce_replay"), st.integers(0, 7)),
)


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operation, min_size=1, max_size=25))
def test_ledger_invariants_hold_after_any_sequence(system, ops):
    if not hasattr(system, "_ready"):
        set_up(system)
        system._ready = True
    start = {a: credited_fen(system, a) for a in ACCOUNTS[:2]}
    with system.new_uow() as uow:
        start_suspense = -uow.ledger.entries_sum_fen(SUSPENSE)
        start_clearing = uow.ledger.entries_sum_fen(clearing_account("wo-wallet")) + uow.ledger.entries_sum_fen(clearing_account("wechat"))
    run = next(RUNS)
    expected = Counter()
    taken_txns: dict[str, int] = {}
    taken_accounts: dict[str, str] = {}  # a reused transaction id with another amount, account or order is a conflict
    taken_orders: dict[str, str] = {}
    for i, op in enumerate(ops):
        if op[0] == "bill":
            _, txn, account_no, amount = op
            txn_id = f"B{run}-{txn}"
            notice = PaymentNotice("wo-wallet", txn_id, amount, None, account_no=account_no, replay_nonce=f"n{run}-{i}")
            if taken_accounts.get(txn_id, account_no) != account_no or taken_txns.get(txn_id, amount) != amount:
                with pytest.raises(GasworksError) as conflict:  # a reused id with other content books nothing
                    accept_payment(notice, system.new_uow())
                assert conflict.value.code == "TXN_ID_CONFLICT"
                continue
            accepted = accept_payment(notice, system.new_uow())
            if txn_id not in taken_txns:
                taken_txns[txn_id], taken_accounts[txn_id] = amount, account_no
                expected[account_no if account_no != "9999999999" else "suspense"] += amount
            assert accepted.amount_fen == taken_txns[txn_id]
        elif op[0] == "order":
            _, txn, account_no, amount, drift = op
            order = orders.create_order(channel_id="wechat", account_no=account_no, amount_fen=amount, ceiling=PaymentCeiling(10**7), uow=system.new_uow())
            paid = max(1, amount + drift)
            txn_id = f"W{run}-{txn}"
            notice = PaymentNotice("wechat", txn_id, paid, None, out_trade_no=order.out_trade_no)
            if txn_id in taken_txns and (taken_txns[txn_id] != paid or taken_orders[txn_id] != order.out_trade_no):
                with pytest.raises(GasworksError) as conflict:
                    accept_payment(notice, system.new_uow())
                assert conflict.value.code == "TXN_ID_CONFLICT"
                continue
            accepted = accept_payment(notice, system.new_uow())
            taken_orders.setdefault(txn_id, order.out_trade_no)
            if txn_id not in taken_txns:
                assert not accepted.duplicate
                taken_txns[txn_id] = paid
                expected[account_no if paid == amount else "suspense"] += paid
            assert accepted.amount_fen == taken_txns[txn_id]
        else:  # a fresh payment, then a replay of its nonce for another transaction: refused
            nonce = f"r{run}-{i}"
            accept_payment(PaymentNotice("wo-wallet", f"R{run}-{i}", 1, None, account_no=ACCOUNT_NO, replay_nonce=nonce), system.new_uow())
            taken_txns[f"R{run}-{i}"] = 1
            expected[ACCOUNT_NO] += 1
            with pytest.raises(GasworksError) as refused:
                accept_payment(PaymentNotice("wo-wallet", f"X{run}-{i}", 500, None, account_no=ACCOUNT_NO, replay_nonce=nonce), system.new_uow())
            assert refused.value.code == "NONCE_REUSED"

    report = check_ledger(system.new_uow())
    assert report.ok, report.findings
    for account_no in ACCOUNTS[:2]:
        assert credited_fen(system, account_no) - start[account_no] == expected[account_no]
    with system.new_uow() as uow:
        assert -uow.ledger.entries_sum_fen(SUSPENSE) - start_suspense == expected["suspense"]
        clearing = uow.ledger.entries_sum_fen(clearing_account("wo-wallet")) + uow.ledger.entries_sum_fen(clearing_account("wechat"))
    # Money in equals money placed: what channels owe us is on balances or in suspense, to the fen.
    assert clearing - start_clearing == sum(taken_txns.values()) == sum(expected.values())
