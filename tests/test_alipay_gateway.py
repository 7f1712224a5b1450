"""The Alipay gateway against a local Alipay gateway (a real HTTP server signing and verifying as
Alipay does), cross-checked with Alipay's official SDK (alipay-sdk-python) both ways."""

import io
import json
import socket
import time
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from alipay.aop.api.AlipayClientConfig import AlipayClientConfig
from alipay.aop.api.DefaultAlipayClient import DefaultAlipayClient
from alipay.aop.api.domain.AlipayTradeQueryModel import AlipayTradeQueryModel
from alipay.aop.api.exception.Exception import ResponseException
from alipay.aop.api.request.AlipayTradeQueryRequest import AlipayTradeQueryRequest
from alipay.aop.api.response.AlipayTradeQueryResponse import AlipayTradeQueryResponse
from alipay.aop.api.util.SignatureUtils import get_sign_content, sign_with_rsa2, verify_with_rsa
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from gasworks.adapters.channels.base import BEIJING
from gasworks.adapters.channels.gateways.alipay import (
    AlipayGateway,
    AlipayGatewayConfig,
    detail_csv_from_zip,
    load_app_private_key,
    request_signing_content,
    signed_request_params,
    verify_response,
)
from gasworks.adapters.channels.rsa import new_private_key_pem, public_key_pem
from gasworks.adapters.statements.readers import read_statement
from gasworks.domain.channels import Channel, ChannelKey, ChannelKind, KeyPurpose, KeyStatus
from gasworks.domain.errors import InvalidInput
from gasworks.domain.money import PAYMENT_FEN_ABSOLUTE_MAX, fen_to_yuan_text, yuan_text_to_fen
from gasworks.domain.statements import LineStatus
from gasworks.services.channel_gateway import GatewayError, OrderStatus, RefundRequest, RefundState
from gasworks.sim.stubs.alipay_gateway import AlipayGatewayStub, StubRefund

APP_ID = "2021000000000001"
APP_KEY = new_private_key_pem()  # our application's private key (应用私钥)
YESTERDAY = (datetime.now(UTC) - timedelta(days=1)).astimezone(BEIJING).replace(hour=10, minute=30, second=0, microsecond=0)


def channel_trusting(*alipay_public_keys: str) -> Channel:
    keys = tuple(ChannelKey("alipay", f"alipay-{i}", KeyPurpose.VERIFY_PUBLIC_KEY, pem, KeyStatus.ACTIVE) for i, pem in enumerate(alipay_public_keys))
    return Channel("alipay", ChannelKind.ALIPAY, "支付宝", APP_ID, keys)


@pytest.fixture
def stub() -> Iterator[AlipayGatewayStub]:
    with AlipayGatewayStub(app_id=APP_ID, app_public_key_pem=public_key_pem(APP_KEY)) as running:
        yield running


def gateway_for(stub: AlipayGatewayStub, **config: object) -> AlipayGateway:
    return AlipayGateway(channel_trusting(stub.alipay_public_key_pem), AlipayGatewayConfig(app_private_key_pem=APP_KEY, gateway_url=stub.gateway_url, **config))


def paid_trade(stub: AlipayGatewayStub, out_trade_no: str = "GW2026112400001", amount_fen: int = 5000) -> str:
    stub.create_trade(out_trade_no, amount_fen, remark="100001")
    return stub.pay(out_trade_no, at=YESTERDAY).trade_no


def sdk_private_key(pem: str) -> str:
    """The SDK signs with the `rsa` package, which reads PKCS#1 ("RSA PRIVATE KEY")."""
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()).decode()


def sdk_parse(body: bytes, alipay_public_key_pem: str, charset: str = "utf-8") -> str:
    """The SDK's own response verification (DefaultAlipayClient.__parse_response), on raw bytes."""
    config = AlipayClientConfig()
    config.app_id, config.alipay_public_key, config.charset = APP_ID, alipay_public_key_pem, charset
    return DefaultAlipayClient(config)._DefaultAlipayClient__parse_response(body)


# ---- signing both ways, cross-checked with the SDK ---------------------------------------------


@pytest.mark.parametrize("charset", ["utf-8", "gbk"])
def test_our_signed_request_verifies_with_the_sdk(charset):
    biz = {"out_trade_no": "GW1", "out_request_no": "RF1", "refund_amount": "0.01", "refund_reason": "燃气费多缴退款"}
    params = signed_request_params(method="alipay.trade.refund", biz=biz, app_id=APP_ID, private_key_pem=APP_KEY, charset=charset, at=datetime.now(UTC))
    unsigned = {k: v for k, v in params.items() if k != "sign"}
    assert request_signing_content(params, charset) == get_sign_content(unsigned).encode(charset)  # the SDK's sign string, byte for byte
    assert verify_with_rsa(public_key_pem(APP_KEY), get_sign_content(unsigned).encode(charset), params["sign"])
    assert sign_with_rsa2(sdk_private_key(APP_KEY), get_sign_content(unsigned), charset) == params["sign"]  # PKCS#1 v1.5 is deterministic
    assert json.loads(params["biz_content"]) == biz


@pytest.mark.parametrize("charset", ["utf-8", "gbk"])
def test_our_requests_over_the_wire_are_verified_by_the_stub(stub, charset):
    paid_trade(stub)
    gateway = gateway_for(stub, charset=charset)
    answer = gateway.refund(RefundRequest("RF20261124001", "GW2026112400001", "", 100, 5000, "燃气费多缴退款（测试）"))
    assert answer.state == RefundState.SUCCESS
    assert stub.requests[-1] == ("alipay.trade.refund", {"out_trade_no": "GW2026112400001", "out_request_no": "RF20261124001", "refund_amount": "1.00", "refund_reason": "燃气费多缴退款（测试）"})


def test_a_request_signed_by_the_sdk_is_accepted_by_the_stub_and_its_answer_by_the_sdk(stub, monkeypatch):
    trade_no = paid_trade(stub)
    monkeypatch.setenv("TZ", "Asia/Shanghai")  # the SDK stamps local time; Alipay reads Beijing time
    time.tzset()
    try:
        config = AlipayClientConfig()
        config.server_url, config.app_id, config.app_private_key, config.alipay_public_key = stub.gateway_url, APP_ID, sdk_private_key(APP_KEY), stub.alipay_public_key_pem
        model = AlipayTradeQueryModel()
        model.out_trade_no = "GW2026112400001"
        # The SDK's execute() ignores the port of server_url; page_execute builds the same signed request
        signed_url = DefaultAlipayClient(config).page_execute(AlipayTradeQueryRequest(biz_model=model), http_method="GET")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    body = httpx.get(signed_url).content
    assert stub.calls == ["alipay.trade.query"] and stub.refused == []  # the stub verified the SDK's signature
    response = AlipayTradeQueryResponse()
    response.parse_response_content(sdk_parse(body, stub.alipay_public_key_pem))  # the SDK verified the stub's
    assert (response.code, response.trade_status, response.trade_no, response.total_amount) == ("10000", "TRADE_SUCCESS", trade_no, "50.00")


def test_the_stubs_answers_pass_the_sdks_verification_and_a_tampered_one_fails_both(stub):
    paid_trade(stub)
    query = {"method": "alipay.trade.query", "biz": {"out_trade_no": "GW2026112400001"}, "app_id": APP_ID, "private_key_pem": APP_KEY, "charset": "utf-8"}
    params = signed_request_params(**query, at=datetime.now(UTC))
    body = httpx.post(stub.gateway_url, data=params).content
    assert json.loads(sdk_parse(body, stub.alipay_public_key_pem))["total_amount"] == "50.00"
    tampered = body.replace(b'"total_amount":"50.00"', b'"total_amount":"5000.00"')
    assert tampered != body
    with pytest.raises(ResponseException):
        sdk_parse(tampered, stub.alipay_public_key_pem)
    with pytest.raises(GatewayError) as refused:
        verify_response(tampered, "utf-8", [stub.alipay_public_key_pem], "alipay_trade_query_response")
    assert refused.value.code == "RESPONSE_SIGNATURE_INVALID"


def test_an_answer_signed_with_the_sdk_is_accepted_over_its_exact_text():
    alipay_key = new_private_key_pem()
    # Spaces, key order and escapes as the sender wrote them: the signature covers that text, not a re-serialisation
    content = '{ "code" : "10000", "msg":"Success", "trade_status":"TRADE_SUCCESS", "subject":"燃气\\"费\\"", "total_amount":"0.01", "out_trade_no":"GW1"}'
    sign = sign_with_rsa2(sdk_private_key(alipay_key), content, "utf-8")
    body = f'{{"alipay_trade_query_response":{content},\n "sign":"{sign}"}}'.encode()
    answer = verify_response(body, "utf-8", [public_key_pem(new_private_key_pem()), public_key_pem(alipay_key)], "alipay_trade_query_response")  # the second key: a rollover
    assert answer.content["subject"] == '燃气"费"' and answer.content["total_amount"] == "0.01"
    with pytest.raises(GatewayError) as other_key:
        verify_response(body, "utf-8", [public_key_pem(new_private_key_pem())], "alipay_trade_query_response")
    assert other_key.value.code == "RESPONSE_SIGNATURE_INVALID"
    with pytest.raises(GatewayError) as unsigned:
        verify_response(f'{{"alipay_trade_query_response":{content}}}'.encode(), "utf-8", [public_key_pem(alipay_key)], "alipay_trade_query_response")
    assert unsigned.value.code == "RESPONSE_UNSIGNED"
    with pytest.raises(GatewayError) as doubled:  # a second, unsigned copy of the object must not be what we read
        verify_response(f'{{"alipay_trade_query_response":{content},"alipay_trade_query_response":{{}},"sign":"{sign}"}}'.encode(), "utf-8", [public_key_pem(alipay_key)], "alipay_trade_query_response")
    assert doubled.value.code == "RESPONSE_MALFORMED"


def test_a_tampered_answer_over_the_wire_is_a_gateway_error_not_a_payment(stub):
    paid_trade(stub)
    stub.tamper_next(lambda body: body.replace(b'"total_amount":"50.00"', b'"total_amount":"5000.00"'))
    with pytest.raises(GatewayError) as refused:
        gateway_for(stub).query_order("GW2026112400001")
    assert refused.value.code == "RESPONSE_SIGNATURE_INVALID" and refused.value.retryable
    assert gateway_for(stub).query_order("GW2026112400001").notice.amount_fen == 5000  # the honest answer, asked again


def test_our_request_signed_with_a_key_alipay_does_not_know_is_refused(stub):
    stranger = AlipayGateway(channel_trusting(stub.alipay_public_key_pem), AlipayGatewayConfig(app_private_key_pem=new_private_key_pem(), gateway_url=stub.gateway_url))
    with pytest.raises(GatewayError) as refused:
        stranger.query_order("GW2026112400001")
    assert (refused.value.code, refused.value.retryable) == ("isv.invalid-signature", False)
    assert stub.calls == []


# ---- the order query ----------------------------------------------------------------------------


def test_order_query_maps_each_trade_status(stub):
    gateway = gateway_for(stub)
    assert gateway.query_order("GW-NEVER").status == OrderStatus.NOT_FOUND
    stub.create_trade("GW-OPEN", 3000)
    assert gateway.query_order("GW-OPEN").status == OrderStatus.NOT_PAID
    stub.close_unpaid("GW-OPEN")
    assert (gateway.query_order("GW-OPEN").status, gateway.query_order("GW-OPEN").notice) == (OrderStatus.CLOSED, None)
    trade_no = paid_trade(stub, "GW-PAID", 5000)
    paid = gateway.query_order("GW-PAID")
    assert paid.status == OrderStatus.PAID
    assert (paid.notice.channel_id, paid.notice.channel_txn_id, paid.notice.amount_fen, paid.notice.out_trade_no, paid.notice.method) == ("alipay", trade_no, 5000, "GW-PAID", "alipay")
    assert paid.notice.paid_at == YESTERDAY
    gateway.refund(RefundRequest("RF-ALL", "GW-PAID", trade_no, 5000, 5000, "全额退款"))
    refunded = gateway.query_order("GW-PAID")  # TRADE_CLOSED after a full refund: paid, then refunded
    assert refunded.status == OrderStatus.REFUNDED and refunded.notice.amount_fen == 5000


# ---- refunds ------------------------------------------------------------------------------------


def test_refund_twice_with_the_same_number_refunds_once(stub):
    trade_no = paid_trade(stub)
    gateway = gateway_for(stub)
    request = RefundRequest("RF20261124001", "GW2026112400001", trade_no, 3000, 5000, "多缴")
    first, second = gateway.refund(request), gateway.refund(request)
    assert first.state == second.state == RefundState.SUCCESS and first.refund_fen == second.refund_fen == 3000
    assert stub.trades["GW2026112400001"].refunded_fen == 3000 and len(stub.trades["GW2026112400001"].refunds) == 1
    assert stub.calls == ["alipay.trade.refund", "alipay.trade.refund", "alipay.trade.fastpay.refund.query"]  # the repeat said fund_change=N; the query confirmed
    with pytest.raises(GatewayError) as changed:
        gateway.refund(RefundRequest("RF20261124001", "GW2026112400001", trade_no, 2000, 5000, "多缴"))
    assert (changed.value.code, changed.value.retryable) == ("ACQ.DISCORDANT_REPEAT_REQUEST", False)
    with pytest.raises(GatewayError) as beyond:
        gateway.refund(RefundRequest("RF20261124002", "GW2026112400001", trade_no, 2001, 5000, "多缴"))
    assert beyond.value.code == "ACQ.REASON_TRADE_REFUND_FEE_ERR"
    assert stub.trades["GW2026112400001"].refunded_fen == 3000


def test_a_refund_retried_after_alipays_system_error_still_refunds_once(stub):
    trade_no = paid_trade(stub)
    gateway = gateway_for(stub)
    request = RefundRequest("RF20261124009", "GW2026112400001", trade_no, 5000, 5000, "销户")
    stub.fail_next("alipay.trade.refund", "ACQ.SYSTEM_ERROR", code="20000")
    with pytest.raises(GatewayError) as busy:
        gateway.refund(request)
    assert busy.value.retryable
    assert gateway.refund(request).state == RefundState.SUCCESS and gateway.refund(request).state == RefundState.SUCCESS
    assert stub.trades["GW2026112400001"].refunded_fen == 5000


def test_refund_status_reads_the_refund_query(stub):
    trade_no = paid_trade(stub)
    gateway = gateway_for(stub)
    gateway.refund(RefundRequest("RF20261124003", "GW2026112400001", trade_no, 1234, 5000, "多缴"))
    status = gateway.refund_status("RF20261124003")  # the trade remembered from the refund
    assert (status.state, status.refund_fen) == (RefundState.SUCCESS, 1234) and status.succeeded_at is not None
    elsewhere = gateway_for(stub)  # another process: the trade must be named
    assert elsewhere.refund_status("RF20261124003", out_trade_no="GW2026112400001").refund_fen == 1234
    with pytest.raises(GatewayError) as unknown_trade:
        elsewhere.refund_status("RF20261124003")
    assert (unknown_trade.value.code, unknown_trade.value.retryable) == ("REFUND_TRADE_UNKNOWN", False)
    assert gateway.refund_status("RF-NEVER-SENT", out_trade_no="GW2026112400001").state == RefundState.PROCESSING  # Alipay lists only refunds done


@pytest.mark.parametrize(("fen", "yuan"), [(1, "0.01"), (10, "0.10"), (100, "1.00"), (100000, "1000.00"), (123456789, "1234567.89")])
def test_refund_amounts_travel_as_exact_yuan_strings(stub, fen, yuan):
    trade_no = paid_trade(stub, amount_fen=200_000_000)
    gateway_for(stub).refund(RefundRequest(f"RF{fen}", "GW2026112400001", trade_no, fen, 200_000_000, "测试"))
    assert stub.requests[-1][1]["refund_amount"] == yuan
    assert stub.trades["GW2026112400001"].refunded_fen == fen


@given(st.integers(min_value=0, max_value=PAYMENT_FEN_ABSOLUTE_MAX))
def test_yuan_text_round_trips_every_amount(fen):
    assert yuan_text_to_fen(fen_to_yuan_text(fen)) == fen


def test_a_refund_that_is_not_one_never_leaves(stub):
    trade_no = paid_trade(stub)
    for fen, total in ((0, 5000), (5001, 5000), (-1, 5000)):
        with pytest.raises(InvalidInput):
            gateway_for(stub).refund(RefundRequest("RF-BAD", "GW2026112400001", trade_no, fen, total, "x"))
    with pytest.raises(InvalidInput):
        gateway_for(stub).refund(RefundRequest("R" * 65, "GW2026112400001", trade_no, 1, 5000, "x"))
    assert stub.calls == []


# ---- the day's bill -----------------------------------------------------------------------------


def test_the_downloaded_bill_is_read_by_the_statement_reader(stub):
    first = paid_trade(stub, "GW-A", 5000)
    second = paid_trade(stub, "GW-B", 1)
    stub.trades["GW-B"].refunds["RF-B"] = StubRefund("RF-B", 1, YESTERDAY + timedelta(hours=1))  # refunded the same day
    fetched = gateway_for(stub).fetch_statement(YESTERDAY.date())
    assert fetched.filename == f"{stub.pid}_{YESTERDAY:%Y%m%d}_业务明细.csv"  # the GBK entry name, read as Alipay wrote it
    assert (fetched.channel_id, fetched.day) == ("alipay", YESTERDAY.date())
    with read_statement("alipay-business-bill", fetched.content) as statement:
        lines = [line for batch in statement.batches(1000) for line in batch]
    assert sorted((line.channel_txn_id, line.out_trade_no, line.amount_fen, line.status) for line in lines) == sorted([(first, "GW-A", 5000, LineStatus.PAID), (second, "GW-B", 1, LineStatus.PAID), (second, "GW-B", 1, LineStatus.REFUNDED)])
    assert stub.requests[-1] == ("alipay.data.dataservice.bill.downloadurl.query", {"bill_type": "trade", "bill_date": YESTERDAY.date().isoformat()})


def test_an_expired_bill_url_is_asked_for_again(stub):
    paid_trade(stub)
    stub.expire_next_bill_urls(1)
    fetched = gateway_for(stub).fetch_statement(YESTERDAY.date())
    with read_statement("alipay-business-bill", fetched.content) as statement:
        assert statement.lines == 1
    assert stub.calls == ["alipay.data.dataservice.bill.downloadurl.query"] * 2 and stub.bill_downloads == 1


def test_bill_urls_that_keep_expiring_are_a_retryable_error(stub):
    paid_trade(stub)
    stub.expire_next_bill_urls(5)
    with pytest.raises(GatewayError) as expired:
        gateway_for(stub).fetch_statement(YESTERDAY.date())
    assert (expired.value.code, expired.value.retryable) == ("BILL_URL_EXPIRED", True)


def test_a_url_past_its_30_s_by_our_clock_is_not_even_fetched(stub):
    paid_trade(stub)
    ticks = iter(range(0, 10_000, 31))  # every look at the clock is 31 s after the last
    slow = AlipayGateway(channel_trusting(stub.alipay_public_key_pem), AlipayGatewayConfig(app_private_key_pem=APP_KEY, gateway_url=stub.gateway_url), monotonic_s=lambda: float(next(ticks)))
    with pytest.raises(GatewayError) as expired:
        slow.fetch_statement(YESTERDAY.date())
    assert expired.value.code == "BILL_URL_EXPIRED" and stub.bill_downloads == 0


def test_a_bill_not_yet_generated_is_asked_again_later(stub):
    with pytest.raises(GatewayError) as not_yet:
        gateway_for(stub).fetch_statement(datetime.now(BEIJING).date())
    assert (not_yet.value.code, not_yet.value.retryable) == ("isp.bill_not_exist", True)


# ---- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "sub_code", "retryable"),
    [("20000", "isp.unknow-error", True), ("40004", "ACQ.SYSTEM_ERROR", True), ("40004", "ACQ.TRADE_HAS_FINISHED", False), ("40004", "ACQ.TRADE_STATUS_ERROR", False), ("40006", "isv.insufficient-isv-permissions", False)],
)
def test_alipay_error_codes_say_whether_asking_again_can_help(stub, code, sub_code, retryable):
    stub.fail_next("alipay.trade.query", sub_code, code=code)
    with pytest.raises(GatewayError) as refused:
        gateway_for(stub).query_order("GW2026112400001")
    assert (refused.value.code, refused.value.retryable) == (sub_code, retryable)


def test_an_unreachable_gateway_is_retryable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    gateway = AlipayGateway(channel_trusting(public_key_pem(APP_KEY)), AlipayGatewayConfig(app_private_key_pem=APP_KEY, gateway_url=f"http://127.0.0.1:{port}/gateway.do", timeout_s=2))
    with pytest.raises(GatewayError) as down:
        gateway.query_order("GW1")
    assert (down.value.code, down.value.retryable) == ("UNREACHABLE", True)


def test_the_application_key_file_is_checked_when_loaded(tmp_path: Path):
    pkcs1 = tmp_path / "app_private_key.pem"
    pkcs1.write_text(sdk_private_key(APP_KEY))
    assert public_key_pem(load_app_private_key(pkcs1)) == public_key_pem(APP_KEY)
    for pem in (sdk_private_key(APP_KEY), APP_KEY):  # Alipay's key tool also gives the base64 alone, PKCS#1 or PKCS#8
        bare = tmp_path / "bare.txt"
        bare.write_text("".join(pem.strip().splitlines()[1:-1]))
        assert public_key_pem(load_app_private_key(bare)) == public_key_pem(APP_KEY)
    public = tmp_path / "alipay_public_key.pem"
    public.write_text(public_key_pem(APP_KEY))
    with pytest.raises(InvalidInput):
        load_app_private_key(public)
    with pytest.raises(InvalidInput):
        load_app_private_key(tmp_path / "missing.pem")


def test_a_gateway_built_from_the_configured_key_file_talks_to_alipay(stub, tmp_path: Path):
    key_file = tmp_path / "alipay_app_private_key.pem"
    key_file.write_text(sdk_private_key(APP_KEY))
    paid_trade(stub)
    gateway = AlipayGateway.from_key_file(channel_trusting(stub.alipay_public_key_pem), gateway_url=stub.gateway_url, app_private_key_file=str(key_file))
    assert gateway.query_order("GW2026112400001").status == OrderStatus.PAID
    with pytest.raises(InvalidInput):
        AlipayGateway.from_key_file(channel_trusting(stub.alipay_public_key_pem), gateway_url=stub.gateway_url, app_private_key_file="")


def test_a_refund_is_known_by_our_number_as_alipays_refund_notifications_name_it(stub):
    trade_no = paid_trade(stub)
    answer = gateway_for(stub).refund(RefundRequest("RF20261124077", "GW2026112400001", trade_no, 500, 5000, "多缴"))
    assert answer.channel_refund_id == "RF20261124077"  # out_biz_no in the refund notification


def test_a_bill_zip_without_its_detail_or_beyond_the_bound_is_refused(stub):
    paid_trade(stub)
    archive = stub.bill_zip(YESTERDAY.date())
    name, content = detail_csv_from_zip(archive, csv_bytes_max=1024 * 1024)
    assert name.endswith("_业务明细.csv") and content == stub.bill_detail_csv(YESTERDAY.date())
    with pytest.raises(GatewayError) as too_large:
        detail_csv_from_zip(archive, csv_bytes_max=100)
    assert too_large.value.code == "BILL_TOO_LARGE"
    summary_only = io.BytesIO()
    with zipfile.ZipFile(summary_only, "w") as bill:
        bill.writestr("2088000000000001_20261123_业务明细(汇总).csv", "合计".encode("gbk"))
    with pytest.raises(GatewayError) as no_detail:
        detail_csv_from_zip(summary_only.getvalue(), csv_bytes_max=1024)
    assert (no_detail.value.code, no_detail.value.retryable) == ("BILL_MALFORMED", False)
    with pytest.raises(GatewayError) as truncated:
        detail_csv_from_zip(archive[: len(archive) // 2], csv_bytes_max=1024 * 1024)
    assert truncated.value.code == "BILL_MALFORMED"
