"""The HTTP API: FastAPI, errors as {"error": {"code", "message"}}, never a 500 for bad input.

One router per resource (channels, orders, devices, accounts and payments, audit, delivery, the
resident's page, statements); this module only wires them, the edge and the error handlers.
"""

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gasworks.bootstrap import System
from gasworks.domain.errors import GasworksError
from gasworks.entrypoints.api.audit_routes import audit_routes
from gasworks.entrypoints.api.carrier_routes import carrier_routes
from gasworks.entrypoints.api.channel_routes import channel_routes
from gasworks.entrypoints.api.common import ERROR_RESPONSES, Callers, error_response, read_body
from gasworks.entrypoints.api.delivery_routes import delivery_routes
from gasworks.entrypoints.api.edge import Edge, note_refusal
from gasworks.entrypoints.api.order_page import order_page_routes
from gasworks.entrypoints.api.payment_routes import account_routes, device_routes, order_routes
from gasworks.entrypoints.api.reconciliation_routes import reconciliation_routes
from gasworks.entrypoints.api.resident_page import resident_routes
from gasworks.services import checks, intake

log = structlog.get_logger(__name__)


def create_app(system: System) -> FastAPI:
    settings = system.settings
    app = FastAPI(
        title="gasworks",
        version="0.1.0",
        description="Every yuan a resident pays becomes gas at their meter, and the system can prove it.",
    )
    app.state.system = system
    # Every body bounded, every refusal recorded and counted before it is answered (edge.py).
    app.add_middleware(
        Edge,
        body_bytes_max=settings.request_body_bytes_max,
        streamed_paths={"/v1/statements": settings.statement_bytes_max},
        record=lambda refusal: intake.record_refusal(refusal, system.new_uow()),
    )
    add_error_handlers(app)

    @app.get("/healthz", tags=["system"])
    def healthz() -> dict[str, str]:
        checks.database_answers(system.new_uow())
        return {"status": "ok"}

    @app.get("/metrics", tags=["system"], include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    caller = Callers(system)
    app.include_router(channel_routes(system, ERROR_RESPONSES))
    app.include_router(order_routes(system, caller, ERROR_RESPONSES))
    app.include_router(device_routes(system, caller, ERROR_RESPONSES))
    app.include_router(account_routes(system, caller, ERROR_RESPONSES))
    app.include_router(audit_routes(system, caller, ERROR_RESPONSES))
    app.include_router(delivery_routes(system, caller, ERROR_RESPONSES))
    app.include_router(resident_routes(system))
    app.include_router(order_page_routes(system))  # /o/{out_trade_no}: an order closed unpaid says so
    app.include_router(reconciliation_routes(system, caller, ERROR_RESPONSES, read_body))
    app.include_router(carrier_routes(system, read_body))
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every refusal answered as {"error": {"code", "message"}} and noted for the edge to record."""

    @app.exception_handler(GasworksError)
    async def _gasworks_error(request: Request, error: GasworksError) -> JSONResponse:
        note_refusal(request, error.code, error.message)
        return error_response(error.http_status, error.code, error.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {str(e['msg'])[:200]}" for e in error.errors()[:10])
        note_refusal(request, "VALIDATION_ERROR", problems)
        return error_response(422, "VALIDATION_ERROR", problems)

    @app.exception_handler(OperationalError)
    async def _database_unavailable(request: Request, error: OperationalError) -> JSONResponse:
        # A deadlock, a serialization failure, or a primary gone in a failover: nothing was committed,
        # so the caller may send the same request again and the exactly-once path answers it once.
        log.warning("database_unavailable", path=request.url.path, reason=str(error.orig)[:300])
        note_refusal(request, "TRY_AGAIN_LATER", "the database could not finish this request; nothing was taken: send it again")
        response = error_response(503, "TRY_AGAIN_LATER", "the database could not finish this request; nothing was taken: send it again")
        response.headers["Retry-After"] = "5"
        return response

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "BODY_TOO_LARGE"}
        code = codes.get(error.status_code, "HTTP_ERROR")
        note_refusal(request, code, str(error.detail))
        return error_response(error.status_code, code, str(error.detail))
