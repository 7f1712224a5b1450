"""Decisions about money already taken: each is a legal transition of its payment, one ledger
transaction naming the payment, and an audit record, all in the caller's unit of work.

Two operators deciding the same payment at once: the state is moved on only if it is still what the
decision saw (compare and set), and the database refuses a second life-cycle transaction of the same
kind for one payment (a unique index), so the money moves once and the second answer says what the
first did.
"""

from datetime import datetime
from typing import Any

from gasworks.domain.errors import NotFound
from gasworks.domain.ledger import LedgerAccountKind
from gasworks.domain.payments import (
    MONEY_SITS_IN,
    TRANSITIONS,
    IllegalTransition,
    Payment,
    PaymentState,
    check_transition,
)
from gasworks.services.unit_of_work import UnitOfWork


def require_payment(uow: UnitOfWork, payment_id: str) -> Payment:
    payment = uow.payments.get(payment_id)
    if payment is None:
        raise NotFound(f"no payment {payment_id[:40]!r}", code="PAYMENT_NOT_FOUND")
    return payment


def already_decided(payment: Payment, wanted: PaymentState) -> IllegalTransition:
    """The refusal a second decision gets: what the payment is, since when and why."""
    last = payment.events[-1] if payment.events else None
    since = f" since {last.at:%Y-%m-%d %H:%M} UTC ({last.note})" if last is not None else ""
    try:
        check_transition(payment.state, wanted)
        code = "PAYMENT_DECIDED_MEANWHILE"
    except IllegalTransition as refused:
        code = refused.code
    return IllegalTransition(f"payment {payment.id} is {payment.state}{since}: it cannot become {wanted}", code=code)


def settle(
    uow: UnitOfWork,
    payment: Payment,
    state: PaymentState,
    *,
    at: datetime,
    note: str,
    actor: str,
    action: str,
    detail: dict[str, Any],
    amount_fen: int | None = None,
    account_no: str | None = None,
) -> int:
    """Moves `payment` to `state` with its one ledger transaction and an audit record; returns the
    ledger transaction's id. `amount_fen` defaults to what the payment's own transactions brought
    in and still hold (its amount, or what an adjustment made it)."""
    before, saved = payment.state, len(payment.events)
    if (before, state) not in TRANSITIONS:
        raise already_decided(payment, state)
    if MONEY_SITS_IN.get(before) == LedgerAccountKind.PREPAID and payment.account_no:
        uow.meters.get_for_account(payment.account_no, lock=True)  # the meter first, then the balance, as everywhere
    # Compare and set first: from here the payment's row is ours until commit, so what its
    # transactions hold cannot change under us (another decision waits, then finds it moved on).
    if not uow.payments.transition(payment.id, before, state):
        fresh = uow.payments.get(payment.id)
        raise already_decided(fresh or payment, state)
    held_fen = uow.ledger.payment_net_fen(payment.id) if amount_fen is None else amount_fen
    txn = payment.settle(state, at=at, note=note, amount_fen=held_fen, account_no=account_no)
    txn_id = uow.ledger.post_once(txn)
    if txn_id is None:  # another operator's transaction won the unique index meanwhile
        fresh = uow.payments.get(payment.id)
        raise already_decided(fresh or payment, state)
    uow.payments.save_progress(payment, events_already_saved=saved)
    uow.audit.append(
        at=at, actor=actor, action=action, subject=f"payment:{payment.id}",
        detail={**detail, "from": before.value, "to": state.value, "amount_fen": txn.entries[0].amount_fen, "ledger_transaction": txn_id},
    )  # fmt: skip
    return txn_id
