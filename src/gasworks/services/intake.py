"""Taking payments: exactly once per (channel, channel transaction id), booked or held, never lost."""

import secrets
from dataclasses import dataclass
from datetime import timedelta

import structlog

from gasworks.adapters.db.repositories import DuplicateKey
from gasworks.domain.channels import PaymentNotice
from gasworks.domain.errors import IntakeRefused
from gasworks.domain.ledger import TransactionKind, clearing_account, transfer
from gasworks.domain.payments import HoldReason, Payment, PaymentState
from gasworks.services.delivery import buy_gas
from gasworks.services.unit_of_work import UnitOfWork

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Acceptance:
    """The answer a channel gets, the same on every retry."""

    payment_id: str
    state: PaymentState
    hold_reason: HoldReason | None
    amount_fen: int
    account_no: str | None
    duplicate: bool  # True when this call was a retry of one already taken

    @classmethod
    def of(cls, payment: Payment, *, duplicate: bool) -> "Acceptance":
        return cls(payment.id, payment.state, payment.hold_reason, payment.amount_fen, payment.account_no, duplicate)


@dataclass(frozen=True)
class AuditNote:
    """Who took a payment on someone's behalf (a device, a reconciliation, a recovery): written in
    the booking's own transaction, so a payment is never booked without its audit record."""

    actor: str
    action: str
    detail: dict


def new_payment_id() -> str:
    return "pay_" + secrets.token_hex(12)


def claim_nonce(uow: UnitOfWork, channel_id: str, nonce: str) -> None:
    """A nonce is good once per channel; a second use is a replay."""
    try:
        uow.nonces.claim(channel_id, nonce, uow.clock.now())
    except DuplicateKey:
        raise IntakeRefused(f"nonce {nonce[:64]!r} was already used on this channel", code="NONCE_REUSED") from None


def forget_old_nonces(uow: UnitOfWork, *, skew_s: int) -> int:
    """A replay is refused by its nonce only while its timestamp could still pass (±skew around a
    timestamp that was itself within skew of when the nonce was first seen): 2 x skew in all."""
    with uow:
        forgotten = uow.nonces.forget_older_than(uow.clock.now() - timedelta(seconds=2 * skew_s))
        uow.commit()
        return forgotten


def accept_payment(notice: PaymentNotice, uow: UnitOfWork, *, audit: AuditNote | None = None) -> Acceptance:
    with uow:
        now = uow.clock.now()
        if notice.replay_nonce is not None:
            claim_nonce(uow, notice.channel_id, notice.replay_nonce)
        payment = Payment.received(
            id=new_payment_id(),
            channel_id=notice.channel_id,
            channel_txn_id=notice.channel_txn_id,
            amount_fen=notice.amount_fen,
            account_no=notice.account_no,
            out_trade_no=notice.out_trade_no,
            method=notice.method,
            paid_at=notice.paid_at,
            at=now,
        )
        payment.move_to(PaymentState.VERIFIED, now, "signature verified")
        try:
            uow.payments.claim(payment)
        except DuplicateKey:
            first = uow.payments.get_by_channel_txn(notice.channel_id, notice.channel_txn_id)
            if first is None:  # the key taken was not the payment's: impossible unless the schema changed
                raise
            _flag_if_retry_differs(uow, first, notice)
            uow.commit()  # keeps the nonce claimed
            return Acceptance.of(first, duplicate=True)

        _place(payment, notice, uow)
        if payment.state == PaymentState.BOOKED:
            assert payment.account_no is not None
            # The meter first, then the balance: every use case that touches both locks them in
            # this order, so two of them can never wait on each other.
            meter = uow.meters.get_for_account(payment.account_no, lock=True)
        kind = TransactionKind.PAYMENT_BOOKED if payment.state == PaymentState.BOOKED else TransactionKind.PAYMENT_HELD
        uow.ledger.post(
            transfer(
                kind,
                debit=clearing_account(payment.channel_id),
                credit=payment.holding_account,
                amount_fen=payment.amount_fen,
                at=now,
                payment_id=payment.id,
                memo=f"{payment.channel_id} {payment.channel_txn_id}",
            )
        )
        if payment.state == PaymentState.BOOKED:
            # Transactional outbox: the credit order commits with the booking or not at all.
            assert meter is not None, "every account has its meter"
            buy_gas(uow, meter, payment_id=payment.id)
        uow.payments.save_progress(payment, events_already_saved=0)
        if audit is not None:
            uow.audit.append(
                at=now, actor=audit.actor, action=audit.action, subject=f"payment:{payment.id}",
                detail={**audit.detail, "amount_fen": payment.amount_fen, "state": payment.state.value},
            )  # fmt: skip
        uow.commit()
        log.info(
            "payment_taken",
            payment_id=payment.id,
            channel_id=payment.channel_id,
            state=payment.state.value,
            hold_reason=payment.hold_reason,
            amount_fen=payment.amount_fen,
        )
        return Acceptance.of(payment, duplicate=False)


def _place(payment: Payment, notice: PaymentNotice, uow: UnitOfWork) -> None:
    """Decide where the money goes: the customer's balance, or suspense with a reason."""
    now = uow.clock.now()
    if notice.out_trade_no is not None:
        order = uow.orders.get(notice.out_trade_no)
        if order is None:
            payment.hold(HoldReason.UNKNOWN_ORDER, now, f"no order {notice.out_trade_no!r}")
            return
        payment.account_no = order.account_no
        if order.channel_id != notice.channel_id:
            payment.hold(HoldReason.CHANNEL_MISMATCH, now, f"order was created for channel {order.channel_id}")
            return
        if order.amount_fen != notice.amount_fen:
            payment.hold(
                HoldReason.AMOUNT_MISMATCH,
                now,
                f"order {order.out_trade_no} is {order.amount_fen} fen, channel notified {notice.amount_fen} fen",
            )
            return
        if not uow.orders.mark_paid(order.out_trade_no, payment.id):
            payment.hold(HoldReason.ORDER_ALREADY_PAID, now, f"order {order.out_trade_no} was already paid")
            return
    elif notice.account_no is None or not uow.customers.exists(notice.account_no):
        payment.hold(HoldReason.UNKNOWN_ACCOUNT, now, f"no account {notice.account_no!r}")
        return
    payment.move_to(PaymentState.BOOKED, now, f"credited to account {payment.account_no}")


def _flag_if_retry_differs(uow: UnitOfWork, first: Payment, notice: PaymentNotice) -> None:
    """Same transaction id, different content: the first answer stands, and someone must look."""
    differences = []
    if first.amount_fen != notice.amount_fen:
        differences.append(f"amount {notice.amount_fen} fen vs first {first.amount_fen} fen")
    if notice.account_no is not None and first.account_no != notice.account_no:
        differences.append(f"account {notice.account_no!r} vs first {first.account_no!r}")
    if notice.out_trade_no is not None and first.out_trade_no != notice.out_trade_no:
        differences.append(f"order {notice.out_trade_no!r} vs first {first.out_trade_no!r}")
    if differences:
        uow.rejections.add(
            at=uow.clock.now(),
            channel_id=notice.channel_id,
            code="TXN_ID_REUSED_WITH_DIFFERENT_CONTENT",
            message=f"transaction {notice.channel_txn_id}: " + "; ".join(differences) + f"; first answer {first.id} stands",
            remote_addr="",
            request_summary={"channel_txn_id": notice.channel_txn_id, "first_payment_id": first.id},
        )
        log.warning("txn_id_reused_with_different_content", payment_id=first.id, differences=differences)


def record_rejection(uow: UnitOfWork, *, channel_id: str, error: IntakeRefused | Exception, request_summary: dict, remote_addr: str) -> None:
    """Every refusal is kept, in its own transaction, so nothing a channel sent is lost."""
    code = getattr(error, "code", type(error).__name__)
    message = getattr(error, "message", str(error))
    with uow:
        uow.rejections.add(
            at=uow.clock.now(),
            channel_id=channel_id,
            code=code,
            message=message,
            remote_addr=remote_addr,
            request_summary=request_summary,
        )
        uow.commit()
    log.warning("intake_refused", channel_id=channel_id, code=code, reason=message)
