"""The edge, attacked from outside over HTTP, on SQLite and PostgreSQL: every refusal answered with
its status and code, recorded with its channel or device, size and body hash, counted, and nothing
booked; a payment ceiling for every channel; Alipay verified over its declared charset."""

import hashlib
import json
import urllib.parse
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from gasworks.adapters.channels.alipay import signing_content
from gasworks.config import Settings
from gasworks.domain.money import PAYMENT_FEN_ABSOLUTE_MAX, PaymentCeiling
from gasworks.entrypoints.api.app import create_app
from gasworks.services.access import Role
from gasworks.services.checks import check_ledger
from tests.support import ACCOUNT_NO, ALIPAY_APP_ID, OTHER_ACCOUNT_NO, api_key, credited_fen, rsa_private_key, set_up

WALLET = "/v1/channels/wo-wallet/payments"
DEVICE = "/v1/devices/payments"
LIMIT_FEN = 1_000_000  # the default ceiling, ¥10,000


@pytest.fixture
def env(system):
    notifiers = set_up(system)
    client = TestClient(create_app(system))
    keys = {role: {"Authorization": f"Bearer {api_key(system, role)}"} for role in (Role.AUDITOR, Role.OPERATOR)}
    keys["device"] = {"Authorization": f"Bearer {api_key(system, Role.DEVICE, channel_id='kiosk')}"}
    return system, notifiers, client, keys


def refusals_counted(code: str) -> int:
    return int(sum(sample.value for metric in REGISTRY.collect() if metric.name == "gasworks_intake_refusals" for sample in metric.samples if sample.name == "gasworks_intake_refusals_total" and sample.labels["code"] == code))


def money_taken(system) -> dict:
    report = check_ledger(system.new_uow())
    return {"payments": report.payments_by_state, "totals": report.totals_by_kind_fen}


def refused(env, send, status: int, code: str, *, body: bytes | None, channel_id: str, json_error: bool = True):
    """Sends one attack; checks the answer, the rejection row, the counter and that nothing moved."""
    system, _, client, keys = env
    before_money, before_count = money_taken(system), refusals_counted(code)
    reply = send()
    assert reply.status_code == status, reply.text
    if json_error:
        assert reply.json()["error"]["code"] == code
    row = client.get("/v1/rejections", params={"limit": 1}, headers=keys[Role.AUDITOR]).json()[0]
    assert (row["code"], row["channel_id"]) == (code, channel_id)
    if body is not None:
        assert row["body_bytes"] == len(body) and row["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert refusals_counted(code) == before_count + 1
    assert money_taken(system) == before_money, "a refused request moved money"
    return reply, row


def wallet_request(system, n, *, txn_id="WO-1", account_no=ACCOUNT_NO, amount_fen=2000, at=None, nonce=None):
    body = json.dumps({"txn_id": txn_id, "account_no": account_no, "amount_fen": amount_fen}).encode()
    return n.wallet.signed_headers("POST", WALLET, body, at or system.clock.now(), nonce), body


# --- bodies and device endpoints ------------------------------------------------------------------


def test_a_body_too_large_is_refused_unread_and_recorded(env):
    system, n, client, _ = env
    body = b"x" * (system.settings.request_body_bytes_max + 1)
    headers = n.wallet.signed_headers("POST", WALLET, body, system.clock.now())
    _, row = refused(env, lambda: client.post(WALLET, content=body, headers=headers), 413, "BODY_TOO_LARGE", body=None, channel_id="wo-wallet")
    assert row["body_bytes"] == len(body) and row["body_sha256"] is None  # refused before it was read


def test_a_device_json_body_too_large_is_refused_too(env):
    system, _, client, keys = env
    body = json.dumps({"txn_id": "K-1", "account_no": ACCOUNT_NO, "amount_fen": 100, "method": "cash", "pad": "x" * 70_000}).encode()
    refused(env, lambda: client.post(DEVICE, content=body, headers=keys["device"] | {"Content-Type": "application/json"}), 413, "BODY_TOO_LARGE", body=None, channel_id="devices")  # before any key is looked at


DEVICE_PAYMENT = {"txn_id": "K-1", "account_no": OTHER_ACCOUNT_NO, "amount_fen": 100, "method": "cash"}


@pytest.mark.parametrize(
    ("method", "path", "payload", "key", "status", "code", "channel_id"),
    [
        ("post", DEVICE, DEVICE_PAYMENT, None, 401, "API_KEY_MISSING", "devices"),
        ("post", DEVICE, DEVICE_PAYMENT, "bogus", 401, "API_KEY_INVALID", "devices"),
        ("post", DEVICE, DEVICE_PAYMENT, Role.AUDITOR, 403, "ROLE_FORBIDDEN", "devices"),
        ("post", DEVICE, DEVICE_PAYMENT | {"account_no": "9999999999"}, "device", 404, "ACCOUNT_NOT_FOUND", "kiosk"),
        ("post", DEVICE, DEVICE_PAYMENT | {"amount_fen": "100"}, "device", 422, "VALIDATION_ERROR", "kiosk"),
        ("post", DEVICE, DEVICE_PAYMENT | {"amount_fen": 2**63}, "device", 422, "VALIDATION_ERROR", "kiosk"),
        ("post", DEVICE, DEVICE_PAYMENT | {"amount_fen": LIMIT_FEN + 1}, "device", 422, "AMOUNT_ABOVE_LIMIT", "kiosk"),
        ("post", DEVICE, DEVICE_PAYMENT | {"amount_fen": 2**63 - 1}, "device", 422, "AMOUNT_ABOVE_LIMIT", "kiosk"),
        ("get", f"/v1/devices/accounts/{ACCOUNT_NO}", None, None, 401, "API_KEY_MISSING", "devices"),
        ("get", "/v1/devices/accounts/9999999999", None, "device", 404, "ACCOUNT_NOT_FOUND", "kiosk"),
        ("post", "/v1/cards/reads", {"card_no": "C001"}, None, 401, "API_KEY_MISSING", "cards"),
        ("post", "/v1/cards/reads", {"card_no": "C001"}, Role.AUDITOR, 403, "ROLE_FORBIDDEN", "cards"),
        ("post", "/v1/cards/writes", {"card_no": "!"}, "device", 422, "VALIDATION_ERROR", "kiosk"),
        ("put", "/v1/kiosks/k-nope/status", {"status": "working"}, "device", 422, "KIOSK_NOT_FOUND", "kiosk"),
        ("post", "/v1/statements?channel_id=wechat&date=2026-11-22", None, None, 401, "API_KEY_MISSING", "statements"),
    ],
)
def test_every_refusal_on_device_card_and_statement_endpoints_is_recorded(env, method, path, payload, key, status, code, channel_id):
    _, _, client, keys = env
    body = json.dumps(payload).encode() if payload is not None else b"txn_id,account_no\n"
    headers = {"Content-Type": "application/json"} | ({"Authorization": "Bearer gw_nope"} if key == "bogus" else keys.get(key, {}))
    _, row = refused(env, lambda: client.request(method.upper(), path, content=body, headers=headers), status, code, body=body, channel_id=channel_id)
    if key in ("device", Role.AUDITOR):
        assert row["caller"].startswith(("device:", "auditor:"))  # who was refused, by key id
    secrets = [h["Authorization"].removeprefix("Bearer ") for h in keys.values()] + ["gw_nope"]
    assert not [secret for secret in secrets if secret in json.dumps(row, ensure_ascii=False)]  # keys are never recorded


# --- the payment ceiling ----------------------------------------------------------------------------


@pytest.mark.parametrize("amount_fen", [5_000_001, LIMIT_FEN + 1, 2**63 - 1, 2**63, 10**30])
def test_wallet_payments_above_the_ceiling_are_refused_and_book_nothing(env, amount_fen):
    system, n, client, _ = env
    headers, body = wallet_request(system, n, amount_fen=amount_fen)
    refused(env, lambda: client.post(WALLET, content=body, headers=headers), 422, "AMOUNT_ABOVE_LIMIT", body=body, channel_id="wo-wallet")
    assert credited_fen(system, ACCOUNT_NO) == 0


def test_a_wallet_payment_at_the_ceiling_is_booked(env):
    system, n, client, _ = env
    headers, body = wallet_request(system, n, amount_fen=LIMIT_FEN)
    assert client.post(WALLET, content=body, headers=headers).json()["status"] == "booked"
    assert credited_fen(system, ACCOUNT_NO) == LIMIT_FEN


def test_a_notified_payment_above_the_ceiling_is_held_not_refused(env):
    system, n, client, keys = env
    trade = client.post("/v1/orders", json={"channel_id": "wechat", "account_no": ACCOUNT_NO, "amount_fen": 5000}, headers=keys[Role.OPERATOR]).json()["out_trade_no"]
    headers, body = n.wechat.notification(out_trade_no=trade, transaction_id="4200009001", amount_fen=LIMIT_FEN + 1, at=system.clock.now())
    reply = client.post("/v1/channels/wechat/notify", content=body, headers=headers)
    assert reply.status_code == 200 and reply.json()["code"] == "SUCCESS"  # the money was taken: we keep it
    held = client.get("/v1/holds", headers=keys[Role.AUDITOR]).json()
    assert [(h["hold_reason"], h["amount_fen"], h["account_no"]) for h in held] == [("AMOUNT_ABOVE_LIMIT", LIMIT_FEN + 1, ACCOUNT_NO)]
    assert credited_fen(system, ACCOUNT_NO) == 0
    assert client.get(f"/v1/orders/{trade}").json()["state"] == "open"


def test_a_notified_amount_beyond_any_real_payment_is_refused_in_the_channels_format(env):
    system, n, client, _ = env
    headers, body = n.wechat.notification(out_trade_no="GW1", transaction_id="4200009002", amount_fen=2**63, at=system.clock.now())
    reply, _ = refused(env, lambda: client.post("/v1/channels/wechat/notify", content=body, headers=headers), 400, "AMOUNT_OUT_OF_RANGE",
                       body=body, channel_id="wechat", json_error=False)  # fmt: skip
    assert reply.json()["code"] == "FAIL"


def test_the_ceiling_is_overridden_per_channel_and_per_customer_class():
    ceiling = PaymentCeiling(1_000_000, by_channel={"counter": 5_000_000}, by_class={"commercial": 3_000_000})
    assert ceiling.fen_max_for("wechat", "residential") == 1_000_000
    assert ceiling.fen_max_for("counter", "residential") == 5_000_000  # an override may raise it
    assert ceiling.fen_max_for("wechat", "commercial") == 3_000_000
    assert ceiling.fen_max_for("counter", "commercial") == 3_000_000  # both apply: the smaller
    assert PaymentCeiling(10**20).fen_max_for("x", None) == PAYMENT_FEN_ABSOLUTE_MAX
    with pytest.raises(ValueError):
        Settings(payment_fen_max_by_channel={"counter": 0})


def test_a_channel_override_lets_a_kiosk_take_more(system):
    system.settings.payment_fen_max_by_channel = {"kiosk": 3_000_000}
    set_up(system)
    client = TestClient(create_app(system))
    device = {"Authorization": f"Bearer {api_key(system, Role.DEVICE, channel_id='kiosk')}"}
    reply = client.post(DEVICE, json=DEVICE_PAYMENT | {"amount_fen": 2_500_000}, headers=device)
    assert reply.status_code == 200 and reply.json()["status"] == "booked"
    assert client.post(DEVICE, json=DEVICE_PAYMENT | {"txn_id": "K-2", "amount_fen": 3_000_001}, headers=device).json()["error"]["code"] == "AMOUNT_ABOVE_LIMIT"


def test_a_customer_class_override_bounds_wallet_and_device_payments(system):
    system.settings.payment_fen_max_by_class = {"residential": 500_000}
    n = set_up(system)
    client = TestClient(create_app(system))
    device = {"Authorization": f"Bearer {api_key(system, Role.DEVICE, channel_id='kiosk')}"}
    assert client.post(DEVICE, json=DEVICE_PAYMENT | {"amount_fen": 500_001}, headers=device).json()["error"]["code"] == "AMOUNT_ABOVE_LIMIT"
    headers, body = wallet_request(system, n, amount_fen=500_001)
    assert client.post(WALLET, content=body, headers=headers).json()["error"]["code"] == "AMOUNT_ABOVE_LIMIT"
    headers, body = wallet_request(system, n, account_no="9999999999", amount_fen=900_000)  # no account, no class: the default ceiling
    assert client.post(WALLET, content=body, headers=headers).json()["hold_reason"] == "UNKNOWN_ACCOUNT"
    assert client.post(DEVICE, json=DEVICE_PAYMENT | {"amount_fen": 500_000}, headers=device).json()["status"] == "booked"


# --- wallet authentication --------------------------------------------------------------------------


@pytest.mark.parametrize("attack", ["bad_signature", "unknown_key", "stale", "replayed_nonce", "unsigned"])
def test_wallet_authentication_failures_are_401(env, attack):
    system, n, client, _ = env
    headers, body = wallet_request(system, n, txn_id="WO-A", nonce="nonce-aaaa-0001")
    code = {"bad_signature": "SIGNATURE_INVALID", "unknown_key": "UNKNOWN_KEY", "stale": "TIMESTAMP_OUT_OF_TOLERANCE",
            "replayed_nonce": "NONCE_REUSED", "unsigned": "SIGNATURE_MISSING"}[attack]  # fmt: skip
    if attack == "bad_signature":
        headers["X-Gasworks-Signature"] = headers["X-Gasworks-Signature"][::-1]
    elif attack == "unknown_key":
        headers["X-Gasworks-Key-Id"] = "wo-9"
    elif attack == "stale":
        headers, body = wallet_request(system, n, txn_id="WO-A", at=system.clock.now() - timedelta(minutes=6))
    elif attack == "replayed_nonce":
        first_headers, first_body = wallet_request(system, n, txn_id="WO-0", nonce="nonce-aaaa-0001")
        assert client.post(WALLET, content=first_body, headers=first_headers).status_code == 200
    else:
        headers = {"Content-Type": "application/json"}
    refused(env, lambda: client.post(WALLET, content=body, headers=headers), 401, code, body=body, channel_id="wo-wallet")


# --- a transaction id reused with other content -----------------------------------------------------


@pytest.mark.parametrize("change", [{"amount_fen": 2001}, {"account_no": OTHER_ACCOUNT_NO}])
def test_wallet_txn_id_reused_with_other_content_is_409_and_the_first_stands(env, change):
    system, n, client, keys = env
    headers, body = wallet_request(system, n, txn_id="WO-R")
    first = client.post(WALLET, content=body, headers=headers).json()
    headers, body = wallet_request(system, n, txn_id="WO-R", **change)
    refused(env, lambda: client.post(WALLET, content=body, headers=headers), 409, "TXN_ID_CONFLICT", body=body, channel_id="wo-wallet")
    headers, body = wallet_request(system, n, txn_id="WO-R")  # a true retry still gets the first answer
    again = client.post(WALLET, content=body, headers=headers).json()
    assert again["payment_id"] == first["payment_id"] and again["duplicate"] is True
    assert credited_fen(system, ACCOUNT_NO) == 2000 and credited_fen(system, OTHER_ACCOUNT_NO) == 0


def test_device_txn_id_reused_with_another_account_is_409(env):
    system, _, client, keys = env
    assert client.post(DEVICE, json=DEVICE_PAYMENT, headers=keys["device"]).json()["status"] == "booked"
    refused(env, lambda: client.post(DEVICE, json=DEVICE_PAYMENT | {"account_no": ACCOUNT_NO}, headers=keys["device"]), 409, "TXN_ID_CONFLICT",
            body=None, channel_id="kiosk")  # fmt: skip


def test_notified_txn_id_reused_with_another_amount_gets_each_channels_failure_reply(env):
    system, n, client, keys = env
    trade = client.post("/v1/orders", json={"channel_id": "wechat", "account_no": ACCOUNT_NO, "amount_fen": 5000}, headers=keys[Role.OPERATOR]).json()["out_trade_no"]
    headers, body = n.wechat.notification(out_trade_no=trade, transaction_id="4200000777", amount_fen=5000, at=system.clock.now())
    assert client.post("/v1/channels/wechat/notify", content=body, headers=headers).json()["code"] == "SUCCESS"
    headers, body = n.wechat.notification(out_trade_no=trade, transaction_id="4200000777", amount_fen=6000, at=system.clock.now())
    reply, _ = refused(env, lambda: client.post("/v1/channels/wechat/notify", content=body, headers=headers), 400, "TXN_ID_CONFLICT",
                       body=body, channel_id="wechat", json_error=False)  # fmt: skip
    assert reply.json()["code"] == "FAIL" and reply.json()["message"].startswith("TXN_ID_CONFLICT")

    trade = client.post("/v1/orders", json={"channel_id": "alipay", "account_no": ACCOUNT_NO, "amount_fen": 3000}, headers=keys[Role.OPERATOR]).json()["out_trade_no"]
    headers, body = n.alipay.notification(out_trade_no=trade, trade_no="2026112422001", amount_fen=3000, at=system.clock.now())
    assert client.post("/v1/channels/alipay/notify", content=body, headers=headers).text == "success"
    headers, body = n.alipay.notification(out_trade_no=trade, trade_no="2026112422001", amount_fen=3100, at=system.clock.now())
    reply, _ = refused(env, lambda: client.post("/v1/channels/alipay/notify", content=body, headers=headers), 200, "TXN_ID_CONFLICT",
                       body=body, channel_id="alipay", json_error=False)  # fmt: skip
    assert reply.text == "failure" and reply.headers["X-Gasworks-Error"] == "TXN_ID_CONFLICT"
    assert credited_fen(system, ACCOUNT_NO) == 8000


# --- orders need a caller and are bounded per account -----------------------------------------------


def test_orders_need_a_key_or_the_residents_binding(env):
    system, _, client, keys = env
    order = {"channel_id": "wechat", "account_no": ACCOUNT_NO, "amount_fen": 5000}
    for extra, headers, status, code in [
        ({}, {}, 401, "AUTHENTICATION_REQUIRED"),
        ({"holder_name": "张三"}, {}, 401, "RESIDENT_NOT_VERIFIED"),
        ({"holder_phone": "13812340000"}, {}, 401, "RESIDENT_NOT_VERIFIED"),
        ({}, keys[Role.AUDITOR], 403, "ROLE_FORBIDDEN"),
        ({"amount_fen": LIMIT_FEN + 1}, keys[Role.OPERATOR], 422, "AMOUNT_ABOVE_LIMIT"),
    ]:
        body = json.dumps(order | extra).encode()
        refused(env, lambda: client.post("/v1/orders", content=body, headers=headers | {"Content-Type": "application/json"}), status, code, body=body, channel_id="orders")
    for extra, headers in [({"holder_name": "张三丰"}, {}), ({"holder_phone": "+86 138-1234-5678"}, {}), ({}, keys["device"]), ({}, keys[Role.OPERATOR])]:
        assert client.post("/v1/orders", json=order | extra, headers=headers).status_code == 201


def test_orders_are_rate_limited_per_account(env):
    system, _, client, keys = env
    order = {"channel_id": "wechat", "account_no": ACCOUNT_NO, "amount_fen": 5000, "holder_name": "张三丰"}
    for _ in range(system.settings.orders_per_account_max):
        assert client.post("/v1/orders", json=order).status_code == 201
    body = json.dumps(order).encode()
    refused(env, lambda: client.post("/v1/orders", content=body, headers={"Content-Type": "application/json"}), 429, "RATE_LIMITED", body=body, channel_id="orders")
    assert client.post("/v1/orders", json=order | {"account_no": OTHER_ACCOUNT_NO}).status_code == 201  # per account
    system.clock.advance(system.settings.orders_per_account_window_s)
    assert client.post("/v1/orders", json=order).status_code == 201


# --- after all that ---------------------------------------------------------------------------------


def test_the_ledger_still_proves_itself_after_the_attacks(env):
    system, n, client, keys = env
    for amount_fen in (LIMIT_FEN + 1, 2**63 - 1, 2**63):
        headers, body = wallet_request(system, n, txn_id=f"WO-{amount_fen}", amount_fen=amount_fen)
        client.post(WALLET, content=body, headers=headers)
    headers, body = wallet_request(system, n, txn_id="WO-OK")
    client.post(WALLET, content=body, headers=headers)
    headers, body = wallet_request(system, n, txn_id="WO-OK", amount_fen=9)
    assert client.post(WALLET, content=body, headers=headers).status_code == 409
    client.post(DEVICE, json=DEVICE_PAYMENT | {"amount_fen": 2**63}, headers=keys["device"])
    report = check_ledger(system.new_uow())
    assert report.ok, report.findings
    assert credited_fen(system, ACCOUNT_NO) == 2000
    assert len(client.get("/v1/rejections", headers=keys[Role.AUDITOR]).json()) == 5


# --- Alipay over its declared charset, cross-checked with Alipay's official SDK ---------------------


def pkcs1_private_key(pem: str) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pem.encode(), password=None)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()).decode()


def official_notification(system, out_trade_no: str, trade_no: str, amount_yuan: str, charset: str) -> bytes:
    """A notification signed by alipay-sdk-python's own signer over the declared charset's bytes, and
    percent-encoded in that charset, as Alipay sends it."""
    from alipay.aop.api.util.SignatureUtils import get_sign_content, sign_with_rsa2

    from gasworks.adapters.channels.base import BEIJING

    now = system.clock.now().astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")
    params = {
        "notify_time": now, "notify_type": "trade_status_sync", "notify_id": f"ntf{trade_no}", "app_id": ALIPAY_APP_ID,
        "charset": charset, "version": "1.0", "trade_no": trade_no, "out_trade_no": out_trade_no, "trade_status": "TRADE_SUCCESS",
        "total_amount": amount_yuan, "gmt_payment": now, "subject": "燃气费充值（华新苑）", "body": "张三丰 预付费燃气 蒸湘区",
        "buyer_logon_id": "zha***@163.com",
    }  # fmt: skip
    params["sign"] = sign_with_rsa2(pkcs1_private_key(rsa_private_key("alipay")), get_sign_content(params), charset)
    params["sign_type"] = "RSA2"
    return urllib.parse.urlencode(params, encoding=charset).encode("ascii")


@pytest.mark.parametrize("charset", ["utf-8", "gbk", "gb2312"])
def test_alipay_notification_signed_by_the_official_sdk_books_in_its_charset(env, charset):
    system, _, client, keys = env
    trade = client.post("/v1/orders", json={"channel_id": "alipay", "account_no": ACCOUNT_NO, "amount_fen": 8800}, headers=keys[Role.OPERATOR]).json()["out_trade_no"]
    body = official_notification(system, trade, f"20261124{charset.replace('-', '')}", "88.00", charset)
    reply = client.post("/v1/channels/alipay/notify", content=body, headers={"Content-Type": f"application/x-www-form-urlencoded; charset={charset}"})
    assert reply.text == "success", reply.headers.get("X-Gasworks-Error")
    assert credited_fen(system, ACCOUNT_NO) == 8800


def test_alipay_gbk_notification_signed_over_utf8_bytes_is_refused(env):
    """Verifying over UTF-8 whatever the declared charset (what the community SDK does) is not lenience we keep."""
    system, _, client, keys = env
    trade = client.post("/v1/orders", json={"channel_id": "alipay", "account_no": ACCOUNT_NO, "amount_fen": 8800}, headers=keys[Role.OPERATOR]).json()["out_trade_no"]
    body = official_notification(system, trade, "2026112400gbk", "88.00", "gbk")
    params = dict(urllib.parse.parse_qsl(body.decode(), encoding="gbk"))
    from alipay.aop.api.util.SignatureUtils import get_sign_content, sign_with_rsa2

    unsigned = {k: v for k, v in params.items() if k not in ("sign", "sign_type")}
    params["sign"] = sign_with_rsa2(pkcs1_private_key(rsa_private_key("alipay")), get_sign_content(unsigned), "utf-8")
    forged = urllib.parse.urlencode(params, encoding="gbk").encode()
    refused(env, lambda: client.post("/v1/channels/alipay/notify", content=forged), 200, "SIGNATURE_INVALID", body=forged, channel_id="alipay", json_error=False)


@pytest.mark.parametrize("charset", ["utf-8", "gbk", "gb2312"])
def test_our_alipay_signer_verifies_with_the_official_sdk(charset):
    from alipay.aop.api.util.SignatureUtils import verify_with_rsa

    from gasworks.adapters.channels.alipay import AlipayNotifier, parse_form
    from gasworks.adapters.channels.rsa import public_key_pem
    from tests.conftest import START

    notifier = AlipayNotifier(alipay_private_key_pem=rsa_private_key("alipay"), app_id=ALIPAY_APP_ID)
    _, body = notifier.notification(out_trade_no="GW1", trade_no="T1", amount_fen=100, at=START, charset=charset, extra={"body": "华新苑 1 栋"})
    params, declared = parse_form(body)
    assert declared == charset and params["subject"] == "燃气费充值" and params["body"] == "华新苑 1 栋"
    unsigned = {k: v for k, v in params.items() if k not in ("sign", "sign_type")}
    from alipay.aop.api.util.SignatureUtils import get_sign_content

    assert signing_content(params, charset) == get_sign_content(unsigned).encode(charset)
    assert verify_with_rsa(public_key_pem(rsa_private_key("alipay")), get_sign_content(unsigned).encode(charset), params["sign"])
