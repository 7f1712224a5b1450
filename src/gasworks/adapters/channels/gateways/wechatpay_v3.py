"""Calling WeChat Pay API v3: query an order, refund, a refund's status, the day's trade bill.

Wire format, as WeChat Pay documents it (and the `wechatpayv3` SDK implements it, see
tests/test_gateway_wechatpay.py for the cross-check both ways):

- every request carries ``Authorization: WECHATPAY2-SHA256-RSA2048 mchid="…",nonce_str="…",
  signature="…",timestamp="…",serial_no="…"``, the signature SHA256withRSA by our merchant private
  key (serial_no: our merchant certificate's serial) over ``METHOD\\nURL\\ntimestamp\\nnonce\\nbody\\n``,
  where URL is the path with its query string and body is empty for a GET;
- every answer is verified before it is believed: ``Wechatpay-Serial`` names a platform public key
  we hold, ``Wechatpay-Signature`` is SHA256withRSA over ``timestamp\\nnonce\\nbody\\n``, and
  ``Wechatpay-Timestamp`` is within the clock skew we allow. An answer that fails any of this is a
  `GatewayError` (retryable: the next try may get a good one), never a guess;
- ``GET /v3/pay/transactions/out-trade-no/{out_trade_no}?mchid=…`` → ``trade_state`` SUCCESS,
  REFUND, NOTPAY, CLOSED, REVOKED, USERPAYING, PAYERROR;
- ``POST /v3/refund/domestic/refunds`` ``{transaction_id, out_refund_no, reason, notify_url?,
  amount: {refund, total, currency}}`` → ``status`` SUCCESS, CLOSED, PROCESSING, ABNORMAL;
  the same ``out_refund_no`` again is the same refund;
- ``GET /v3/refund/domestic/refunds/{out_refund_no}`` → the same shape;
- ``GET /v3/bill/tradebill?bill_date=…&bill_type=ALL&tar_type=GZIP`` → ``{hash_type: "SHA1",
  hash_value, download_url}``; ``download_url`` is fetched with a signed GET and its answer is NOT
  signed: the bill is believed only when the SHA1 of the original bill ("原始账单（gzip需要解压缩）
  的摘要值": the gzip decompressed) equals ``hash_value``. Not ready yet: 400
  ``NO_STATEMENT_EXIST`` / ``STATEMENT_CREATING``.
"""

import gzip
import hashlib
import hmac
import json
import secrets
import zlib
from collections.abc import Callable, Mapping
from datetime import date, datetime
from urllib.parse import quote, urlsplit

import httpx

from gasworks.adapters.channels.gateways.bounded import read_at_most
from gasworks.adapters.channels.rsa import sign_sha256_rsa, verify_sha256_rsa
from gasworks.adapters.channels.wechatpay_v3 import signed_message
from gasworks.domain.channels import PaymentNotice
from gasworks.domain.money import PAYMENT_FEN_ABSOLUTE_MAX
from gasworks.services.channel_gateway import (
    FetchedStatement,
    GatewayError,
    OrderAnswer,
    OrderStatus,
    RefundAnswer,
    RefundRequest,
    RefundState,
)

SCHEMA = "WECHATPAY2-SHA256-RSA2048"
ANSWER_BYTES_MAX = 64 * 1024  # a JSON answer; larger is refused unread
BILL_BYTES_MAX = 256 * 1024 * 1024  # a day's bill, decompressed (a city's WeChat payments are far below)

_TRADE_STATE = {
    "SUCCESS": OrderStatus.PAID,
    "REFUND": OrderStatus.REFUNDED,  # paid, then (part) refunded
    "NOTPAY": OrderStatus.NOT_PAID,
    "USERPAYING": OrderStatus.NOT_PAID,
    "CLOSED": OrderStatus.CLOSED,
    "REVOKED": OrderStatus.CLOSED,
    "PAYERROR": OrderStatus.CLOSED,  # the payment failed: nothing was taken, the order cannot be paid any more
}
_REFUND_STATUS = {"SUCCESS": RefundState.SUCCESS, "PROCESSING": RefundState.PROCESSING, "CLOSED": RefundState.CLOSED, "ABNORMAL": RefundState.ABNORMAL}
_NOT_READY = ("NO_STATEMENT_EXIST", "STATEMENT_CREATING")


def authorization(*, mchid: str, serial_no: str, private_key_pem: str, method: str, url: str, body: bytes, timestamp: str, nonce: str) -> str:
    """The Authorization header for one request; `url` is the path with its query string."""
    message = f"{method}\n{url}\n{timestamp}\n{nonce}\n".encode() + body + b"\n"
    signature = sign_sha256_rsa(private_key_pem, message)
    return f'{SCHEMA} mchid="{mchid}",nonce_str="{nonce}",signature="{signature}",timestamp="{timestamp}",serial_no="{serial_no}"'


def parse_authorization(header: str) -> dict[str, str]:
    """The fields of an Authorization header (for the stub and tests); {} if it is not ours."""
    schema, _, rest = header.partition(" ")
    if schema != SCHEMA:
        return {}
    fields = {}
    for part in rest.split(","):
        name, _, value = part.strip().partition("=")
        fields[name] = value.strip('"')
    return fields


class WechatPayV3Gateway:
    """One merchant's calls to WeChat Pay. `platform_keys` maps a platform key serial to its PEM."""

    def __init__(
        self, *, channel_id: str, base_url: str, mchid: str, merchant_serial: str, merchant_private_key_pem: str,
        platform_keys: Mapping[str, str], now: Callable[[], datetime], skew_s: int = 300, timeout_s: float = 10.0,
        notify_url: str | None = None, transport: httpx.BaseTransport | None = None,
    ) -> None:  # fmt: skip
        if not platform_keys:
            raise ValueError("a WeChat Pay gateway needs at least one platform public key to verify answers with")
        self.channel_id = channel_id
        self.base_url = base_url.rstrip("/")
        self.mchid = mchid
        self.merchant_serial = merchant_serial
        self.merchant_private_key_pem = merchant_private_key_pem
        self.platform_keys = dict(platform_keys)
        self.now = now
        self.skew_s = skew_s
        self.notify_url = notify_url
        self._http = httpx.Client(timeout=timeout_s, transport=transport, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    # ---- the port ----------------------------------------------------------------------------

    def query_order(self, out_trade_no: str) -> OrderAnswer:
        status, answer = self._call("GET", f"/v3/pay/transactions/out-trade-no/{quote(out_trade_no, safe='')}?mchid={quote(self.mchid)}")
        if status == 404 and answer.get("code") == "ORDER_NOT_EXIST":
            return OrderAnswer(out_trade_no, OrderStatus.NOT_FOUND, None)
        self._require_ok(status, answer, "order query")
        if answer.get("out_trade_no") != out_trade_no or answer.get("mchid") != self.mchid:
            raise GatewayError("ANSWER_MISMATCH", f"asked about {out_trade_no}, answered about {str(answer.get('out_trade_no'))[:40]!r} of merchant {str(answer.get('mchid'))[:20]!r}", retryable=True)
        trade_state = str(answer.get("trade_state"))
        order_status = _TRADE_STATE.get(trade_state)
        if order_status is None:
            raise GatewayError("MALFORMED_ANSWER", f"unknown trade_state {trade_state[:20]!r}", retryable=True)
        notice = None
        if order_status in (OrderStatus.PAID, OrderStatus.REFUNDED):
            notice = PaymentNotice(
                channel_id=self.channel_id, channel_txn_id=_text(answer, "transaction_id", 32), amount_fen=_fen(answer.get("amount"), "total"),
                paid_at=_time(answer.get("success_time")), out_trade_no=out_trade_no, method=str(answer.get("trade_type", ""))[:20],
            )  # fmt: skip
        return OrderAnswer(out_trade_no, order_status, notice)

    def refund(self, request: RefundRequest) -> RefundAnswer:
        body = {
            "transaction_id": request.channel_txn_id,
            "out_refund_no": request.refund_no,
            "reason": request.reason[:80],
            "amount": {"refund": request.refund_fen, "total": request.total_fen, "currency": "CNY"},
        }
        if self.notify_url:
            body["notify_url"] = self.notify_url
        status, answer = self._call("POST", "/v3/refund/domestic/refunds", body)
        self._require_ok(status, answer, "refund")
        return self._refund_answer(request.refund_no, answer)

    def refund_status(self, refund_no: str, *, out_trade_no: str | None = None) -> RefundAnswer:
        status, answer = self._call("GET", f"/v3/refund/domestic/refunds/{quote(refund_no, safe='')}")
        if status == 404 and answer.get("code") == "RESOURCE_NOT_EXISTS":
            raise GatewayError("REFUND_NOT_FOUND", f"WeChat Pay knows no refund {refund_no}: request it (again)", retryable=True)
        self._require_ok(status, answer, "refund query")
        return self._refund_answer(refund_no, answer)

    def fetch_statement(self, day: date) -> FetchedStatement:
        status, answer = self._call("GET", f"/v3/bill/tradebill?bill_date={day.isoformat()}&bill_type=ALL&tar_type=GZIP")
        if status == 400 and answer.get("code") in _NOT_READY:
            raise GatewayError("STATEMENT_NOT_READY", f"the trade bill for {day} is not ready: {str(answer.get('message'))[:100]}", retryable=True)
        self._require_ok(status, answer, "trade bill")
        if answer.get("hash_type") != "SHA1":
            raise GatewayError("MALFORMED_ANSWER", f"hash_type {str(answer.get('hash_type'))[:10]!r}, expected SHA1", retryable=True)
        hash_value = _text(answer, "hash_value", 40).lower()
        download_url = _text(answer, "download_url", 2048)
        bill = gzip_bill = self._download(download_url)
        try:
            bill = _gunzip(gzip_bill, BILL_BYTES_MAX)
        except (OSError, EOFError, zlib.error) as error:
            raise GatewayError("STATEMENT_HASH_MISMATCH", f"the downloaded bill is not gzip: {error}", retryable=True) from None
        got = hashlib.sha1(bill).hexdigest()
        if not hmac.compare_digest(got, hash_value):
            raise GatewayError("STATEMENT_HASH_MISMATCH", f"SHA1 of the bill is {got}, WeChat Pay's signed answer says {hash_value}", retryable=True)
        return FetchedStatement(self.channel_id, day, f"wechat-tradebill-{day.isoformat()}.csv", bill, f"sha1 hash_value {hash_value} matched")

    # ---- the wire ----------------------------------------------------------------------------

    def _call(self, method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
        raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() if body is not None else b""
        status, headers, content = self._send(method, url, raw, ANSWER_BYTES_MAX)
        self._verify(status, headers, content)
        if not content:
            return status, {}
        try:
            answer = json.loads(content)
        except (ValueError, UnicodeDecodeError):
            raise GatewayError("MALFORMED_ANSWER", f"{method} {url[:80]} answered {status} with no JSON", retryable=True) from None
        if not isinstance(answer, dict):
            raise GatewayError("MALFORMED_ANSWER", "the answer is not a JSON object", retryable=True)
        return status, answer

    def _send(self, method: str, url: str, raw: bytes, bytes_max: int, *, base: str | None = None) -> tuple[int, httpx.Headers, bytes]:
        """One signed request; the answer is read up to `bytes_max` bytes, never further."""
        timestamp = str(int(self.now().timestamp()))
        nonce = secrets.token_hex(16).upper()
        headers = {
            "Authorization": authorization(
                mchid=self.mchid, serial_no=self.merchant_serial, private_key_pem=self.merchant_private_key_pem,
                method=method, url=url, body=raw, timestamp=timestamp, nonce=nonce,
            ),
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": "gasworks",
            "Wechatpay-Serial": next(iter(self.platform_keys)),  # which platform key would decrypt sensitive fields
        }  # fmt: skip
        try:
            with self._http.stream(method, (base or self.base_url) + url, content=raw or None, headers=headers) as response:
                return response.status_code, response.headers, read_at_most(response, bytes_max, f"{method} {url[:80]}")
        except httpx.HTTPError as error:
            raise GatewayError("UNREACHABLE", f"{method} {url[:80]}: {type(error).__name__}: {error}"[:300], retryable=True) from None

    def _verify(self, status: int, headers: httpx.Headers, content: bytes) -> None:
        if status >= 500:  # an unsigned gateway error page: the channel is down, not lying
            raise GatewayError("CHANNEL_ERROR", f"WeChat Pay answered HTTP {status}", retryable=True)
        serial = headers.get("Wechatpay-Serial", "")
        signature = headers.get("Wechatpay-Signature", "")
        timestamp = headers.get("Wechatpay-Timestamp", "")
        nonce = headers.get("Wechatpay-Nonce", "")
        key = self.platform_keys.get(serial)
        if key is None:
            raise GatewayError("ANSWER_UNVERIFIED", f"the answer is signed by no platform key we hold (serial {serial[:64]!r})", retryable=True)
        if not verify_sha256_rsa(key, signed_message(timestamp, nonce, content), signature):
            raise GatewayError("ANSWER_UNVERIFIED", "the answer's signature does not verify", retryable=True)
        if not timestamp.isdigit() or abs(int(timestamp) - self.now().timestamp()) > self.skew_s:
            raise GatewayError("ANSWER_UNVERIFIED", f"the answer's timestamp {timestamp[:20]!r} is outside ±{self.skew_s} s", retryable=True)

    def _require_ok(self, status: int, answer: dict, what: str) -> None:
        if 200 <= status < 300:
            return
        code = str(answer.get("code", ""))[:40]
        # 4xx other than throttling and a busy system means our request is wrong: asking again will not help.
        retryable = status == 429 or code in ("SYSTEM_ERROR", "FREQUENCY_LIMITED", "FREQUENCY_LIMIT_EXCEED", "NOT_ENOUGH", "USER_ACCOUNT_ABNORMAL")
        raise GatewayError(code or f"HTTP_{status}", f"{what}: HTTP {status} {code}: {str(answer.get('message', ''))[:150]}", retryable=retryable)

    def _download(self, download_url: str) -> bytes:
        """The bill file: a signed GET whose answer is not signed (the hash vouches for it)."""
        ours, theirs = urlsplit(self.base_url), urlsplit(download_url)
        if (theirs.scheme, theirs.netloc) != (ours.scheme, ours.netloc):  # never fetch from wherever an answer points
            raise GatewayError("MALFORMED_ANSWER", f"download_url is not on {ours.netloc}: {download_url[:100]!r}", retryable=False)
        url = theirs.path + (f"?{theirs.query}" if theirs.query else "")
        status, _, content = self._send("GET", url, b"", BILL_BYTES_MAX, base=f"{ours.scheme}://{ours.netloc}")
        if status != 200:
            raise GatewayError("STATEMENT_DOWNLOAD_FAILED", f"bill download answered HTTP {status}", retryable=True)
        return content

    def _refund_answer(self, refund_no: str, answer: dict) -> RefundAnswer:
        if answer.get("out_refund_no") != refund_no:
            raise GatewayError("ANSWER_MISMATCH", f"asked about refund {refund_no}, answered about {str(answer.get('out_refund_no'))[:64]!r}", retryable=True)
        state = _REFUND_STATUS.get(str(answer.get("status")))
        if state is None:
            raise GatewayError("MALFORMED_ANSWER", f"unknown refund status {str(answer.get('status'))[:20]!r}", retryable=True)
        return RefundAnswer(
            refund_no=refund_no, state=state, refund_fen=_fen(answer.get("amount"), "refund"),
            channel_refund_id=_text(answer, "refund_id", 64), succeeded_at=_time(answer.get("success_time")),
        )  # fmt: skip


def _gunzip(data: bytes, bytes_max: int) -> bytes:
    """Decompress at most `bytes_max` bytes: a small file must not unpack into a huge one."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = inflater.decompress(data, bytes_max + 1)
    if len(out) > bytes_max or inflater.unconsumed_tail:
        raise OSError(f"the bill unpacks beyond {bytes_max} bytes")
    if not inflater.eof:
        raise EOFError("the gzip stream is truncated")
    return out


def gzip_bytes(data: bytes) -> bytes:
    """gzip as WeChat Pay serves a bill (for the stub and tests)."""
    return gzip.compress(data, mtime=0)


def _text(obj: dict, name: str, length_max: int) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= length_max:
        raise GatewayError("MALFORMED_ANSWER", f"{name} must be text of 1 to {length_max} characters", retryable=True)
    return value


def _fen(amount: object, name: str) -> int:
    value = amount.get(name) if isinstance(amount, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= PAYMENT_FEN_ABSOLUTE_MAX:
        raise GatewayError("MALFORMED_ANSWER", f"amount.{name} must be a positive integer of fen, got {str(value)[:30]!r}", retryable=True)
    if isinstance(amount, dict) and amount.get("currency", "CNY") != "CNY":
        raise GatewayError("MALFORMED_ANSWER", f"currency {str(amount.get('currency'))[:5]!r} is not CNY", retryable=True)
    return value


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise GatewayError("MALFORMED_ANSWER", f"time {value[:40]!r} is not RFC 3339", retryable=True) from None
