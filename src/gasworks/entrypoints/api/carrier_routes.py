"""Pushes from carrier platforms: `POST /v1/carriers/ctwing/{secret}/push`, `POST /v1/carriers/onenet/push`.

CTWing signs nothing it pushes, so the subscription URL holds a secret (`ctwing_push_secret`, at
least 32 characters) and this endpoint answers anything else with 404, recorded like every
refusal (the edge keeps the path with the secret segment blanked). A push that passed is answered
200 whatever became of the frame inside, since a retry could not change it: the platform retries
anything but 200, and a refused frame is recorded where refusals are kept, not retried into
noise. A retry of a push already taken gets 200 and changes nothing.

OneNET signs its pushes with the token configured on both sides (`onenet_push_token`): a push whose
signature does not verify is 403 `PUSH_SIGNATURE_INVALID`, recorded, before anything in it is read.
"""

import hmac
import logging
from collections.abc import Callable

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse

from gasworks.adapters.meters.carriers import ctwing, onenet
from gasworks.bootstrap import System
from gasworks.domain.carriers import CarrierPush
from gasworks.domain.errors import GasworksError, NotFound
from gasworks.entrypoints.api.edge import facts_of, redacted_path
from gasworks.observability import carrier_pushes
from gasworks.services import carriers

PUSH_SECRET_CHARS_MIN = 32
PUSH_SECRET_CHARS_MAX = 128


class PushInProgress(GasworksError):
    """The same push is being taken by another request right now: the platform should come back."""

    code = carriers.IN_PROGRESS
    http_status = 503


def push_secret_matches(given: str, configured: str) -> bool:
    if len(configured) < PUSH_SECRET_CHARS_MIN or len(given) > PUSH_SECRET_CHARS_MAX:
        return False  # an unset or guessable secret opens nothing
    return hmac.compare_digest(given.encode(), configured.encode())


class SecretlessAccessLog(logging.Filter):
    """uvicorn's access log names every request's path: the push URL's secret is blanked there too."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 3 and isinstance(record.args[2], str):
            record.args = (*record.args[:2], redacted_path(record.args[2]), *record.args[3:])
        return True


def keep_secrets_out_of_access_log() -> None:
    access_log = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, SecretlessAccessLog) for f in access_log.filters):
        access_log.addFilter(SecretlessAccessLog())


def carrier_routes(system: System, read_body: Callable) -> APIRouter:
    keep_secrets_out_of_access_log()
    router = APIRouter()
    settings = system.settings

    @router.post("/v1/carriers/ctwing/{secret}/push", tags=["carriers"], summary="CTWing subscription push (dataReport, commandResponse, deviceOnlineOfflineReport)")
    async def ctwing_push(secret: str, request: Request) -> JSONResponse:
        facts = facts_of(request)
        facts.channel_id, facts.channel_kind = "ctwing", "carrier"
        if not push_secret_matches(secret, settings.ctwing_push_secret):
            raise NotFound("no such push URL", code="UNKNOWN_PUSH_URL")
        body = await read_body(request, settings.carrier_push_bytes_max)
        return await take(ctwing.parse_push(body))

    @router.post("/v1/carriers/onenet/push", tags=["carriers"], summary="OneNET data push, signed with the token configured on both sides")
    async def onenet_push(request: Request) -> JSONResponse:
        facts = facts_of(request)
        facts.channel_id, facts.channel_kind = "onenet", "carrier"
        body = await read_body(request, settings.carrier_push_bytes_max)
        return await take(onenet.parse_push(body, settings.onenet_push_token))

    @router.get("/v1/carriers/onenet/push", tags=["carriers"], summary="OneNET's URL verification: answers msg when the signature verifies")
    def onenet_verify_url(
        request: Request,
        msg: str = Query(max_length=onenet.MSG_CHARS_MAX), nonce: str = Query(max_length=onenet.NONCE_CHARS), signature: str = Query(max_length=64),
    ) -> PlainTextResponse:  # fmt: skip
        facts_of(request).channel_id = "onenet"
        return PlainTextResponse(onenet.verify_url(settings.onenet_push_token, msg=msg, nonce=nonce, given=signature))

    async def take(push: CarrierPush) -> JSONResponse:
        outcome = await run_in_threadpool(carriers.take_push, push, system.new_uow)
        if outcome.code == carriers.IN_PROGRESS:
            raise PushInProgress(outcome.what)
        carrier_pushes.labels(push.platform.value, "DUPLICATE" if outcome.duplicate else outcome.code).inc()
        return JSONResponse({"taken": outcome.taken, "code": outcome.code, "duplicate": outcome.duplicate, "what": outcome.what[:300]})

    return router
