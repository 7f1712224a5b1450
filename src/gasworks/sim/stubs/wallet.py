"""A local bill-payment wallet speaking gasworks' documented wallet query API (README "Calling the
channels"): verifies our HMAC-signed requests, signs its answers with the same shared secret over the
request's nonce. Can be told to tamper with an answer or to replay an earlier one."""

import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fastapi import FastAPI, Request, Response

from gasworks.adapters.channels.gateways.wallet import response_message
from gasworks.adapters.channels.wallet_hmac import canonical_string, signature


@dataclass
class WalletStub:
    key_id: str
    secret: str
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    prefix: str = "/gasworks/v1"
    transactions: dict[str, dict] = field(default_factory=dict)
    statements: dict[str, bytes] = field(default_factory=dict)
    tamper: bool = False
    replay: bool = False  # answer with the previous answer, headers and all
    refused: list[str] = field(default_factory=list)
    statements_served: list[str] = field(default_factory=list)  # the days whose statement it handed out
    _last: tuple[int, bytes, dict] | None = None

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get(self.prefix + "/transactions/{txn_id}")
        def transaction(txn_id: str, request: Request) -> Response:
            found = self.transactions.get(txn_id)
            return self._answer(request, 200, json.dumps(found or {"txn_id": txn_id, "status": "not_found"}).encode())

        @app.get(self.prefix + "/statements/{day}")
        def statement(day: str, request: Request) -> Response:
            content = self.statements.get(day)
            answer = self._answer(request, 200 if content is not None else 404, content or b"")
            if answer.status_code == 200:
                self.statements_served.append(day)
            return answer

        return app

    def _answer(self, request: Request, status: int, body: bytes) -> Response:
        h = request.headers
        nonce, timestamp = h.get("X-Gasworks-Nonce", ""), h.get("X-Gasworks-Timestamp", "")
        expected = signature(self.secret, canonical_string("GET", request.url.path, timestamp, nonce, b""))
        if h.get("X-Gasworks-Key-Id") != self.key_id or not hmac.compare_digest(expected.encode(), h.get("X-Gasworks-Signature", "").encode()):
            self.refused.append("signature")
            return Response(b'{"error":"SIGNATURE_INVALID"}', status_code=401)
        if self.replay and self._last is not None:
            status, body, headers = self._last
            return Response(body, status_code=status, headers=headers)
        at = str(int(self.now().timestamp()))
        headers = {"X-Gasworks-Key-Id": self.key_id, "X-Gasworks-Timestamp": at, "X-Gasworks-Signature": signature(self.secret, response_message(request.url.path, at, nonce, body))}
        self._last = (status, body, headers)
        if self.tamper:
            body = body.replace(b'"not_found"', b'"paid"')
        return Response(body, status_code=status, headers=headers, media_type="application/json")
