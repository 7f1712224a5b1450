"""The HTTP edge: every request body is bounded, every refused request is recorded and counted.

One ASGI middleware sits around the whole API. It reads each request body (at most
`request_body_bytes_max`; statement uploads, which are streamed, at most `statement_bytes_max`),
keeps its size and SHA-256, and refuses a larger one with 413 without reading further. Whenever the
reply is a refusal (any 4xx, or a channel's own failure reply, which may be a 200 "failure"), it
records one row in `intake_rejections` (channel or device, code, message, caller, body size and
hash, time) and counts it in `gasworks_intake_refusals_total`, *before* the reply goes out.

Routes and exception handlers say what they know through `note_refusal` and `note_caller`: the
code and message, the channel's kind, the API key that called. What they do not say is derived from
the path: `/v1/channels/{id}/…` is channel `id`; `/v1/devices/…` is "devices"; `/v1/orders` is
"orders", and so on.
"""

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gasworks.domain.access import ApiKeyRecord
from gasworks.observability import intake_refusals
from gasworks.services.intake import Refusal

log = structlog.get_logger(__name__)

SCOPE_KEY = "gasworks.edge"
BODY_PREFIX_BYTES_MAX = 2000  # what a rejection keeps of the body itself, to investigate
SUMMARY_HEADERS = ("content-type", "wechatpay-", "x-gasworks-", "user-agent")  # never Authorization


@dataclass
class EdgeFacts:
    """What the edge knows about one request; routes add to it as they learn."""

    body_bytes: int = 0
    body_sha256: Any = field(default_factory=hashlib.sha256)
    body_complete: bool = False
    body_prefix: bytes = b""
    channel_id: str | None = None  # the channel or the device's channel, once known
    channel_kind: str | None = None  # the metric's label, once known
    caller: str | None = None  # the API key that called, once known
    code: str | None = None
    message: str = ""

    def take(self, chunk: bytes) -> None:
        self.body_bytes += len(chunk)
        self.body_sha256.update(chunk)
        if len(self.body_prefix) < BODY_PREFIX_BYTES_MAX:
            self.body_prefix += chunk[: BODY_PREFIX_BYTES_MAX - len(self.body_prefix)]


def facts_of(request: Request) -> EdgeFacts:
    facts = request.scope.get(SCOPE_KEY)
    if facts is None:  # the app called without the edge (it is always there in create_app)
        facts = request.scope[SCOPE_KEY] = EdgeFacts()
    return facts


def note_refusal(request: Request, code: str, message: str, *, channel_kind: str | None = None) -> None:
    facts = facts_of(request)
    facts.code, facts.message = code, message
    if channel_kind is not None:
        facts.channel_kind = channel_kind


def note_caller(request: Request, key: ApiKeyRecord) -> None:
    facts = facts_of(request)
    facts.caller = f"{key.role}:{key.id}:{key.name}"
    if key.channel_id:  # a device acts for its kiosk or counter channel
        facts.channel_id, facts.channel_kind = key.channel_id, "device"


def route_path(scope: Scope) -> str:
    """The path as this app's routes see it: a province's /cities/<code> prefix (the root path) taken off."""
    path: str = scope.get("path", "")
    root = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root + "/") else path


def family_of(path: str) -> tuple[str, str | None]:
    """Who a refusal is recorded under when no route said: (channel id or endpoint family, channel id from the path)."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[:2] == ["v1", "channels"]:
        return "channel", parts[2][:40]
    if len(parts) >= 2 and parts[0] == "v1":
        return parts[1][:40], None
    return (parts[0][:40] if parts else "api"), None


def redacted_path(path: str) -> str:
    """A carrier's push URL holds its secret (/v1/carriers/<platform>/<secret>/push): never kept."""
    parts = path.split("/")
    if len(parts) > 4 and parts[1:3] == ["v1", "carriers"]:
        parts[4] = "(secret)"
    return "/".join(parts)


class Edge:
    """Pure ASGI middleware: bounds bodies, records and counts refusals before they are answered."""

    def __init__(self, app: ASGIApp, *, body_bytes_max: int, streamed_paths: dict[str, int], record: Callable[[Refusal], None]) -> None:
        self.app = app
        self.body_bytes_max = body_bytes_max
        self.streamed_paths = streamed_paths  # path -> its own bound; the route reads and bounds the stream
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        facts = scope[SCOPE_KEY] = EdgeFacts()
        path = route_path(scope)
        streamed = path in self.streamed_paths
        bytes_max = self.streamed_paths.get(path, self.body_bytes_max)
        answered = False

        async def send_recorded(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start" and not answered:
                answered = True
                status = int(message["status"])
                if status >= 400 or facts.code is not None:
                    if streamed and not facts.body_complete:
                        await self._drain(receive, facts)
                    await self._record(scope, facts, status)
            await send(message)

        declared = _declared_length(scope)
        if declared == -1 or (declared is not None and declared > bytes_max):
            facts.body_bytes = max(declared, 0)
            await self._too_large(scope, receive, send_recorded, facts, bytes_max)
            return

        if streamed:

            async def receive_hashed() -> Message:
                message = await receive()
                if message["type"] == "http.request":
                    facts.take(message.get("body", b""))
                    facts.body_complete = not message.get("more_body", False)
                return message

            await self.app(scope, receive_hashed, send_recorded)
            return

        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the caller left before sending its body: nobody to answer
            chunk = message.get("body", b"")
            facts.take(chunk)
            if facts.body_bytes > bytes_max:
                await self._too_large(scope, receive, send_recorded, facts, bytes_max)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        facts.body_complete = True
        body = b"".join(chunks)
        replayed = False

        async def receive_replayed() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, receive_replayed, send_recorded)

    async def _drain(self, receive: Receive, facts: EdgeFacts) -> None:
        """A streamed body refused before it was read (a statement upload without a key, say) is read
        on, to record its size and hash, but only up to `body_bytes_max` more: an attacker's large
        body is recorded as refused unread, with its declared size."""
        seen_max = facts.body_bytes + self.body_bytes_max
        while not facts.body_complete and facts.body_bytes <= seen_max:
            message = await receive()
            if message["type"] != "http.request":
                return
            facts.take(message.get("body", b""))
            facts.body_complete = not message.get("more_body", False)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, facts: EdgeFacts, bytes_max: int) -> None:
        facts.code, facts.message = "BODY_TOO_LARGE", f"request body over {bytes_max} bytes, refused unread"
        payload = json.dumps({"error": {"code": facts.code, "message": facts.message}}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})

    async def _record(self, scope: Scope, facts: EdgeFacts, status: int) -> None:
        family, path_channel = family_of(route_path(scope))
        channel_id = facts.channel_id or path_channel or family
        code = facts.code or f"HTTP_{status}"
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")[:200] for k, v in scope.get("headers", [])}
        client = scope.get("client")
        refusal = Refusal(
            channel_id=channel_id,
            code=code,
            message=facts.message or f"answered {status}",
            remote_addr=client[0] if client else "",
            caller=facts.caller,
            body_bytes=facts.body_bytes,
            body_sha256=facts.body_sha256.hexdigest() if facts.body_complete else None,
            request_summary={
                "method": scope.get("method", ""),
                "path": redacted_path(route_path(scope))[:300],
                "query": scope.get("query_string", b"")[:300].decode("latin-1"),
                "status": status,
                "headers": {k: v for k, v in headers.items() if k.startswith(SUMMARY_HEADERS)},
                "body": facts.body_prefix.decode("utf-8", errors="replace"),
                "body_complete": facts.body_complete,
            },
        )
        try:
            await run_in_threadpool(self.record, refusal)
        except Exception as unrecorded:  # the database itself is away (failover): answer anyway, and say so in the log
            log.error("refusal_not_recorded", code=code, channel_id=channel_id, status=status, reason=str(unrecorded)[:300])
        intake_refusals.labels(facts.channel_kind or family, code).inc()


def _declared_length(scope: Scope) -> int | None:
    """The Content-Length header: None when absent, -1 when it is not a number."""
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() and len(text) <= 18 else -1
    return None
