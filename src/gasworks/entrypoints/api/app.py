"""The HTTP API: FastAPI, errors as {"error": {"code", "message"}}, never a 500 for bad input."""

import time
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog
from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from gasworks.adapters.channels import BILL_PAYMENT_DECODERS, NOTIFY_DECODERS, InboundRequest, Reply, alipay, wechatpay_v3
from gasworks.adapters.db.repositories import ApiKeyRecord
from gasworks.bootstrap import System
from gasworks.domain.channels import Channel, ChannelKind, PaymentNotice
from gasworks.domain.errors import GasworksError, InvalidInput, PayloadTooLarge, Unauthorized
from gasworks.domain.money import PaymentCeiling
from gasworks.domain.payments import PaymentState
from gasworks.entrypoints.api import schemas as s
from gasworks.entrypoints.api.delivery_routes import delivery_routes, resident_url
from gasworks.entrypoints.api.edge import Edge, facts_of, note_caller, note_refusal
from gasworks.entrypoints.api.reconciliation_routes import reconciliation_routes
from gasworks.entrypoints.api.resident_page import resident_routes
from gasworks.observability import intake_seconds, payments_taken
from gasworks.services import access, accounts, checks, holds, intake, notifications, orders
from gasworks.services.access import Role

log = structlog.get_logger(__name__)

READERS = {Role.OPERATOR, Role.AUDITOR}
ERROR_RESPONSES = {
    status: {"model": s.ErrorBody} for status in (400, 401, 403, 404, 409, 413, 422, 429)
}

# How each channel kind expects to hear "taken" and "refused".
CHANNEL_REPLIES: dict[ChannelKind, tuple[Callable[[], Reply], Callable[[GasworksError], Reply]]] = {
    ChannelKind.WECHATPAY_V3: (wechatpay_v3.success_reply, wechatpay_v3.error_reply),
    ChannelKind.ALIPAY: (alipay.success_reply, alipay.error_reply),
}


DEVICE_PAID_AT_PAST_MAX = timedelta(days=7)  # a device that was offline this long sends what it took since


def check_device_time(paid_at: datetime | None, now: datetime) -> datetime | None:
    """A device's own time for a payment: with an offset, not in the future, not older than a week."""
    if paid_at is None:
        return None
    if paid_at.tzinfo is None:
        raise InvalidInput("paid_at needs a UTC offset", code="INVALID_PAID_AT")
    if paid_at > now + timedelta(minutes=5) or paid_at < now - DEVICE_PAID_AT_PAST_MAX:
        raise InvalidInput(f"paid_at {paid_at.isoformat()} is in the future or more than 7 days ago", code="INVALID_PAID_AT")
    return paid_at


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def to_response(reply: Reply) -> Response:
    return Response(reply.body, status_code=reply.status, media_type=reply.media_type, headers=reply.headers)


async def read_body(request: Request, bytes_max: int) -> bytes:
    """Reads at most `bytes_max` bytes; a larger body is refused before it is all in memory."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > bytes_max):
        raise PayloadTooLarge(f"request body over {bytes_max} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > bytes_max:
            raise PayloadTooLarge(f"request body over {bytes_max} bytes")
    return bytes(body)


def create_app(system: System) -> FastAPI:
    settings = system.settings
    new_uow = system.new_uow
    app = FastAPI(
        title="gasworks",
        version="0.1.0",
        description="Every yuan a resident pays becomes gas at their meter, and the system can prove it.",
    )
    app.state.system = system
    bearer = HTTPBearer(auto_error=False, description="Operator, auditor or device API key")
    ceiling = PaymentCeiling(settings.payment_fen_max, settings.payment_fen_max_by_channel, settings.payment_fen_max_by_class)
    order_rate = orders.OrderRate(settings.orders_per_account_max, settings.orders_per_account_window_s)
    # Every body bounded, every refusal recorded and counted before it is answered (edge.py).
    app.add_middleware(
        Edge,
        body_bytes_max=settings.request_body_bytes_max,
        streamed_paths={"/v1/statements": settings.statement_bytes_max},
        record=lambda refusal: intake.record_refusal(refusal, new_uow()),
    )

    def identified(request: Request, credentials: HTTPAuthorizationCredentials | None, allowed: set[Role]) -> ApiKeyRecord:
        record = access.identify(credentials.credentials if credentials else None, new_uow())
        note_caller(request, record)  # a refusal from here on names the key (and a device's channel)
        return access.authorize(record, allowed)

    def caller(*roles: Role) -> Callable[..., ApiKeyRecord]:
        allowed = set(roles)

        def dependency(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> ApiKeyRecord:
            return identified(request, credentials, allowed)

        return dependency

    @app.exception_handler(GasworksError)
    async def _gasworks_error(request: Request, error: GasworksError) -> JSONResponse:
        note_refusal(request, error.code, error.message)
        return error_response(error.http_status, error.code, error.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {str(e['msg'])[:200]}" for e in error.errors()[:10])
        note_refusal(request, "VALIDATION_ERROR", problems)
        return error_response(422, "VALIDATION_ERROR", problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "BODY_TOO_LARGE"}
        code = codes.get(error.status_code, "HTTP_ERROR")
        note_refusal(request, code, str(error.detail))
        return error_response(error.status_code, code, str(error.detail))

    @app.get("/healthz", tags=["system"])
    def healthz() -> dict[str, str]:
        with new_uow() as uow:
            uow.ledger.entries_sum_fen("suspense")
        return {"status": "ok"}

    @app.get("/metrics", tags=["system"], include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    # --- channels: authenticated by signature only ---------------------------------------------

    async def inbound(request: Request) -> InboundRequest:
        return InboundRequest(
            method=request.method,
            path=request.url.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await read_body(request, settings.request_body_bytes_max),
            remote_addr=request.client.host if request.client else "",
        )

    async def take(channel_id: str, request: Request, decoders: dict) -> tuple[Channel, intake.Acceptance | None, GasworksError | None]:
        raw = await inbound(request)
        channel = await run_in_threadpool(notifications.load_channel, channel_id, new_uow)
        started = time.perf_counter()
        try:
            taken = await run_in_threadpool(
                lambda: notifications.take_channel_payment(channel, raw, decoders, system.new_booking_uow, skew_s=settings.notification_clock_skew_s, ceiling=ceiling)
            )
            payments_taken.labels(channel.kind.value, "duplicate" if taken.duplicate else taken.state.value).inc()
            return channel, taken, None
        except GasworksError as error:  # recorded and counted by the edge, whatever the reply's format
            note_refusal(request, error.code, error.message, channel_kind=channel.kind.value)
            return channel, None, error
        finally:
            intake_seconds.labels(channel.kind.value).observe(time.perf_counter() - started)

    @app.post("/v1/channels/{channel_id}/notify", tags=["channels"], responses=ERROR_RESPONSES)
    async def channel_notify(channel_id: str, request: Request) -> Response:
        """Merchant-order payment notifications (WeChat Pay v3, Alipay), in each channel's own reply format."""
        channel, taken, error = await take(channel_id, request, NOTIFY_DECODERS)
        success, failure = CHANNEL_REPLIES.get(channel.kind, (None, None))
        if success is None or failure is None:
            assert error is not None
            return error_response(error.http_status, error.code, error.message)
        if error is None or getattr(error, "acknowledge", False):
            return to_response(success())
        return to_response(failure(error))

    @app.post("/v1/channels/{channel_id}/payments", tags=["channels"], response_model=s.AcceptanceOut, responses=ERROR_RESPONSES, openapi_extra=s.WALLET_PAYMENT_BODY)
    async def channel_payment(channel_id: str, request: Request) -> s.AcceptanceOut:
        """Bill payment (代收/销账) by a wallet-hmac channel: the same transaction id always gets the first answer."""
        _, taken, error = await take(channel_id, request, BILL_PAYMENT_DECODERS)
        if error is not None:
            raise error
        assert taken is not None
        return s.AcceptanceOut.of(taken, resident_url=resident_url(system, request, taken.payment_id))

    @app.get("/v1/channels/{channel_id}/accounts/{account_no}", tags=["channels"], response_model=s.ChannelAccountOut, responses=ERROR_RESPONSES)
    async def channel_account(channel_id: str, account_no: str, request: Request) -> s.ChannelAccountOut:
        """Bill-payment account query: masked name, balance and meter kind, for the resident to confirm."""
        raw = await inbound(request)
        channel = await run_in_threadpool(notifications.load_channel, channel_id, new_uow)
        facts_of(request).channel_kind = channel.kind.value
        view = await run_in_threadpool(
            notifications.look_up_account_for_channel, channel, account_no, raw, new_uow, skew_s=settings.notification_clock_skew_s
        )
        return s.ChannelAccountOut.of(view)

    # --- orders: created for a resident before the wallet collects ----------------------------

    @app.post("/v1/orders", tags=["orders"], response_model=s.OrderOut, status_code=201, responses=ERROR_RESPONSES)
    def create_order(body: s.CreateOrderIn, request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> s.OrderOut:
        """An order for the resident to pay through WeChat Pay or Alipay. The caller is a device or
        operator key (Authorization: Bearer), or the resident who bound the account: account number
        plus the holder's name or phone as registered. At most `orders_per_account_max` orders per
        account per `orders_per_account_window_s` (429 RATE_LIMITED)."""
        resident = None
        if credentials is not None:
            identified(request, credentials, {Role.OPERATOR, Role.DEVICE})
        elif body.holder_name or body.holder_phone:
            resident = orders.ResidentProof(name=body.holder_name, phone=body.holder_phone)
        else:
            raise Unauthorized("an API key, or the account holder's name or phone, is required", code="AUTHENTICATION_REQUIRED")
        order = orders.create_order(
            channel_id=body.channel_id, account_no=body.account_no, amount_fen=body.amount_fen, ceiling=ceiling, uow=new_uow(),
            resident=resident, rate=order_rate,
        )  # fmt: skip
        return s.OrderOut.of(order)

    @app.get("/v1/orders/{out_trade_no}", tags=["orders"], response_model=s.OrderOut, responses=ERROR_RESPONSES)
    def get_order(out_trade_no: str) -> s.OrderOut:
        return s.OrderOut.of(orders.get_order(out_trade_no, new_uow()))

    # --- devices: kiosks and counters ---------------------------------------------------------

    @app.get("/v1/devices/accounts/{account_no}", tags=["devices"], response_model=s.ChannelAccountOut, responses=ERROR_RESPONSES)
    def device_account(account_no: str, device: ApiKeyRecord = Depends(caller(Role.DEVICE))) -> s.ChannelAccountOut:
        return s.ChannelAccountOut.of(accounts.get_account(account_no, new_uow()))

    @app.post("/v1/devices/payments", tags=["devices"], response_model=s.AcceptanceOut, responses=ERROR_RESPONSES)
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
        taken = intake.accept_payment(notice, new_uow(), ceiling=ceiling, refuse_above_ceiling=True, audit=audit)  # 422 above the ceiling
        payments_taken.labels("device", "duplicate" if taken.duplicate else taken.state.value).inc()
        return s.AcceptanceOut.of(taken, resident_url=resident_url(system, request, taken.payment_id))

    # --- operators and auditors ---------------------------------------------------------------

    @app.post("/v1/accounts", tags=["accounts"], response_model=s.AccountOut, status_code=201, responses=ERROR_RESPONSES)
    def open_account(body: s.OpenAccountIn, who: ApiKeyRecord = Depends(caller(Role.OPERATOR))) -> s.AccountOut:
        customer = accounts.open_account(accounts.OpenAccount(**body.model_dump()), new_uow(), actor=access.actor_of(who))
        return s.AccountOut.of(accounts.AccountView(customer, 0))

    @app.get("/v1/accounts/{account_no}", tags=["accounts"], response_model=s.AccountOut, responses=ERROR_RESPONSES)
    def get_account(account_no: str, who: ApiKeyRecord = Depends(caller(*READERS))) -> s.AccountOut:
        return s.AccountOut.of(accounts.get_account(account_no, new_uow()))

    @app.get("/v1/accounts/{account_no}/payments", tags=["payments"], response_model=list[s.PaymentOut], responses=ERROR_RESPONSES)
    def account_payments(
        account_no: str, limit: int = Query(50, ge=1, le=settings.page_size_max), who: ApiKeyRecord = Depends(caller(*READERS))
    ) -> list[s.PaymentOut]:
        accounts.get_account(account_no, new_uow())
        with new_uow() as uow:
            return [s.PaymentOut.of(p) for p in uow.payments.list_for_account(account_no, limit)]

    @app.get("/v1/holds", tags=["payments"], response_model=list[s.PaymentOut], responses=ERROR_RESPONSES)
    def held_payments(limit: int = Query(100, ge=1, le=settings.page_size_max), who: ApiKeyRecord = Depends(caller(*READERS))) -> list[s.PaymentOut]:
        """Money in suspense: every payment held, with its reason, oldest first."""
        with new_uow() as uow:
            return [s.PaymentOut.of(p) for p in uow.payments.list_in_state(PaymentState.HELD, limit)]

    @app.post("/v1/holds/{payment_id}/decisions", tags=["payments"], response_model=s.PaymentOut, responses=ERROR_RESPONSES)
    def decide_hold(payment_id: str, body: s.HoldDecisionIn, who: ApiKeyRecord = Depends(caller(Role.OPERATOR))) -> s.PaymentOut:
        """Money out of suspense: credit it to the right account (it then buys gas), or refund it through the channel."""
        decided = holds.decide_hold(payment_id, holds.HoldDecision(body.decision), reason=body.reason, account_no=body.account_no, uow=new_uow(), actor=access.actor_of(who))
        return s.PaymentOut.of(decided)

    @app.post("/v1/payments/{payment_id}/refunds", tags=["payments"], response_model=s.PaymentOut, responses=ERROR_RESPONSES)
    def record_refund(payment_id: str, body: s.RefundIn, who: ApiKeyRecord = Depends(caller(Role.OPERATOR))) -> s.PaymentOut:
        """The channel refunded this payment: `confirmed` closes a refund we requested (money leaves
        refunds in flight); `external` records a refund the channel made on its own (money leaves
        the balance or suspense; gas already bought stays bought and the balance may go below zero)."""
        record = holds.confirm_refund if body.kind == "confirmed" else holds.record_external_refund
        return s.PaymentOut.of(record(payment_id, evidence=body.evidence, uow=new_uow(), actor=access.actor_of(who)))

    @app.get("/v1/rejections", tags=["audit"], responses=ERROR_RESPONSES)
    def rejections(
        channel_id: str | None = Query(None, max_length=40), code: str | None = Query(None, max_length=40),
        limit: int = Query(100, ge=1, le=settings.page_size_max), who: ApiKeyRecord = Depends(caller(*READERS)),
    ) -> list[dict]:  # fmt: skip
        """Every refused request, newest first: when, which channel (or device's channel, or endpoint:
        devices, cards, orders, statements, meters …), the caller's key, the code and the reason, the
        body's size (`body_bytes`) and SHA-256 (`body_sha256`, none when refused unread)."""
        with new_uow() as uow:
            return uow.rejections.list(limit=limit, channel_id=channel_id, code=code)

    @app.get("/v1/audit", tags=["audit"], responses=ERROR_RESPONSES)
    def audit_log(
        subject: str | None = None, limit: int = Query(100, ge=1, le=settings.page_size_max), who: ApiKeyRecord = Depends(caller(*READERS))
    ) -> list[dict]:
        with new_uow() as uow:
            return uow.audit.list(limit=limit, subject=subject)

    @app.get("/v1/checks/ledger", tags=["audit"], response_model=s.LedgerCheckOut, responses=ERROR_RESPONSES)
    def ledger_check(who: ApiKeyRecord = Depends(caller(*READERS))) -> s.LedgerCheckOut:
        report = checks.check_ledger(new_uow())
        return s.LedgerCheckOut(
            ok=report.ok,
            findings=[s.Finding(**f.__dict__) for f in report.findings],
            totals_by_kind_fen=report.totals_by_kind_fen,
            payments_by_state={k: {"count": n, "amount_fen": fen} for k, (n, fen) in report.payments_by_state.items()},
            arrears={"accounts": report.arrears[0], "amount_fen": report.arrears[1]},
        )

    app.include_router(delivery_routes(system, caller, ERROR_RESPONSES))
    app.include_router(resident_routes(system))
    app.include_router(reconciliation_routes(system, caller, ERROR_RESPONSES, read_body))
    return app
