"""Channels: payment notifications and bill payments, authenticated by the channel's signature only."""

import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from gasworks.adapters.channels import BILL_PAYMENT_DECODERS, NOTIFY_DECODERS, Reply, alipay, wallet_hmac, wechatpay_v3
from gasworks.bootstrap import System
from gasworks.domain.channels import Channel, ChannelKind
from gasworks.domain.errors import GasworksError
from gasworks.entrypoints.api import schemas as s
from gasworks.entrypoints.api.common import error_response, inbound, to_response
from gasworks.entrypoints.api.delivery_routes import resident_url
from gasworks.entrypoints.api.edge import facts_of, note_refusal
from gasworks.observability import intake_seconds, payments_taken
from gasworks.services import intake, notifications

# How each channel kind expects to hear "taken" and "refused".
CHANNEL_REPLIES: dict[ChannelKind, tuple[Callable[[], Reply], Callable[[GasworksError], Reply]]] = {
    ChannelKind.WECHATPAY_V3: (wechatpay_v3.success_reply, wechatpay_v3.error_reply),
    ChannelKind.ALIPAY: (alipay.success_reply, alipay.error_reply),
}


def channel_routes(system: System, errors: dict[int | str, dict[str, Any]]) -> APIRouter:
    router = APIRouter(tags=["channels"], responses=errors)
    settings = system.settings
    new_uow = system.new_uow

    async def take(channel_id: str, request: Request, decoders: dict[Any, Any]) -> tuple[Channel, intake.Acceptance | None, GasworksError | None]:
        raw = await inbound(request, settings.request_body_bytes_max)
        channel = await run_in_threadpool(notifications.load_channel, channel_id, new_uow)
        started = time.perf_counter()
        try:
            taken = await run_in_threadpool(lambda: notifications.take_channel_payment(channel, raw, decoders, system.new_booking_uow, skew_s=settings.notification_clock_skew_s, ceiling=system.payment_ceiling, retry=system.cut_retry))
            payments_taken.labels(channel.kind.value, "duplicate" if taken.duplicate else taken.state.value).inc()
            return channel, taken, None
        except GasworksError as error:  # recorded and counted by the edge, whatever the reply's format
            note_refusal(request, error.code, error.message, channel_kind=channel.kind.value)
            return channel, None, error
        finally:
            intake_seconds.labels(channel.kind.value).observe(time.perf_counter() - started)

    @router.post("/v1/channels/{channel_id}/notify")
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

    @router.post("/v1/channels/{channel_id}/payments", response_model=s.AcceptanceOut, openapi_extra=s.WALLET_PAYMENT_BODY)
    async def channel_payment(channel_id: str, request: Request) -> s.AcceptanceOut:
        """Bill payment (代收/销账) by a wallet-hmac channel: the same transaction id always gets the first answer."""
        _, taken, error = await take(channel_id, request, BILL_PAYMENT_DECODERS)
        if error is not None:
            raise error
        assert taken is not None
        return s.AcceptanceOut.of(taken, resident_url=resident_url(system, request, taken.payment_id))

    @router.get("/v1/channels/{channel_id}/accounts/{account_no}", response_model=s.ChannelAccountOut)
    async def channel_account(channel_id: str, account_no: str, request: Request) -> s.ChannelAccountOut:
        """Bill-payment account query: masked name, balance and meter kind, for the resident to confirm."""
        raw = await inbound(request, settings.request_body_bytes_max)
        channel = await run_in_threadpool(notifications.load_channel, channel_id, new_uow)
        facts_of(request).channel_kind = channel.kind.value
        view = await run_in_threadpool(lambda: notifications.look_up_account_for_channel(channel, account_no, raw, new_uow, skew_s=settings.notification_clock_skew_s, verify=wallet_hmac.verify_request))
        return s.ChannelAccountOut.of(view)

    return router
