"""What every router shares: the error shape, bounded body reads, and who is calling."""

from collections.abc import Callable
from datetime import datetime, timedelta

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gasworks.adapters.channels import InboundRequest, Reply
from gasworks.bootstrap import System
from gasworks.domain.access import ApiKeyRecord
from gasworks.domain.errors import InvalidInput, PayloadTooLarge
from gasworks.entrypoints.api import schemas as s
from gasworks.entrypoints.api.edge import note_caller
from gasworks.services import access
from gasworks.services.access import Role

READERS = {Role.OPERATOR, Role.AUDITOR}
ERROR_RESPONSES = {status: {"model": s.ErrorBody} for status in (400, 401, 403, 404, 409, 413, 422, 429)}
DEVICE_PAID_AT_PAST_MAX = timedelta(days=7)  # a device that was offline this long sends what it took since

bearer = HTTPBearer(auto_error=False, description="Operator, auditor or device API key")


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


async def inbound(request: Request, bytes_max: int) -> InboundRequest:
    """A channel's request as its codec verifies it: method, path, headers, the bounded body, the peer."""
    return InboundRequest(
        method=request.method,
        path=request.url.path,
        headers={k.lower(): v for k, v in request.headers.items()},
        body=await read_body(request, bytes_max),
        remote_addr=request.client.host if request.client else "",
    )


def check_device_time(paid_at: datetime | None, now: datetime) -> datetime | None:
    """A device's own time for a payment: with an offset, not in the future, not older than a week."""
    if paid_at is None:
        return None
    if paid_at.tzinfo is None:
        raise InvalidInput("paid_at needs a UTC offset", code="INVALID_PAID_AT")
    if paid_at > now + timedelta(minutes=5) or paid_at < now - DEVICE_PAID_AT_PAST_MAX:
        raise InvalidInput(f"paid_at {paid_at.isoformat()} is in the future or more than 7 days ago", code="INVALID_PAID_AT")
    return paid_at


class Callers:
    """`Depends(callers(Role.OPERATOR))`: the API key presented, identified and authorized for those roles."""

    def __init__(self, system: System) -> None:
        self.system = system

    def identified(self, request: Request, credentials: HTTPAuthorizationCredentials | None, allowed: set[Role]) -> ApiKeyRecord:
        record = access.identify(credentials.credentials if credentials else None, self.system.new_uow())
        note_caller(request, record)  # a refusal from here on names the key (and a device's channel)
        return access.authorize(record, allowed)

    def __call__(self, *roles: Role) -> Callable[..., ApiKeyRecord]:
        allowed = set(roles)

        def dependency(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> ApiKeyRecord:
            return self.identified(request, credentials, allowed)

        return dependency
