"""A local WeChat Pay API v3 stub: a real HTTP server speaking the documented protocol.

It has its own platform RSA key (answers are signed with it, like WeChat Pay's), verifies every
request's WECHATPAY2-SHA256-RSA2048 Authorization against the merchant's public key (refusing 401
SIGN_ERROR otherwise, and recording it), holds orders, refunds and bills, and can be told to fail
(HTTP 500), to tamper with an answer after signing it, or to serve a bill other than the one it
hashed. Serve it with `gasworks.sim.stubs.serving.served_in_thread(stub.app())`.
"""

import hashlib
import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fastapi import FastAPI, Request, Response

from gasworks.adapters.channels.gateways.wechatpay_v3 import gzip_bytes, parse_authorization
from gasworks.adapters.channels.rsa import new_private_key_pem, public_key_pem, sign_sha256_rsa, verify_sha256_rsa
from gasworks.adapters.channels.wechatpay_v3 import signed_message

PLATFORM_SERIAL = "PUB_KEY_ID_0114232134912410000000388000"


@dataclass
class StubRefund:
    out_refund_no: str
    refund_id: str
    transaction_id: str
    out_trade_no: str
    refund_fen: int
    total_fen: int
    status: str = "PROCESSING"
    success_time: str | None = None


@dataclass
class WechatPayStub:
    mchid: str
    merchant_serial: str
    merchant_public_key_pem: str
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    skew_s: int = 300
    platform_private_key_pem: str = field(default_factory=new_private_key_pem)
    platform_serial: str = PLATFORM_SERIAL
    orders: dict[str, dict] = field(default_factory=dict)  # out_trade_no → the transaction as the query answers it
    transactions: dict[str, dict] = field(default_factory=dict)  # transaction_id → it: an order paid twice has two
    refunds: dict[str, StubRefund] = field(default_factory=dict)
    bills: dict[str, bytes] = field(default_factory=dict)  # "YYYY-MM-DD" → the bill (decompressed)
    # Faults, set by a test:
    fail_next: int = 0  # this many next calls answer HTTP 500 (unsigned)
    tamper: bool = False  # answers are changed after signing
    wrong_bill: bool = False  # the download serves a bill other than the one hashed
    refund_status_on_create: str = "PROCESSING"
    download_base: str | None = None  # a download_url on another host (a forged or misrouted answer)
    # What it saw:
    calls: list[str] = field(default_factory=list)
    refund_calls: list[str] = field(default_factory=list)  # out_refund_no of every POST, retries included
    refused: list[str] = field(default_factory=list)
    _tokens: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def platform_public_key_pem(self) -> str:
        return public_key_pem(self.platform_private_key_pem)

    # ---- what happened at WeChat Pay ---------------------------------------------------------

    def pay(self, out_trade_no: str, amount_fen: int, *, transaction_id: str | None = None) -> str:
        """A payment of the order. Paid again (it happens: two devices, one order), the order still
        answers with its first payment and the second is a transaction of its own, refundable."""
        transaction_id = transaction_id or "4200" + secrets.token_hex(10)
        paid = {
            "appid": "wxgasworks0000001", "mchid": self.mchid, "out_trade_no": out_trade_no, "transaction_id": transaction_id,
            "trade_type": "JSAPI", "trade_state": "SUCCESS", "trade_state_desc": "支付成功", "bank_type": "OTHERS", "attach": "",
            "success_time": self.now().isoformat(timespec="seconds"), "payer": {"openid": "oGasworksResident"},
            "amount": {"total": amount_fen, "payer_total": amount_fen, "currency": "CNY", "payer_currency": "CNY"},
        }  # fmt: skip
        self.transactions[transaction_id] = paid
        if self.orders.get(out_trade_no, {}).get("trade_state") != "SUCCESS":
            self.orders[out_trade_no] = paid
        return transaction_id

    def set_state(self, out_trade_no: str, trade_state: str) -> None:
        self.orders[out_trade_no] = {
            "appid": "wxgasworks0000001", "mchid": self.mchid, "out_trade_no": out_trade_no, "trade_state": trade_state,
            "trade_state_desc": trade_state, "amount": {"payer_currency": "CNY"},
        }  # fmt: skip

    def settle_refund(self, out_refund_no: str, status: str) -> None:
        refund = self.refunds[out_refund_no]
        refund.status = status
        refund.success_time = self.now().isoformat(timespec="seconds") if status == "SUCCESS" else None

    # ---- the HTTP side -----------------------------------------------------------------------

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def authenticate(request: Request, call_next):  # noqa: ANN202
            body = await request.body()
            url = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            self.calls.append(f"{request.method} {url}")
            with self._lock:
                if self.fail_next > 0:
                    self.fail_next -= 1
                    return Response("<html>502 Bad Gateway</html>", status_code=500, media_type="text/html")
            refusal = self._refusal(request, url, body)
            if refusal is not None:
                self.refused.append(refusal)
                return self._answer(401, {"code": "SIGN_ERROR", "message": refusal})
            return await call_next(request)

        @app.get("/v3/pay/transactions/out-trade-no/{out_trade_no}")
        def query(out_trade_no: str, mchid: str = "") -> Response:
            if mchid != self.mchid:
                return self._answer(400, {"code": "PARAM_ERROR", "message": "mchid mismatch"})
            order = self.orders.get(out_trade_no)
            if order is None:
                return self._answer(404, {"code": "ORDER_NOT_EXIST", "message": "订单不存在"})
            return self._answer(200, order)

        @app.post("/v3/refund/domestic/refunds")
        async def refund(request: Request) -> Response:
            body = json.loads(await request.body())
            no = body["out_refund_no"]
            self.refund_calls.append(no)
            with self._lock:
                existing = self.refunds.get(no)
                if existing is None:
                    paid = self.transactions.get(str(body.get("transaction_id")))
                    if paid is None:
                        return self._answer(404, {"code": "RESOURCE_NOT_EXISTS", "message": "订单不存在"})
                    amount = body["amount"]
                    if amount["total"] != paid["amount"]["total"] or amount["refund"] > amount["total"]:
                        return self._answer(400, {"code": "PARAM_ERROR", "message": "金额不正确"})
                    existing = self.refunds[no] = StubRefund(no, "50300" + secrets.token_hex(10), paid["transaction_id"], paid["out_trade_no"], amount["refund"], amount["total"], self.refund_status_on_create)
            return self._answer(200, self._refund_json(existing))

        @app.get("/v3/refund/domestic/refunds/{out_refund_no}")
        def refund_status(out_refund_no: str) -> Response:
            refund = self.refunds.get(out_refund_no)
            if refund is None:
                return self._answer(404, {"code": "RESOURCE_NOT_EXISTS", "message": "退款单不存在"})
            return self._answer(200, self._refund_json(refund))

        @app.get("/v3/bill/tradebill")
        def tradebill(request: Request, bill_date: str, bill_type: str = "ALL", tar_type: str = "") -> Response:
            bill = self.bills.get(bill_date)
            if bill is None:
                return self._answer(400, {"code": "NO_STATEMENT_EXIST", "message": "要查询的账单文件不存在"})
            token = secrets.token_urlsafe(16)
            self._tokens[token] = bill_date
            base = self.download_base or f"{request.url.scheme}://{request.url.netloc}"
            return self._answer(200, {"hash_type": "SHA1", "hash_value": hashlib.sha1(bill).hexdigest(), "download_url": f"{base}/v3/billdownload/file?token={token}"})

        @app.get("/v3/billdownload/file")
        def download(token: str) -> Response:
            bill_date = self._tokens.pop(token, None)
            if bill_date is None:
                return Response(status_code=404)
            bill = self.bills[bill_date]
            if self.wrong_bill:
                bill = bill.replace(b"`SUCCESS", b"`REFUND", 1) if b"`SUCCESS" in bill else bill + b"\n"
            return Response(gzip_bytes(bill), media_type="application/octet-stream")  # not signed: the hash vouches for it

        return app

    def _refusal(self, request: Request, url: str, body: bytes) -> str | None:
        fields = parse_authorization(request.headers.get("Authorization", ""))
        if not fields:
            return "no WECHATPAY2-SHA256-RSA2048 Authorization"
        if fields.get("mchid") != self.mchid or fields.get("serial_no") != self.merchant_serial:
            return f"unknown merchant {fields.get('mchid')!r} / certificate {fields.get('serial_no')!r}"
        timestamp, nonce = fields.get("timestamp", ""), fields.get("nonce_str", "")
        message = f"{request.method}\n{url}\n{timestamp}\n{nonce}\n".encode() + body + b"\n"
        if not verify_sha256_rsa(self.merchant_public_key_pem, message, fields.get("signature", "")):
            return "signature does not verify"
        if not timestamp.isdigit() or abs(int(timestamp) - self.now().timestamp()) > self.skew_s:
            return "timestamp outside 5 minutes"
        return None

    def _answer(self, status: int, payload: dict) -> Response:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        timestamp, nonce = str(int(self.now().timestamp())), secrets.token_hex(16)
        signature = sign_sha256_rsa(self.platform_private_key_pem, signed_message(timestamp, nonce, body))
        if self.tamper:  # a man in the middle turns "not paid" into "paid", or adds a field
            tampered = body.replace(b'"NOTPAY"', b'"SUCCESS"').replace(b'"PROCESSING"', b'"SUCCESS"')
            body = tampered if tampered != body else body[:-1] + b',"x":1}'
        headers = {
            "Request-ID": secrets.token_hex(16), "Wechatpay-Serial": self.platform_serial, "Wechatpay-Timestamp": timestamp,
            "Wechatpay-Nonce": nonce, "Wechatpay-Signature": signature, "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
        }  # fmt: skip
        return Response(body, status_code=status, media_type="application/json", headers=headers)

    def _refund_json(self, refund: StubRefund) -> dict:
        return {
            "refund_id": refund.refund_id, "out_refund_no": refund.out_refund_no, "transaction_id": refund.transaction_id,
            "out_trade_no": refund.out_trade_no, "channel": "ORIGINAL", "user_received_account": "支付用户零钱",
            "success_time": refund.success_time, "create_time": self.now().isoformat(timespec="seconds"), "status": refund.status,
            "funds_account": "AVAILABLE",
            "amount": {"total": refund.total_fen, "refund": refund.refund_fen, "payer_total": refund.total_fen, "payer_refund": refund.refund_fen,
                       "settlement_refund": refund.refund_fen, "settlement_total": refund.total_fen, "discount_refund": 0, "currency": "CNY"},
        }  # fmt: skip
