"""Money in suspense leaves it only by an operator's decision: credit it to the right account, or
refund it through the channel. Each is one ledger transaction, an event on the payment's timeline,
and an audit record; a credited payment then buys gas like any other. A refund is "requested" (the
money sits in refunds in flight) until the channel confirms it: `confirm_refund`."""

from datetime import datetime
from typing import Any

from gasworks.domain.accounts import check_account_no
from gasworks.domain.channels import RefundNotice
from gasworks.domain.delivery import AlertKind
from gasworks.domain.errors import Conflict, IntakeRefused, InvalidInput, NotFound
from gasworks.domain.holds import HoldDecision
from gasworks.domain.payments import TRANSITIONS, IllegalTransition, Payment, PaymentState
from gasworks.services.delivery import buy_gas
from gasworks.services.intake import claim_nonce, payment_fen_max
from gasworks.services.payment_life_cycle import (
    already_decided,
    require_payment,
    settle,
)
from gasworks.services.unit_of_work import UnitOfWork


def decide_hold(payment_id: str, decision: HoldDecision, *, reason: str, uow: UnitOfWork, actor: str, account_no: str | None = None) -> Payment:
    if not reason.strip():
        raise InvalidInput("say why", code="MISSING_FIELD")
    with uow:
        now = uow.clock.now()
        payment = require_payment(uow, payment_id)
        try:  # decided already, or by another operator meanwhile: one stable code, with what was decided
            if payment.state != PaymentState.HELD:
                raise already_decided(payment, PaymentState.BOOKED if decision == HoldDecision.CREDIT else PaymentState.REFUND_REQUESTED)
            why = reason.strip()[:200]
            detail = {"hold_reason": payment.hold_reason, "reason": why}
            if decision == HoldDecision.CREDIT:
                account = check_account_no(account_no or payment.account_no or "")
                meter = uow.meters.get_for_account(account, lock=True)
                if meter is None:
                    raise NotFound(f"no account {account}", code="ACCOUNT_NOT_FOUND")
                fen_max = payment_fen_max(uow, uow.payment_ceiling, payment.channel_id, account)
                if payment.amount_fen > fen_max:  # more gas than one purchase may carry: not credited whole
                    raise InvalidInput(
                        f"{payment.amount_fen} fen is above the payment ceiling of {fen_max} fen for this account: refund it, "
                        "or raise the ceiling for its channel or class first", code="AMOUNT_ABOVE_LIMIT",
                    )  # fmt: skip
                note = f"credited to account {account} by {actor}: {why}"
                settle(uow, payment, PaymentState.BOOKED, at=now, note=note, actor=actor, action="hold.credit", detail={**detail, "account_no": account}, account_no=account)
                buy_gas(uow, meter, payment_id=payment.id)
            else:
                # The money waits in refunds in flight until the channel confirms it paid the resident back.
                note = f"refund through {payment.channel_id} requested by {actor}: {why}"
                settle(uow, payment, PaymentState.REFUND_REQUESTED, at=now, note=note, actor=actor, action="hold.refund", detail=detail)
        except IllegalTransition as refused:
            raise IllegalTransition(refused.message, code="HOLD_NOT_OPEN") from None
        uow.commit()
        return payment


def confirm_refund(payment_id: str, *, evidence: str, uow: UnitOfWork, actor: str, refund_fen: int | None = None) -> Payment:
    """The channel says it paid the resident back (its refund notification, its statement, or an
    operator reading its merchant portal): the money leaves refunds in flight for the channel."""
    if not evidence.strip():
        raise InvalidInput("say how the channel confirmed it", code="MISSING_FIELD")
    with uow:
        now = uow.clock.now()
        payment = require_payment(uow, payment_id)
        if payment.state == PaymentState.REFUNDED:
            raise already_decided(payment, PaymentState.REFUNDED)
        if payment.state != PaymentState.REFUND_REQUESTED:  # nothing was asked of the channel: not a confirmation
            raise IllegalTransition(f"payment {payment.id} is {payment.state}: no refund was requested to confirm", code="REFUND_NOT_REQUESTED")
        _check_refund_is_whole(uow, payment, refund_fen, evidence)
        why = evidence.strip()[:200]
        _settle_refund(uow, payment, confirmed=True, at=now, why=why, actor=actor, detail={"evidence": why})
        uow.commit()
        return payment


def record_external_refund(payment_id: str, *, evidence: str, uow: UnitOfWork, actor: str) -> Payment:
    """The channel refunded the resident on its own (seen in its refund notification or statement):
    the payment is refunded with one transaction taking the money back from where it sat. Gas
    already bought with it cannot be taken back: the balance goes below zero (arrears), and the
    next payment pays that first."""
    if not evidence.strip():
        raise InvalidInput("say where the refund was seen", code="MISSING_FIELD")
    with uow:
        now = uow.clock.now()
        payment = require_payment(uow, payment_id)
        if payment.state == PaymentState.REFUND_REQUESTED:
            raise IllegalTransition(f"payment {payment.id} has a refund requested: confirm it instead", code="REFUND_REQUESTED_CONFIRM_IT")
        why = evidence.strip()[:200]
        _settle_refund(uow, payment, confirmed=False, at=now, why=why, actor=actor, detail={"evidence": why})
        uow.commit()
        return payment


def _settle_refund(uow: UnitOfWork, payment: Payment, *, confirmed: bool, at: datetime, why: str, actor: str, detail: dict[str, Any]) -> None:
    """The payment is refunded: a refund we requested, confirmed; or one the channel made on its own."""
    how = f"refund confirmed by {payment.channel_id}" if confirmed else f"refunded by {payment.channel_id} on its own"
    settle(uow, payment, PaymentState.REFUNDED, at=at, note=f"{how}: {why}", actor=actor, action="refund.confirmed" if confirmed else "refund.external", detail=detail)


def _check_refund_is_whole(uow: UnitOfWork, payment: Payment, refund_fen: int | None, what: str) -> None:
    """Only a refund of all the payment holds moves money here; a partial one is an operator's decision."""
    holds_fen = uow.ledger.payment_net_fen(payment.id)
    if refund_fen is not None and refund_fen != holds_fen:
        raise Conflict(f"{what[:80]} is {refund_fen} fen of payment {payment.id} holding {holds_fen} fen: a partial refund is an operator's decision", code="PARTIAL_REFUND")


def take_channel_refund(notice: RefundNotice, uow: UnitOfWork) -> Payment:
    """A channel's verified refund notification: confirms a refund we requested, or records one the
    channel made on its own. Only a refund of all the payment still holds moves money here; a
    partial refund is refused (recorded) for an operator and reconciliation to decide."""
    with uow:
        now = uow.clock.now()
        if notice.replay_nonce is not None:
            claim_nonce(uow, notice.channel_id, notice.replay_nonce)
        payment = uow.payments.get_by_channel_txn(notice.channel_id, notice.channel_txn_id)
        if payment is None:  # not acknowledged: the channel retries, and its payment may still arrive first
            raise IntakeRefused(f"refund {notice.refund_id} is for transaction {notice.channel_txn_id}, which gasworks never took", code="REFUND_FOR_UNKNOWN_PAYMENT")
        if payment.state == PaymentState.REFUNDED:
            uow.commit()  # a retry of the notification: the first answer stands, the nonce stays used
            return payment
        if notice.not_paid_because is not None:  # the refund failed at the channel: no money moves, a person decides
            reason = f"{notice.not_paid_because}; payment {payment.id} stays {payment.state}, its money where it is"
            if uow.alerts.raise_once(kind=AlertKind.REFUND_NOT_PAID, subject=f"payment:{payment.id}", reason=reason, at=now):
                uow.audit.append(at=now, actor=f"channel:{notice.channel_id}", action="refund.not_paid", subject=f"payment:{payment.id}", detail={"refund_id": notice.refund_id, "why": notice.not_paid_because})
            uow.commit()
            return payment
        if (payment.state, PaymentState.REFUNDED) not in TRANSITIONS:  # reversed meanwhile: say so, not "partial"
            raise already_decided(payment, PaymentState.REFUNDED)
        try:
            _check_refund_is_whole(uow, payment, notice.refund_fen, f"refund {notice.refund_id}")
        except Conflict as partial:  # acknowledged so the channel stops; recorded for an operator
            raise IntakeRefused(partial.message, code=partial.code, acknowledge=True) from None
        _settle_refund(
            uow, payment, confirmed=payment.state == PaymentState.REFUND_REQUESTED, at=now, why=f"refund {notice.refund_id}",
            actor=f"channel:{notice.channel_id}", detail={"refund_id": notice.refund_id},
        )  # fmt: skip
        uow.commit()
        return payment


def held_payments(limit: int, uow: UnitOfWork) -> list[Payment]:
    """Money in suspense: every payment held, with its reason, oldest first."""
    with uow:
        return uow.payments.list_in_state(PaymentState.HELD, limit)


def refunds_requested(limit: int, uow: UnitOfWork) -> list[Payment]:
    """Refunds requested and not yet confirmed by the channel: their money is in refunds in flight."""
    with uow:
        return uow.payments.list_in_state(PaymentState.REFUND_REQUESTED, limit)
