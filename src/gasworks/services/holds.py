"""Money in suspense leaves it only by an operator's decision: credit it to the right account, or
refund it through the channel. Each is one ledger transaction, an event on the payment's timeline,
and an audit record; a credited payment then buys gas like any other."""

from enum import StrEnum

from gasworks.domain.accounts import check_account_no
from gasworks.domain.errors import Conflict, InvalidInput, NotFound
from gasworks.domain.ledger import TransactionKind, clearing_account, prepaid_account, transfer
from gasworks.domain.payments import Payment, PaymentState
from gasworks.services.delivery import buy_gas
from gasworks.services.unit_of_work import UnitOfWork


class HoldDecision(StrEnum):
    CREDIT = "credit"  # the money belongs to this account: book it there
    REFUND = "refund"  # give it back to the resident through the channel


def decide_hold(payment_id: str, decision: HoldDecision, *, reason: str, uow: UnitOfWork, actor: str, account_no: str | None = None) -> Payment:
    if not reason.strip():
        raise InvalidInput("say why", code="MISSING_FIELD")
    with uow:
        now = uow.clock.now()
        payment = uow.payments.get(payment_id)
        if payment is None:
            raise NotFound(f"no payment {payment_id[:40]!r}", code="PAYMENT_NOT_FOUND")
        if payment.state != PaymentState.HELD:
            raise Conflict(f"payment {payment.id} is {payment.state}, not held", code="HOLD_NOT_OPEN")
        saved, held_in = len(payment.events), payment.holding_account
        why = reason.strip()[:200]
        if decision == HoldDecision.CREDIT:
            account = check_account_no(account_no or payment.account_no or "")
            meter = uow.meters.get_for_account(account, lock=True)
            if meter is None:
                raise NotFound(f"no account {account}", code="ACCOUNT_NOT_FOUND")
            claimed = uow.payments.transition(payment.id, PaymentState.HELD, PaymentState.BOOKED)
            kind, credit, note = TransactionKind.HOLD_RELEASED, prepaid_account(account), f"credited to account {account} by {actor}: {why}"
            payment.account_no = account
            payment.move_to(PaymentState.BOOKED, now, note)
        else:
            claimed = uow.payments.transition(payment.id, PaymentState.HELD, PaymentState.REFUNDED)
            kind, credit, note = TransactionKind.PAYMENT_REVERSED, clearing_account(payment.channel_id), f"refunded through {payment.channel_id} by {actor}: {why}"
            payment.move_to(PaymentState.REFUNDED, now, note)
        if not claimed:
            raise Conflict(f"payment {payment.id} was decided meanwhile", code="HOLD_NOT_OPEN")
        uow.ledger.post(transfer(kind, debit=held_in, credit=credit, amount_fen=payment.amount_fen, at=now, payment_id=payment.id, memo=note[:300]))
        uow.payments.save_progress(payment, events_already_saved=saved)
        if decision == HoldDecision.CREDIT:
            buy_gas(uow, meter, payment_id=payment.id)
        uow.audit.append(
            at=now, actor=actor, action=f"hold.{decision.value}", subject=f"payment:{payment.id}",
            detail={"amount_fen": payment.amount_fen, "account_no": payment.account_no, "hold_reason": payment.hold_reason, "reason": why},
        )  # fmt: skip
        uow.commit()
        return payment
