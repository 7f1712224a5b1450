"""Orders, device payments, accounts, holds and refunds: the money side an operator and a device see."""

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials

from gasworks.bootstrap import System
from gasworks.domain.access import ApiKeyRecord
from gasworks.domain.channels import PaymentNotice
from gasworks.domain.errors import Unauthorized
from gasworks.entrypoints.api import schemas as s
from gasworks.entrypoints.api.common import READERS, Callers, bearer, check_device_time
from gasworks.entrypoints.api.delivery_routes import resident_url
from gasworks.observability import payments_taken
from gasworks.services import access, accounts, holds, intake, orders
from gasworks.services.access import Role

Errors = dict[int | str, dict[str, Any]]


def order_routes(system: System, caller: Callers, errors: Errors) -> APIRouter:
    """Orders, created for a resident before the wallet collects."""
    router = APIRouter(tags=["orders"], responses=errors)
    settings = system.settings
    order_rate = orders.OrderRate(settings.orders_per_account_max, settings.orders_per_account_window_s)

    @router.post("/v1/orders", response_model=s.OrderOut, status_code=201)
    def create_order(body: s.CreateOrderIn, request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> s.OrderOut:
        """An order for the resident to pay through WeChat Pay or Alipay. The caller is a device or
        operator key (Authorization: Bearer), or the resident who bound the account: account number
        plus the holder's name or phone as registered. At most `orders_per_account_max` orders per
        account per `orders_per_account_window_s` (429 RATE_LIMITED)."""
        resident = None
        if credentials is not None:
            caller.identified(request, credentials, {Role.OPERATOR, Role.DEVICE})
        elif body.holder_name or body.holder_phone:
            resident = orders.ResidentProof(name=body.holder_name, phone=body.holder_phone)
        else:
            raise Unauthorized("an API key, or the account holder's name or phone, is required", code="AUTHENTICATION_REQUIRED")
        order = orders.create_order(
            channel_id=body.channel_id, account_no=body.account_no, amount_fen=body.amount_fen, ceiling=system.payment_ceiling, uow=system.new_uow(),
            resident=resident, rate=order_rate,
        )  # fmt: skip
        return s.OrderOut.of(order)

    @router.get("/v1/orders/{out_trade_no}", response_model=s.OrderOut)
    def get_order(out_trade_no: str) -> s.OrderOut:
        return s.OrderOut.of(orders.get_order(out_trade_no, system.new_uow()))

    return router


def device_routes(system: System, caller: Callers, errors: Errors) -> APIRouter:
    """Kiosks and counters: look an account up, take cash, card or QR for it."""
    router = APIRouter(tags=["devices"], responses=errors)
    new_uow = system.new_uow

    @router.get("/v1/devices/accounts/{account_no}", response_model=s.ChannelAccountOut)
    def device_account(account_no: str, device: ApiKeyRecord = Depends(caller(Role.DEVICE))) -> s.ChannelAccountOut:
        return s.ChannelAccountOut.of(accounts.get_account(account_no, new_uow()))

    @router.post("/v1/devices/payments", response_model=s.AcceptanceOut)
    def device_payment(body: s.DevicePaymentIn, request: Request, device: ApiKeyRecord = Depends(caller(Role.DEVICE))) -> s.AcceptanceOut:
        """A kiosk or counter takes cash, card or QR for an account; its own txn id makes retries safe."""
        accounts.get_account(body.account_no, new_uow())  # cash in hand: refuse now, do not hold
        assert device.channel_id is not None
        notice = PaymentNotice(
            channel_id=device.channel_id,
            channel_txn_id=body.txn_id,
            amount_fen=body.amount_fen,
            paid_at=check_device_time(body.paid_at, system.clock.now()),
            account_no=body.account_no,
            method=body.method,
        )
        audit = intake.AuditNote(access.actor_of(device), "payment.take", {"txn_id": body.txn_id, "account_no": body.account_no, "method": body.method})
        # 422 above the ceiling; cut off by a failover, taken again by its txn id (never twice)
        taken = system.cut_retry.run(lambda _after_cut: intake.accept_payment(notice, new_uow(), ceiling=system.payment_ceiling, refuse_above_ceiling=True, audit=audit))
        payments_taken.labels("device", "duplicate" if taken.duplicate else taken.state.value).inc()
        return s.AcceptanceOut.of(taken, resident_url=resident_url(system, request, taken.payment_id))

    return router


def account_routes(system: System, caller: Callers, errors: Errors) -> APIRouter:
    """Accounts, their payments, money in suspense and refunds: operators decide, auditors read."""
    router = APIRouter(responses=errors)
    settings = system.settings
    new_uow = system.new_uow

    @router.post("/v1/accounts", tags=["accounts"], response_model=s.AccountOut, status_code=201)
    def open_account(body: s.OpenAccountIn, who: ApiKeyRecord = Depends(caller(Role.OPERATOR))) -> s.AccountOut:
        customer = accounts.open_account(accounts.OpenAccount(**body.model_dump()), new_uow(), actor=access.actor_of(who))
        return s.AccountOut.of(accounts.AccountView(customer, 0))

    @router.get("/v1/accounts/{account_no}", tags=["accounts"], response_model=s.AccountOut)
    def get_account(account_no: str, who: ApiKeyRecord = Depends(caller(*READERS))) -> s.AccountOut:
        return s.AccountOut.of(accounts.get_account(account_no, new_uow()))

    @router.get("/v1/accounts/{account_no}/payments", tags=["payments"], response_model=list[s.PaymentOut])
    def account_payments(account_no: str, limit: int = Query(50, ge=1, le=settings.page_size_max), who: ApiKeyRecord = Depends(caller(*READERS))) -> list[s.PaymentOut]:
        return [s.PaymentOut.of(p) for p in accounts.account_payments(account_no, limit, new_uow())]

    @router.get("/v1/holds", tags=["payments"], response_model=list[s.PaymentOut])
    def held_payments(limit: int = Query(100, ge=1, le=settings.page_size_max), who: ApiKeyRecord = Depends(caller(*READERS))) -> list[s.PaymentOut]:
        """Money in suspense: every payment held, with its reason, oldest first."""
        return [s.PaymentOut.of(p) for p in holds.held_payments(limit, new_uow())]

    @router.post("/v1/holds/{payment_id}/decisions", tags=["payments"], response_model=s.PaymentOut)
    def decide_hold(payment_id: str, body: s.HoldDecisionIn, who: ApiKeyRecord = Depends(caller(Role.OPERATOR))) -> s.PaymentOut:
        """Money out of suspense: credit it to the right account (it then buys gas), or refund it through the channel."""
        decided = holds.decide_hold(payment_id, holds.HoldDecision(body.decision), reason=body.reason, account_no=body.account_no, uow=new_uow(), actor=access.actor_of(who))
        return s.PaymentOut.of(decided)

    @router.post("/v1/payments/{payment_id}/refunds", tags=["payments"], response_model=s.PaymentOut)
    def record_refund(payment_id: str, body: s.RefundIn, who: ApiKeyRecord = Depends(caller(Role.OPERATOR))) -> s.PaymentOut:
        """The channel refunded this payment: `confirmed` closes a refund we requested (money leaves
        refunds in flight); `external` records a refund the channel made on its own (money leaves
        the balance or suspense; gas already bought stays bought and the balance may go below zero)."""
        record = holds.confirm_refund if body.kind == "confirmed" else holds.record_external_refund
        return s.PaymentOut.of(record(payment_id, evidence=body.evidence, uow=new_uow(), actor=access.actor_of(who)))

    return router
