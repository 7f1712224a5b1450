"""A local Alipay open-API gateway: a real HTTP server on 127.0.0.1 that speaks Alipay's documented
protocol, for the tests and the demo.

It holds its own RSA key pair (Alipay's), verifies each request's RSA2 signature with the merchant
application's public key, checks app_id and timestamp, and answers the four methods gasworks uses,
each answer signed as Alipay signs it (the exact text of the ``..._response`` object):

- alipay.trade.query: WAIT_BUYER_PAY, TRADE_SUCCESS, TRADE_CLOSED (closed unpaid, or refunded in
  full: then send_pay_date is still there); ACQ.TRADE_NOT_EXIST for an unknown trade.
- alipay.trade.refund: once per out_request_no (a repeat answers fund_change=N, a repeat with
  another amount ACQ.DISCORDANT_REPEAT_REQUEST); never beyond the trade's total.
- alipay.trade.fastpay.refund.query: REFUND_SUCCESS with the amount, or no refund data at all.
- alipay.data.dataservice.bill.downloadurl.query: a URL, good for `bill_url_valid_s` (Alipay: 30 s),
  to a zip of two GBK CSV files with GBK names, ``<pid>_<yyyyMMdd>_业务明细.csv`` and
  ``…_业务明细(汇总).csv``; an expired URL answers an error page instead of the zip.

Tests steer it with `fail_next` (an error code for the next call of a method), `tamper_next` (change
the next answer after it was signed) and `expire_next_bill_urls`.
"""

import csv
import io
import json
import secrets
import threading
import time
import urllib.parse
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gasworks.adapters.channels.alipay import codec_of
from gasworks.adapters.channels.base import BEIJING
from gasworks.adapters.channels.gateways.alipay import request_signing_content, signed_response_body
from gasworks.adapters.channels.rsa import new_private_key_pem, public_key_pem, verify_sha256_rsa
from gasworks.domain.errors import GasworksError, InvalidInput
from gasworks.domain.money import fen_to_yuan_text, yuan_text_to_fen

REQUEST_BYTES_MAX = 64 * 1024
BILL_COLUMNS = (
    "支付宝交易号", "商户订单号", "业务类型", "商品名称", "创建时间", "完成时间", "门店编号", "门店名称", "操作员", "终端号",
    "对方账户", "订单金额（元）", "商家实收（元）", "支付宝红包（元）", "集分宝（元）", "支付宝优惠（元）", "商家优惠（元）",
    "券核销金额（元）", "券名称", "商家红包消费金额（元）", "卡消费金额（元）", "退款批次号/请求号", "服务费（元）", "分润（元）", "备注",
)  # fmt: skip


@dataclass
class StubRefund:
    out_request_no: str
    refund_fen: int
    at: datetime


@dataclass
class StubTrade:
    trade_no: str
    out_trade_no: str
    total_fen: int
    created_at: datetime
    status: str = "WAIT_BUYER_PAY"
    paid_at: datetime | None = None
    remark: str = ""  # the bill's 备注 column (we put the account number there)
    refunds: dict[str, StubRefund] = field(default_factory=dict)

    @property
    def refunded_fen(self) -> int:
        return sum(r.refund_fen for r in self.refunds.values())


class _Refusal(Exception):
    def __init__(self, code: str, msg: str, sub_code: str, sub_msg: str) -> None:
        super().__init__(sub_msg)
        self.content = {"code": code, "msg": msg, "sub_code": sub_code, "sub_msg": sub_msg}


def _business_failed(sub_code: str, sub_msg: str) -> _Refusal:
    return _Refusal("40004", "Business Failed", sub_code, sub_msg)


def _invalid_arguments(sub_code: str, sub_msg: str) -> _Refusal:
    return _Refusal("40002", "Invalid Arguments", sub_code, sub_msg)


class _GbkNamedEntry(zipfile.ZipInfo):
    """Alipay's bill zips name their entries in GBK without the UTF-8 flag, as Windows tools do."""

    def _encodeFilenameFlags(self) -> tuple[bytes, int]:  # noqa: N802 (zipfile's name)
        return self.filename.encode("gbk"), self.flag_bits & ~0x800


class AlipayGatewayStub:
    def __init__(
        self,
        *,
        app_id: str,
        app_public_key_pem: str,
        alipay_private_key_pem: str | None = None,
        pid: str = "2088000000000001",
        bill_url_valid_s: float = 30.0,
        timestamp_skew_s: int = 600,
        fee_ppm: int = 6000,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.app_id = app_id
        self.app_public_key_pem = app_public_key_pem
        self.alipay_private_key_pem = alipay_private_key_pem or new_private_key_pem()
        self.pid = pid
        self.bill_url_valid_s = bill_url_valid_s
        self.timestamp_skew_s = timestamp_skew_s
        self.fee_ppm = fee_ppm
        self.now = now
        self.trades: dict[str, StubTrade] = {}
        self.bill_details: dict[date, bytes] = {}  # a day's 业务明细 CSV (GBK) given whole, instead of one made from the trades
        self.calls: list[str] = []  # the methods of the verified requests, in order
        self.requests: list[tuple[str, dict]] = []  # (method, biz_content) of each verified request
        self.refused: list[str] = []  # the sub_codes of refused requests, in order
        self.bill_downloads = 0
        self._failures: dict[str, list[_Refusal]] = {}
        self._tampers: list[Callable[[bytes], bytes]] = []
        self._expire_next_urls = 0
        self._bill_urls: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- running ----

    def start(self) -> "AlipayGatewayStub":
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="alipay-gateway-stub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "AlipayGatewayStub":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the stub first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def gateway_url(self) -> str:
        return self.base_url + "/gateway.do"

    @property
    def alipay_public_key_pem(self) -> str:
        return public_key_pem(self.alipay_private_key_pem)

    # ---- the world as Alipay sees it ----

    def create_trade(self, out_trade_no: str, amount_fen: int, *, remark: str = "", trade_no: str | None = None) -> StubTrade:
        with self._lock:
            trade = StubTrade(trade_no or "2026" + secrets.token_hex(12), out_trade_no, amount_fen, self.now(), remark=remark)
            self.trades[out_trade_no] = trade
            return trade

    def pay(self, out_trade_no: str, *, at: datetime | None = None) -> StubTrade:
        with self._lock:
            trade = self.trades[out_trade_no]
            trade.status, trade.paid_at = "TRADE_SUCCESS", at or self.now()
            return trade

    def close_unpaid(self, out_trade_no: str) -> None:
        with self._lock:
            self.trades[out_trade_no].status = "TRADE_CLOSED"

    def fail_next(self, method: str, sub_code: str, *, code: str = "40004", sub_msg: str = "injected") -> None:
        with self._lock:
            self._failures.setdefault(method, []).append(_Refusal(code, "Business Failed" if code == "40004" else "Service Currently Unavailable", sub_code, sub_msg))

    def tamper_next(self, change: Callable[[bytes], bytes]) -> None:
        with self._lock:
            self._tampers.append(change)

    def expire_next_bill_urls(self, count: int) -> None:
        with self._lock:
            self._expire_next_urls += count

    # ---- the gateway ----

    def answer(self, raw_query: str, raw_body: bytes) -> bytes:
        params = _parse_params(raw_query, raw_body)
        method = params.get("method", "")
        method_key = method.replace(".", "_") + "_response" if method else "error_response"
        charset = params.get("charset", "utf-8")
        try:
            codec_of(charset)
        except GasworksError:
            charset = "utf-8"
        with self._lock:
            try:
                biz = self._verified(params)
                self.calls.append(method)
                self.requests.append((method, biz))
                failures = self._failures.get(method)
                if failures:
                    raise failures.pop(0)
                handler = {
                    "alipay.trade.query": self._trade_query,
                    "alipay.trade.refund": self._trade_refund,
                    "alipay.trade.fastpay.refund.query": self._refund_query,
                    "alipay.data.dataservice.bill.downloadurl.query": self._bill_url,
                }.get(method)
                if handler is None:
                    method_key = "error_response"
                    raise _invalid_arguments("isv.invalid-method", f"不存在的方法名 {method[:60]}")
                content = {"code": "10000", "msg": "Success", **handler(biz)}
            except _Refusal as refusal:
                self.refused.append(refusal.content["sub_code"])
                content = refusal.content
            body = signed_response_body(method_key, content, self.alipay_private_key_pem, charset)
            if self._tampers:
                body = self._tampers.pop(0)(body)
            return body

    def _verified(self, params: dict[str, str]) -> dict:
        if params.get("sign_type") != "RSA2":
            raise _invalid_arguments("isv.invalid-signature-type", "签名类型不是 RSA2")
        if params.get("app_id") != self.app_id:
            raise _invalid_arguments("isv.invalid-app-id", "无效的AppID参数")
        try:
            content = request_signing_content(params, params.get("charset", "utf-8"))
        except GasworksError:
            raise _invalid_arguments("isv.invalid-charset", "字符集错误") from None
        if not verify_sha256_rsa(self.app_public_key_pem, content, params.get("sign", "")):
            raise _invalid_arguments("isv.invalid-signature", "验签出错")
        try:
            sent_at = datetime.strptime(params.get("timestamp", ""), "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING)
        except ValueError:
            raise _invalid_arguments("isv.invalid-timestamp", "非法的时间戳参数") from None
        if abs((self.now() - sent_at).total_seconds()) > self.timestamp_skew_s:
            raise _invalid_arguments("isv.invalid-timestamp", "非法的时间戳参数")
        try:
            biz = json.loads(params.get("biz_content", "{}"))
        except ValueError:
            raise _invalid_arguments("isv.invalid-arguments", "biz_content 不是 JSON") from None
        if not isinstance(biz, dict):
            raise _invalid_arguments("isv.invalid-arguments", "biz_content 不是 JSON 对象")
        return biz

    def _trade(self, biz: dict) -> StubTrade:
        trade = self.trades.get(str(biz.get("out_trade_no", "")))
        if trade is None:
            trade = next((t for t in self.trades.values() if t.trade_no == biz.get("trade_no")), None)
        if trade is None or (biz.get("trade_no") and trade.trade_no != biz.get("trade_no")):
            raise _business_failed("ACQ.TRADE_NOT_EXIST", "交易不存在")
        return trade

    def _trade_query(self, biz: dict) -> dict:
        trade = self._trade(biz)
        content = {
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "buyer_logon_id": "158****1562",
            "trade_status": trade.status,
            "total_amount": fen_to_yuan_text(trade.total_fen),
        }
        if trade.paid_at is not None:
            content |= {"buyer_pay_amount": fen_to_yuan_text(trade.total_fen), "receipt_amount": fen_to_yuan_text(trade.total_fen), "send_pay_date": _beijing(trade.paid_at)}
        return content

    def _trade_refund(self, biz: dict) -> dict:
        trade = self._trade(biz)
        try:
            refund_fen = yuan_text_to_fen(str(biz.get("refund_amount", "")))
        except InvalidInput:
            raise _invalid_arguments("isv.invalid-arguments", "refund_amount 格式错误") from None
        out_request_no = str(biz.get("out_request_no") or trade.out_trade_no)
        done = {"trade_no": trade.trade_no, "out_trade_no": trade.out_trade_no, "buyer_logon_id": "158****1562"}
        earlier = trade.refunds.get(out_request_no)
        if earlier is not None:  # the same refund asked again: refunded once, no money moves now
            if earlier.refund_fen != refund_fen:
                raise _business_failed("ACQ.DISCORDANT_REPEAT_REQUEST", "请求信息不一致")
            return done | {"fund_change": "N", "refund_fee": fen_to_yuan_text(trade.refunded_fen), "gmt_refund_pay": _beijing(earlier.at)}
        if trade.status == "WAIT_BUYER_PAY" or trade.paid_at is None:
            raise _business_failed("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        if trade.status == "TRADE_FINISHED":
            raise _business_failed("ACQ.TRADE_HAS_FINISHED", "交易已完结")
        if trade.status == "TRADE_CLOSED":
            raise _business_failed("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
        if refund_fen <= 0 or trade.refunded_fen + refund_fen > trade.total_fen:
            raise _business_failed("ACQ.REASON_TRADE_REFUND_FEE_ERR", "退款金额无效")
        refund = StubRefund(out_request_no, refund_fen, self.now())
        trade.refunds[out_request_no] = refund
        if trade.refunded_fen == trade.total_fen:
            trade.status = "TRADE_CLOSED"
        return done | {"fund_change": "Y", "refund_fee": fen_to_yuan_text(trade.refunded_fen), "gmt_refund_pay": _beijing(refund.at), "send_back_fee": fen_to_yuan_text(refund_fen)}

    def _refund_query(self, biz: dict) -> dict:
        trade = self._trade(biz)
        out_request_no = str(biz.get("out_request_no", ""))
        refund = trade.refunds.get(out_request_no)
        if refund is None:  # Alipay: success, and no refund data: not received, or not refunded
            return {}
        content = {
            "trade_no": trade.trade_no,
            "out_trade_no": trade.out_trade_no,
            "out_request_no": out_request_no,
            "total_amount": fen_to_yuan_text(trade.total_fen),
            "refund_amount": fen_to_yuan_text(refund.refund_fen),
            "refund_status": "REFUND_SUCCESS",
        }
        if "gmt_refund_pay" in (biz.get("query_options") or []):
            content["gmt_refund_pay"] = _beijing(refund.at)
        return content

    def _bill_url(self, biz: dict) -> dict:
        if biz.get("bill_type") not in ("trade", "signcustomer"):
            raise _invalid_arguments("isv.invalid-arguments", "bill_type 不合法")
        try:
            day = date.fromisoformat(str(biz.get("bill_date", "")))
        except ValueError:
            raise _invalid_arguments("isv.invalid-arguments", "bill_date 格式应为 yyyy-MM-dd") from None
        if day >= self.now().astimezone(BEIJING).date():
            raise _business_failed("isp.bill_not_exist", "账单不存在")
        token = secrets.token_urlsafe(16)
        valid_s = -1.0 if self._expire_next_urls > 0 else self.bill_url_valid_s
        self._expire_next_urls = max(0, self._expire_next_urls - 1)
        self._bill_urls[token] = (self.bill_zip(day), time.monotonic() + valid_s)
        compact = day.strftime("%Y%m%d")
        query = urllib.parse.urlencode({"bizType": "trade", "userId": self.pid, "fileType": "csv.zip", "bizDates": compact, "downloadFileName": f"{compact}.csv.zip", "token": token})
        return {"bill_download_url": f"{self.base_url}/downloadBillFile.resource?{query}"}

    def download(self, raw_query: str) -> bytes | None:
        token = urllib.parse.parse_qs(raw_query).get("token", [""])[0]
        with self._lock:
            found = self._bill_urls.get(token)
            if found is None or time.monotonic() > found[1]:
                return None
            self.bill_downloads += 1
            return found[0]

    # ---- the bill, as Alipay lays it out ----

    def bill_zip(self, day: date) -> bytes:
        compact = day.strftime("%Y%m%d")
        detail, summary = self.bill_detail_csv(day), self._bill_summary_csv(day)
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as bill:
            for name, content in ((f"{self.pid}_{compact}_业务明细.csv", detail), (f"{self.pid}_{compact}_业务明细(汇总).csv", summary)):
                entry = _GbkNamedEntry(name, date_time=(day.year, day.month, day.day, 9, 0, 0))
                entry.compress_type = zipfile.ZIP_DEFLATED
                bill.writestr(entry, content)
        return out.getvalue()

    def _lines(self, day: date) -> list[tuple[StubTrade, StubRefund | None]]:
        def on_day(at: datetime | None) -> bool:
            return at is not None and at.astimezone(BEIJING).date() == day

        lines: list[tuple[StubTrade, StubRefund | None]] = []
        for trade in self.trades.values():
            if on_day(trade.paid_at):
                lines.append((trade, None))
            lines.extend((trade, r) for r in trade.refunds.values() if on_day(r.at))
        return lines

    def _fee_fen(self, amount_fen: int) -> int:
        return (amount_fen * self.fee_ppm + 500_000) // 1_000_000

    def bill_detail_csv(self, day: date) -> bytes:
        if day in self.bill_details:  # the day's bill as the simulated world wrote it (its statement faults included)
            return self.bill_details[day]
        out = io.StringIO()
        out.write("#支付宝业务明细查询\r\n")
        out.write(f"#账号：[{self.pid}]\r\n")
        out.write(f"#起始日期：[{day:%Y年%m月%d日} 00:00:00]   终止日期：[{day + timedelta(days=1):%Y年%m月%d日} 00:00:00]\r\n")
        out.write("#-----------------------------------------业务明细列表----------------------------------------\r\n")
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(BILL_COLUMNS)
        paid_count, paid_fen, refund_count, refund_fen = 0, 0, 0, 0
        for trade, refund in self._lines(day):
            yuan = fen_to_yuan_text(trade.total_fen)
            if refund is None:
                kind, received, at, batch, fee = "交易", yuan, trade.paid_at, "", "-" + fen_to_yuan_text(self._fee_fen(trade.total_fen))
                paid_count, paid_fen = paid_count + 1, paid_fen + trade.total_fen
            else:
                kind, received, at, batch, fee = "退款", "-" + fen_to_yuan_text(refund.refund_fen), refund.at, refund.out_request_no, fen_to_yuan_text(self._fee_fen(refund.refund_fen))
                refund_count, refund_fen = refund_count + 1, refund_fen + refund.refund_fen
            row = (
                trade.trade_no, trade.out_trade_no, kind, "燃气费充值", _beijing(trade.created_at), _beijing(at), "", "", "", "", "158****1562",
                yuan, received, "0.00", "0.00", "0.00", "0.00", "0.00", "", "0.00", "0.00", batch, fee, "0.00", trade.remark,
            )  # fmt: skip
            writer.writerow([cell + "\t" if i in (0, 1) else cell for i, cell in enumerate(row)])  # Alipay tabs its ids against spreadsheets
        out.write("#-----------------------------------------业务明细列表结束------------------------------------\r\n")
        out.write(f"#交易合计：{paid_count}笔，商家实收共{fen_to_yuan_text(paid_fen)}元，商家优惠共0.00元\r\n")
        out.write(f"#退款合计：{refund_count}笔，商家实收退款共-{fen_to_yuan_text(refund_fen)}元，商家优惠退款共0.00元\r\n")
        out.write(f"#导出时间：[{self.now().astimezone(BEIJING):%Y年%m月%d日 %H:%M:%S}]\r\n")
        return out.getvalue().encode("gbk")

    def _bill_summary_csv(self, day: date) -> bytes:
        lines = self._lines(day)
        paid = [t.total_fen for t, r in lines if r is None]
        refunded = [r.refund_fen for _, r in lines if r is not None]
        out = io.StringIO()
        out.write("#支付宝业务汇总查询\r\n")
        out.write(f"#账号：[{self.pid}]\r\n")
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(("门店编号", "门店名称", "交易订单总笔数", "退款订单总笔数", "订单金额（元）", "商家实收（元）", "服务费（元）", "实收净额（元）"))
        net = sum(paid) - sum(refunded)
        fees = sum(self._fee_fen(f) for f in paid) - sum(self._fee_fen(f) for f in refunded)
        writer.writerow(("合计", "", len(paid), len(refunded), fen_to_yuan_text(sum(paid)), fen_to_yuan_text(net), fen_to_yuan_text(-fees), fen_to_yuan_text(net - fees)))
        out.write(f"#导出时间：[{self.now().astimezone(BEIJING):%Y年%m月%d日 %H:%M:%S}]\r\n")
        return out.getvalue().encode("gbk")


def _beijing(at: datetime | None) -> str:
    return at.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S") if at else ""


def _parse_params(raw_query: str, raw_body: bytes) -> dict[str, str]:
    """The common parameters from the query string and biz_content from the form body (the SDK's
    split), or everything from either; percent-decoded in the declared charset."""
    try:
        body = raw_body.decode("ascii")
    except UnicodeDecodeError:
        body = ""
    joined = "&".join(part for part in (raw_query, body) if part)
    declared = urllib.parse.parse_qs(joined, encoding="latin-1").get("charset", ["utf-8"])[0]
    try:
        codec = codec_of(declared)
    except GasworksError:
        codec = "utf-8"
    return dict(urllib.parse.parse_qsl(joined, keep_blank_values=True, encoding=codec, errors="replace", max_num_fields=100))


def _handler_for(stub: AlipayGatewayStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's name)
            pass  # the tests read the stub's state, not its log

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _serve(self) -> None:
            path, _, query = self.path.partition("?")
            length = int(self.headers.get("Content-Length") or 0)
            if length > REQUEST_BYTES_MAX:
                self._reply(413, b"request too large", "text/plain")
                return
            body = self.rfile.read(length) if length else b""
            if path == "/gateway.do":
                self._reply(200, stub.answer(query, body), "text/html;charset=utf-8")  # Alipay's own content type for JSON
            elif path == "/downloadBillFile.resource":
                archive = stub.download(query)
                if archive is None:
                    self._reply(200, "<html><body>链接已失效，请重新获取下载地址</body></html>".encode(), "text/html;charset=utf-8")
                else:
                    self._reply(200, archive, "application/oct-stream")
            else:
                self._reply(404, b"not found", "text/plain")

        do_GET = _serve  # noqa: N815 (http.server's name)
        do_POST = _serve  # noqa: N815

    return Handler
