"""Taking payments: exactly once per (channel, channel transaction id), booked or held, never lost."""

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from gasworks.domain.channels import PaymentNotice
from gasworks.domain.delivery import PurchaseSite
from gasworks.domain.errors import Conflict, DuplicateKey, IntakeRefused, InvalidInput
from gasworks.domain.ledger import clearing_account, transfer
from gasworks.domain.money import PaymentCeiling
from gasworks.domain.payments import TRANSITIONS, HoldReason, OrderState, Payment, PaymentOrder, PaymentState
from gasworks.services.delivery import place_purchase, plan_purchase
from gasworks.services.unit_of_work import UnitOfWork

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Acceptance:
    """The answer a channel gets. A retry gets the same payment, as it stands now (credited from a
    hold, refunded ...), never a second one."""

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
    detail: dict[str, Any]


def new_payment_id() -> str:
    return "pay_" + secrets.token_hex(12)


def claim_nonce(uow: UnitOfWork, channel_id: str, nonce: str) -> None:
    """A nonce is good once per channel; a second use is a replay."""
    try:
        uow.nonces.claim(channel_id, nonce, uow.clock.now())
    except DuplicateKey:
        raise IntakeRefused(f"nonce {nonce[:64]!r} was already used on this channel", code="NONCE_REUSED", http_status=401) from None


def forget_old_nonces(uow: UnitOfWork, *, skew_s: int) -> int:
    """A replay is refused by its nonce only while its timestamp could still pass (±skew around a
    timestamp that was itself within skew of when the nonce was first seen): 2 x skew in all."""
    with uow:
        forgotten = uow.nonces.forget_older_than(uow.clock.now() - timedelta(seconds=2 * skew_s))
        uow.commit()
        return forgotten


def accept_payment(notice: PaymentNotice, uow: UnitOfWork, *, ceiling: PaymentCeiling | None = None, refuse_above_ceiling: bool = False, audit: AuditNote | None = None) -> Acceptance:
    """Books or holds one payment. Above the ceiling, a synchronous channel (the money is still in
    the resident's hand or wallet: `refuse_above_ceiling`) is refused and nothing is booked; money a
    channel already took is held in suspense. The ceiling is the unit of work's (configured once)
    unless `ceiling` is given. The same transaction id with other content is a 409. `audit` records who took it on someone's behalf, in the booking's own transaction.

    One transaction, each row written once: where the money goes is decided first (reading the
    order, or the account's meter, locked, with its class, balance and queue in one read), then the
    payment is claimed in its final state, and the booking and the purchase it pays for are posted
    together."""
    with uow:
        now = uow.clock.now()
        if notice.replay_nonce is not None:
            claim_nonce(uow, notice.channel_id, notice.replay_nonce)
        payment = _verified(notice, now)
        try:
            placement = _place(payment, notice, uow, ceiling or uow.payment_ceiling, refuse_above_ceiling)
        except InvalidInput:  # refused above the ceiling, unless it is a retry of one already taken
            first = uow.payments.get_by_channel_txn(notice.channel_id, notice.channel_txn_id)
            if first is None:
                raise
            return _first_answer(first, notice, uow)
        try:
            uow.payments.claim(payment)
        except DuplicateKey:
            first = uow.payments.get_by_channel_txn(notice.channel_id, notice.channel_txn_id)
            if first is None:  # the key taken was not the payment's: impossible unless the schema changed
                raise
            return _first_answer(first, notice, uow)
        if placement.order is not None and not uow.orders.mark_paid(placement.order.out_trade_no, payment.id):
            # Another payment paid the order between our read and now: this one waits in suspense.
            payment = _verified(notice, now, payment_id=payment.id)
            payment.account_no = placement.order.account_no
            payment.hold(HoldReason.ORDER_ALREADY_PAID, now, f"order {placement.order.out_trade_no} was already paid")
            uow.payments.save_progress(payment, events_already_saved=len(payment.events))
            placement = Placement(None, None)
        kind = TRANSITIONS[(PaymentState.VERIFIED, payment.state)]
        assert kind is not None, "booked or held: both move the money in"
        booking = transfer(
            kind,
            debit=clearing_account(payment.channel_id),
            credit=payment.holding_account,
            amount_fen=payment.amount_fen,
            at=now,
            payment_id=payment.id,
            memo=f"{payment.channel_id} {payment.channel_txn_id}",
        )
        purchase = None
        if payment.state == PaymentState.BOOKED:
            site = placement.site
            assert site is not None, "every account has its meter"
            # Transactional outbox: the credit order commits with the booking or not at all.
            after_booking_fen = site.prepaid_entries_sum_fen + sum(e.amount_fen for e in booking.entries if e.account_code == payment.holding_account)
            purchase = plan_purchase(uow, site, payment_id=payment.id, prepaid_entries_sum_fen=after_booking_fen)
        uow.ledger.post_many([booking] + ([purchase.transaction] if purchase is not None and purchase.transaction is not None else []))
        if purchase is not None and purchase.order is not None and placement.site is not None:
            place_purchase(uow, purchase.order, placement.site.link, open_commands=placement.site.open_commands)
        uow.payments.save_events(payment, events_already_saved=0)
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


def _verified(notice: PaymentNotice, now: datetime, *, payment_id: str | None = None) -> Payment:
    payment = Payment.received(
        id=payment_id or new_payment_id(),
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
    return payment


def _first_answer(first: Payment, notice: PaymentNotice, uow: UnitOfWork) -> Acceptance:
    """A retry: the first payment as it stands now, or a 409 if the content differs."""
    _refuse_if_retry_differs(first, notice)
    uow.commit()  # keeps the nonce claimed
    return Acceptance.of(first, duplicate=True)


@dataclass(frozen=True)
class Placement:
    """Where a payment's money goes, as read before it is claimed: the order it pays (marked paid
    once the payment is claimed), and for a booked payment its account's meter, locked."""

    order: PaymentOrder | None
    site: PurchaseSite | None


def _place(payment: Payment, notice: PaymentNotice, uow: UnitOfWork, ceiling: PaymentCeiling, refuse_above_ceiling: bool) -> Placement:
    """Decide where the money goes: the customer's balance, or suspense with a reason. Reads only."""
    now = uow.clock.now()
    order = uow.orders.get(notice.out_trade_no) if notice.out_trade_no is not None else None
    account_no = order.account_no if order is not None else notice.account_no
    # The meter first, then the balance: every use case that touches both locks them in this
    # order, so two of them can never wait on each other.
    site = uow.meters.get_for_purchase(account_no) if account_no is not None else None
    fen_max = ceiling.fen_max_for(notice.channel_id, site.customer_class.value if site is not None and ceiling.by_class else None)
    if payment.amount_fen > fen_max:
        if refuse_above_ceiling:  # nothing written but the nonce, rolled back with it: the channel may not retry it
            raise InvalidInput(f"amount {payment.amount_fen} fen is above the payment ceiling of {fen_max} fen", code="AMOUNT_ABOVE_LIMIT")
        payment.account_no = account_no
        payment.hold(HoldReason.AMOUNT_ABOVE_LIMIT, now, f"{payment.amount_fen} fen is above the ceiling of {fen_max} fen")
        return Placement(None, None)
    if notice.out_trade_no is not None:
        if order is None:
            payment.hold(HoldReason.UNKNOWN_ORDER, now, f"no order {notice.out_trade_no!r}")
            return Placement(None, None)
        payment.account_no = order.account_no
        if order.channel_id != notice.channel_id:
            payment.hold(HoldReason.CHANNEL_MISMATCH, now, f"order was created for channel {order.channel_id}")
            return Placement(None, None)
        if order.amount_fen != notice.amount_fen:
            payment.hold(
                HoldReason.AMOUNT_MISMATCH,
                now,
                f"order {order.out_trade_no} is {order.amount_fen} fen, channel notified {notice.amount_fen} fen",
            )
            return Placement(None, None)
        if order.state != OrderState.OPEN:
            payment.hold(HoldReason.ORDER_ALREADY_PAID, now, f"order {order.out_trade_no} was already paid")
            return Placement(None, None)
    elif site is None:
        payment.hold(HoldReason.UNKNOWN_ACCOUNT, now, f"no account {notice.account_no!r}")
        return Placement(None, None)
    if site is None:  # an order for an account that is gone: impossible while accounts are never deleted
        payment.hold(HoldReason.UNKNOWN_ACCOUNT, now, f"no account {account_no!r}")
        return Placement(None, None)
    payment.move_to(PaymentState.BOOKED, now, f"credited to account {payment.account_no}")
    return Placement(order, site)


def payment_fen_max(uow: UnitOfWork, ceiling: PaymentCeiling, channel_id: str, account_no: str | None) -> int:
    """The ceiling for this channel and this account's customer class (looked up only when a class override exists)."""
    customer = uow.customers.get(account_no) if ceiling.by_class and account_no else None
    return ceiling.fen_max_for(channel_id, customer.customer_class.value if customer else None)


def _refuse_if_retry_differs(first: Payment, notice: PaymentNotice) -> None:
    """Same transaction id, different content: refused (409), the first booking stands untouched."""
    differences = []
    if first.amount_fen != notice.amount_fen:
        differences.append(f"amount {notice.amount_fen} fen vs first {first.amount_fen} fen")
    # A held payment an operator credited to the right account carries that account now; the
    # channel's retry still names the one it first sent, and is still the same payment.
    if notice.account_no is not None and first.account_no != notice.account_no and first.last_event(PaymentState.HELD) is None:
        differences.append(f"account {notice.account_no!r} vs first {first.account_no!r}")
    if notice.out_trade_no is not None and first.out_trade_no is not None and first.out_trade_no != notice.out_trade_no:
        differences.append(f"order {notice.out_trade_no!r} vs first {first.out_trade_no!r}")
    if differences:
        log.warning("txn_id_reused_with_different_content", payment_id=first.id, differences=differences)
        raise Conflict(
            f"transaction {notice.channel_txn_id[:64]} was already taken with other content: " + "; ".join(differences) + f"; payment {first.id} stands",
            code="TXN_ID_CONFLICT",
        )


@dataclass(frozen=True)
class Refusal:
    """One refused request, as it is kept: who (channel or device), why (code), and what (size, hash)."""

    channel_id: str  # the channel, the device's channel, or the endpoint family ("devices", "orders", ...)
    code: str
    message: str
    remote_addr: str = ""
    caller: str | None = None  # the API key, when one was presented and known
    body_bytes: int | None = None
    body_sha256: str | None = None  # of the whole body; None when it was refused unread
    request_summary: dict[str, Any] | None = None


def record_refusal(refusal: Refusal, uow: UnitOfWork) -> None:
    """Every refusal is kept, in its own transaction, so nothing a caller sent is lost."""
    with uow:
        uow.rejections.add(
            at=uow.clock.now(),
            channel_id=refusal.channel_id,
            code=refusal.code,
            message=refusal.message,
            remote_addr=refusal.remote_addr,
            request_summary=refusal.request_summary or {},
            caller=refusal.caller,
            body_bytes=refusal.body_bytes,
            body_sha256=refusal.body_sha256,
        )
        uow.commit()
    log.warning("request_refused", channel_id=refusal.channel_id, code=refusal.code, reason=refusal.message[:200], caller=refusal.caller)
