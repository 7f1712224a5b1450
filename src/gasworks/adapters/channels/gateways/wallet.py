"""Calling a bill-payment wallet: our own documented shape, HMAC-signed both ways like its payments.

Requests (the wallet implements them at its base URL, e.g. https://wallet.example.cn/gasworks/v1):

- ``GET {base}/transactions/{txn_id}``: what the wallet knows of one of its transactions;
- ``GET {base}/statements/{YYYY-MM-DD}``: its day's plain CSV statement
  (``txn_id,account_no,amount_fen,paid_at,status`` then ``# total,<count>,<fen>``).

Each request carries the X-Gasworks-* headers of the wallet API (`adapters/channels/wallet_hmac.py`),
signed by us with the channel's shared secret over ``GET\\nPATH\\nTIMESTAMP\\nNONCE\\nsha256hex("")\\n``.
Each answer carries ``X-Gasworks-Key-Id``, ``X-Gasworks-Timestamp`` and ``X-Gasworks-Signature``:
base64 HMAC-SHA256 over ``RESPONSE\\nPATH\\nTIMESTAMP\\nREQUEST NONCE\\nsha256hex(body)\\n``; the
request's nonce in it ties the answer to this request, so an old answer replayed does not verify.

Transaction answer: ``{"txn_id", "status": "paid" | "refunded" | "failed" | "not_found",
"account_no", "amount_fen", "paid_at": RFC 3339}``. Refunds are not in the wallet API: a wallet
refund is made by the wallet and seen in its statement.
"""

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Mapping
from datetime import date, datetime
from urllib.parse import quote, urlsplit

import httpx

from gasworks.adapters.channels.gateways.bounded import read_at_most
from gasworks.adapters.channels.wallet_hmac import canonical_string, signature
from gasworks.domain.channels import PaymentNotice
from gasworks.domain.money import PAYMENT_FEN_ABSOLUTE_MAX
from gasworks.services.channel_gateway import FetchedStatement, GatewayError, OrderAnswer, OrderStatus, RefundAnswer, RefundRequest

ANSWER_BYTES_MAX = 64 * 1024
STATEMENT_BYTES_MAX = 64 * 1024 * 1024
_STATUS = {"paid": OrderStatus.PAID, "refunded": OrderStatus.REFUNDED, "failed": OrderStatus.CLOSED, "not_found": OrderStatus.NOT_FOUND}


def response_message(path: str, timestamp: str, request_nonce: str, body: bytes) -> bytes:
    return f"RESPONSE\n{path}\n{timestamp}\n{request_nonce}\n{hashlib.sha256(body).hexdigest()}\n".encode()


class WalletGateway:
    def __init__(self, *, channel_id: str, base_url: str, keys: Mapping[str, str], now: Callable[[], datetime], skew_s: int = 300, timeout_s: float = 10.0,
                 transport: httpx.BaseTransport | None = None) -> None:  # fmt: skip
        if not keys:
            raise ValueError("a wallet gateway needs the channel's HMAC secret")
        self.channel_id = channel_id
        self.base_url = base_url.rstrip("/")
        self.keys = dict(keys)
        self.now = now
        self.skew_s = skew_s
        self._http = httpx.Client(timeout=timeout_s, transport=transport, follow_redirects=False)

    def query_order(self, out_trade_no: str) -> OrderAnswer:
        """For a wallet the "order" is its own transaction id."""
        answer = json.loads(self._get(f"/transactions/{quote(out_trade_no, safe='')}", ANSWER_BYTES_MAX) or b"{}")
        if not isinstance(answer, dict) or answer.get("txn_id") != out_trade_no:
            raise GatewayError("ANSWER_MISMATCH", f"asked about {out_trade_no}, answered about another transaction", retryable=True)
        status = _STATUS.get(str(answer.get("status")))
        if status is None:
            raise GatewayError("MALFORMED_ANSWER", f"unknown status {str(answer.get('status'))[:20]!r}", retryable=True)
        notice = None
        if status in (OrderStatus.PAID, OrderStatus.REFUNDED):
            amount_fen, account_no = answer.get("amount_fen"), answer.get("account_no")
            if not isinstance(amount_fen, int) or isinstance(amount_fen, bool) or not 0 < amount_fen <= PAYMENT_FEN_ABSOLUTE_MAX:
                raise GatewayError("MALFORMED_ANSWER", "amount_fen must be a positive integer of fen", retryable=True)
            if not isinstance(account_no, str) or not 0 < len(account_no) <= 12:
                raise GatewayError("MALFORMED_ANSWER", "account_no must be text of 1 to 12 characters", retryable=True)
            try:
                paid_at = datetime.fromisoformat(answer["paid_at"]) if isinstance(answer.get("paid_at"), str) else None
            except ValueError:
                raise GatewayError("MALFORMED_ANSWER", "paid_at is not RFC 3339", retryable=True) from None
            notice = PaymentNotice(channel_id=self.channel_id, channel_txn_id=out_trade_no, amount_fen=amount_fen, paid_at=paid_at, account_no=account_no, method="wallet")
        return OrderAnswer(out_trade_no, status, notice)

    def refund(self, request: RefundRequest) -> RefundAnswer:
        raise GatewayError("NOT_SUPPORTED", "the wallet API takes no refund calls: the wallet refunds, its statement shows it", retryable=False)

    def refund_status(self, refund_no: str, *, out_trade_no: str | None = None) -> RefundAnswer:
        raise GatewayError("NOT_SUPPORTED", "the wallet API takes no refund calls", retryable=False)

    def fetch_statement(self, day: date) -> FetchedStatement:
        content = self._get(f"/statements/{day.isoformat()}", STATEMENT_BYTES_MAX, not_ready_ok=True)
        return FetchedStatement(self.channel_id, day, f"{self.channel_id}-{day.isoformat()}.csv", content, "HMAC-signed answer verified")

    def _get(self, tail: str, bytes_max: int, *, not_ready_ok: bool = False) -> bytes:
        path = urlsplit(self.base_url).path + tail
        key_id, secret = next(iter(self.keys.items()))
        timestamp, nonce = str(int(self.now().timestamp())), secrets.token_hex(16)
        headers = {
            "X-Gasworks-Key-Id": key_id, "X-Gasworks-Timestamp": timestamp, "X-Gasworks-Nonce": nonce,
            "X-Gasworks-Signature": signature(secret, canonical_string("GET", path, timestamp, nonce, b"")),
        }  # fmt: skip
        try:
            with self._http.stream("GET", self.base_url + tail, headers=headers) as response:
                status, answer_headers = response.status_code, response.headers
                body = read_at_most(response, bytes_max, f"GET {tail[:80]}")
        except httpx.HTTPError as error:
            raise GatewayError("UNREACHABLE", f"GET {tail[:80]}: {type(error).__name__}: {error}"[:300], retryable=True) from None
        if status >= 500:
            raise GatewayError("CHANNEL_ERROR", f"the wallet answered HTTP {status}", retryable=True)
        answer_key = self.keys.get(answer_headers.get("X-Gasworks-Key-Id", ""))
        answer_ts = answer_headers.get("X-Gasworks-Timestamp", "")
        expected = signature(answer_key, response_message(path, answer_ts, nonce, body)) if answer_key else ""
        if not expected or not hmac.compare_digest(expected.encode(), answer_headers.get("X-Gasworks-Signature", "").encode()):
            raise GatewayError("ANSWER_UNVERIFIED", "the wallet's answer is not signed with the channel's secret", retryable=True)
        if not answer_ts.isdigit() or abs(int(answer_ts) - self.now().timestamp()) > self.skew_s:
            raise GatewayError("ANSWER_UNVERIFIED", f"the answer's timestamp {answer_ts[:20]!r} is outside ±{self.skew_s} s", retryable=True)
        if status == 404 and not_ready_ok:
            raise GatewayError("STATEMENT_NOT_READY", f"the wallet has no statement at {tail}", retryable=True)
        if status != 200:
            raise GatewayError(f"HTTP_{status}", f"the wallet answered HTTP {status}", retryable=False)
        return body
