"""The WeChat Pay v3 gateway against a local stub speaking the documented protocol, with real
signatures both ways, cross-checked with the `wechatpayv3` SDK (github.com/minibear2021/wechatpayv3)."""

import hashlib
import json
import time
from datetime import UTC, date, datetime

import pytest
from wechatpayv3 import WeChatPay, WeChatPayType
from wechatpayv3.utils import build_authorization, load_private_key

from gasworks.adapters.channels.gateways.wechatpay_v3 import WechatPayV3Gateway, authorization
from gasworks.adapters.channels.rsa import public_key_pem, verify_sha256_rsa
from gasworks.adapters.channels.wechatpay_v3 import signed_message
from gasworks.services.channel_gateway import GatewayError, OrderStatus, RefundRequest, RefundState
from gasworks.sim.stubs.wechatpay import WechatPayStub
from tests.support import APIV3_KEY, WECHAT_MCHID, rsa_private_key, served_in_thread

MERCHANT_SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
BILL = "交易时间,微信订单号\n`2026-11-22 10:00:00,`4200000001\n".encode()


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def stub():
    merchant_key = rsa_private_key("merchant")
    return WechatPayStub(mchid=WECHAT_MCHID, merchant_serial=MERCHANT_SERIAL, merchant_public_key_pem=public_key_pem(merchant_key))


@pytest.fixture
def served(stub):
    with served_in_thread(stub.app()) as base_url:
        yield stub, base_url


def gateway(stub: WechatPayStub, base_url: str, **overrides) -> WechatPayV3Gateway:
    options = {
        "channel_id": "wechat", "base_url": base_url, "mchid": WECHAT_MCHID, "merchant_serial": MERCHANT_SERIAL,
        "merchant_private_key_pem": rsa_private_key("merchant"), "platform_keys": {stub.platform_serial: stub.platform_public_key_pem}, "now": now,
    } | overrides  # fmt: skip
    return WechatPayV3Gateway(**options)


# ---- signing, cross-checked with the SDK ----------------------------------------------------------


def test_our_authorization_header_is_the_one_the_sdk_builds():
    """PKCS#1 v1.5 signatures are deterministic: the same request signed by both is the same header."""
    key = rsa_private_key("merchant")
    body = json.dumps({"out_refund_no": "GWR1", "amount": {"refund": 100, "total": 100, "currency": "CNY"}})
    for _ in range(3):  # the SDK takes the time itself: retry if the second ticked between the two
        timestamp = str(int(time.time()))
        theirs = build_authorization("/v3/refund/domestic/refunds", "POST", WECHAT_MCHID, MERCHANT_SERIAL, load_private_key(key), data=body, nonce_str="NONCE123")
        ours = authorization(mchid=WECHAT_MCHID, serial_no=MERCHANT_SERIAL, private_key_pem=key, method="POST", url="/v3/refund/domestic/refunds", body=body.encode(), timestamp=timestamp, nonce="NONCE123")
        if f'timestamp="{timestamp}"' in theirs:
            break
    assert ours == theirs


def test_the_sdk_talks_to_the_stub_both_ways_so_the_stub_speaks_wechat_pay(served):
    """The SDK's signed query is accepted by the stub (the verifier our tests rely on), and the
    SDK accepts the stub's signed answer (it raises on a signature it cannot verify)."""
    stub, base_url = served
    stub.pay("GW20261122AAAA", 5000, transaction_id="4200000001")
    sdk = WeChatPay(
        wechatpay_type=WeChatPayType.JSAPI, mchid=WECHAT_MCHID, private_key=rsa_private_key("merchant"), cert_serial_no=MERCHANT_SERIAL,
        appid="wxgasworks0000001", apiv3_key=APIV3_KEY, public_key=stub.platform_public_key_pem, public_key_id=stub.platform_serial,
    )  # fmt: skip
    sdk._core._gate_way = base_url
    code, message = sdk.query(out_trade_no="GW20261122AAAA")
    assert code == 200 and json.loads(message)["trade_state"] == "SUCCESS"
    assert stub.refused == []
    stub.tamper = True
    with pytest.raises(Exception, match="failed to verify the signature"):
        sdk.query(out_trade_no="GW20261122AAAA")


def test_we_verify_an_answer_the_sdk_signs():
    """The SDK's `sign([timestamp, nonce, body])` with the platform's key is what an answer carries."""
    platform_key = rsa_private_key("platform")
    sdk = WeChatPay(
        wechatpay_type=WeChatPayType.JSAPI, mchid=WECHAT_MCHID, private_key=platform_key, cert_serial_no="X", appid="wx", apiv3_key=APIV3_KEY,
        public_key=public_key_pem(platform_key), public_key_id="PUB_KEY_ID_1",
    )  # fmt: skip
    body = '{"trade_state":"SUCCESS","amount":{"total":5000}}'
    signature = sdk.sign(["1700000000", "n0nce", body])
    assert verify_sha256_rsa(public_key_pem(platform_key), signed_message("1700000000", "n0nce", body.encode()), signature)
    assert not verify_sha256_rsa(public_key_pem(platform_key), signed_message("1700000000", "n0nce", body.replace("5000", "9000").encode()), signature)


# ---- the calls --------------------------------------------------------------------------------------


def test_query_tells_paid_open_closed_and_unknown_orders_apart(served):
    stub, base_url = served
    stub.pay("GWPAID", 5000, transaction_id="4200000009")
    stub.set_state("GWOPEN", "NOTPAY")
    stub.set_state("GWCLOSED", "CLOSED")
    gw = gateway(stub, base_url)
    paid = gw.query_order("GWPAID")
    assert paid.status == OrderStatus.PAID and paid.notice is not None
    assert (paid.notice.channel_txn_id, paid.notice.amount_fen, paid.notice.out_trade_no) == ("4200000009", 5000, "GWPAID")
    assert gw.query_order("GWOPEN").status == OrderStatus.NOT_PAID
    assert gw.query_order("GWCLOSED").status == OrderStatus.CLOSED
    assert gw.query_order("GWNEVER").status == OrderStatus.NOT_FOUND
    assert stub.refused == []


def test_a_tampered_answer_is_refused_not_believed(served):
    stub, base_url = served
    stub.set_state("GWOPEN", "NOTPAY")
    stub.tamper = True  # NOTPAY becomes SUCCESS after signing
    with pytest.raises(GatewayError) as refused:
        gateway(stub, base_url).query_order("GWOPEN")
    assert refused.value.code == "ANSWER_UNVERIFIED" and refused.value.retryable


def test_an_answer_signed_by_a_key_we_do_not_hold_is_refused(served):
    stub, base_url = served
    stub.set_state("GWOPEN", "NOTPAY")
    with pytest.raises(GatewayError) as refused:
        gateway(stub, base_url, platform_keys={stub.platform_serial: public_key_pem(rsa_private_key("someone else"))}).query_order("GWOPEN")
    assert refused.value.code == "ANSWER_UNVERIFIED"


def test_a_request_signed_with_the_wrong_merchant_key_is_refused_by_the_channel(served):
    stub, base_url = served
    with pytest.raises(GatewayError) as refused:
        gateway(stub, base_url, merchant_private_key_pem=rsa_private_key("not the merchant")).query_order("GWOPEN")
    assert refused.value.code == "SIGN_ERROR" and not refused.value.retryable
    assert stub.refused == ["signature does not verify"]


def test_a_channel_down_is_a_retryable_error(served):
    stub, base_url = served
    stub.fail_next = 1
    with pytest.raises(GatewayError) as refused:
        gateway(stub, base_url).query_order("GWOPEN")
    assert refused.value.code == "CHANNEL_ERROR" and refused.value.retryable


def test_a_refund_asked_twice_with_our_number_is_one_refund(served):
    stub, base_url = served
    stub.pay("GWPAID", 5000, transaction_id="4200000009")
    gw = gateway(stub, base_url)
    request = RefundRequest("GWR0001", "GWPAID", "4200000009", 5000, 5000, "held: unknown account")
    first, second = gw.refund(request), gw.refund(request)
    assert first.state == second.state == RefundState.PROCESSING
    assert first.channel_refund_id == second.channel_refund_id and len(stub.refunds) == 1 and stub.refund_calls == ["GWR0001", "GWR0001"]
    stub.settle_refund("GWR0001", "SUCCESS")
    done = gw.refund_status("GWR0001")
    assert (done.state, done.refund_fen) == (RefundState.SUCCESS, 5000) and done.succeeded_at is not None
    with pytest.raises(GatewayError) as unknown:
        gw.refund_status("GWR9999")
    assert unknown.value.code == "REFUND_NOT_FOUND"


def test_the_trade_bill_is_believed_only_when_its_sha1_matches(served):
    stub, base_url = served
    stub.bills["2026-11-22"] = BILL
    gw = gateway(stub, base_url)
    fetched = gw.fetch_statement(date(2026, 11, 22))
    assert fetched.content == BILL and hashlib.sha1(BILL).hexdigest() in fetched.checked
    stub.wrong_bill = True
    with pytest.raises(GatewayError) as mismatch:
        gw.fetch_statement(date(2026, 11, 22))
    assert mismatch.value.code == "STATEMENT_HASH_MISMATCH"
    with pytest.raises(GatewayError) as not_ready:
        gw.fetch_statement(date(2026, 11, 23))
    assert not_ready.value.code == "STATEMENT_NOT_READY" and not_ready.value.retryable
    assert stub.refused == []  # the download, too, was a signed request


def test_an_answer_larger_than_the_bound_is_not_read(served):
    stub, base_url = served
    stub.pay("GWBIG", 5000)
    stub.orders["GWBIG"]["attach"] = "x" * 100_000
    with pytest.raises(GatewayError) as refused:
        gateway(stub, base_url).query_order("GWBIG")
    assert refused.value.code == "ANSWER_TOO_LARGE"


def test_a_download_url_on_another_host_is_not_fetched(served):
    stub, base_url = served
    stub.bills["2026-11-22"] = BILL
    stub.download_base = "http://127.0.0.2:9"
    with pytest.raises(GatewayError) as refused:
        gateway(stub, base_url).fetch_statement(date(2026, 11, 22))
    assert refused.value.code == "MALFORMED_ANSWER" and "download_url" in refused.value.message
