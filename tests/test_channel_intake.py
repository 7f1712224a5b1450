"""Payment intake over HTTP, on SQLite and PostgreSQL: exactly once, refusals recorded, holds in suspense."""

import json
from datetime import timedelta
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient

from gasworks.adapters.channels.rsa import new_private_key_pem, public_key_pem
from gasworks.adapters.channels.wechatpay_v3 import WechatPayV3Notifier
from gasworks.domain.channels import KeyPurpose
from gasworks.entrypoints.api.app import create_app
from gasworks.services import channels as channel_admin
from gasworks.services.access import Role
from gasworks.services.checks import check_ledger
from gasworks.services.intake import forget_old_nonces
from tests.support import ACCOUNT_NO, APIV3_KEY, OTHER_ACCOUNT_NO, WECHAT_MCHID, api_key, balance_fen, credited_fen, rsa_private_key, set_up

NOTIFY_WECHAT = "/v1/channels/wechat/notify"
NOTIFY_ALIPAY = "/v1/channels/alipay/notify"
WALLET_PAYMENTS = "/v1/channels/wo-wallet/payments"


@pytest.fixture
def env(system):
    notifiers = set_up(system)
    client = TestClient(create_app(system))
    auditor = {"Authorization": f"Bearer {api_key(system, Role.AUDITOR)}"}
    return system, notifiers, client, auditor


def order(client, channel_id="wechat", account_no=ACCOUNT_NO, amount_fen=5000) -> str:
    body = {"channel_id": channel_id, "account_no": account_no, "amount_fen": amount_fen, "holder_phone": "13812345678"}  # the resident who bound it
    response = client.post("/v1/orders", json=body)
    assert response.status_code == 201, response.text
    return response.json()["out_trade_no"]


def rejections(client, auditor, channel_id):
    response = client.get("/v1/rejections", params={"channel_id": channel_id}, headers=auditor)
    assert response.status_code == 200
    return [r["code"] for r in response.json()]


def suspense_fen(system) -> int:
    with system.new_uow() as uow:
        return -uow.ledger.entries_sum_fen("suspense")


# --- WeChat Pay v3 -------------------------------------------------------------------------------


def test_wechat_notification_books_the_order_and_shows_the_timeline(env):
    system, n, client, auditor = env
    trade = order(client)
    headers, body = n.wechat.notification(out_trade_no=trade, transaction_id="4200000001", amount_fen=5000, at=system.clock.now())
    reply = client.post(NOTIFY_WECHAT, content=body, headers=headers)
    assert reply.status_code == 200 and reply.json()["code"] == "SUCCESS"
    assert credited_fen(system, ACCOUNT_NO) == 5000
    payments = client.get(f"/v1/accounts/{ACCOUNT_NO}/payments", headers=auditor).json()
    assert [p["status"] for p in payments] == ["booked"]
    payment = client.get(f"/v1/payments/{payments[0]['id']}", headers=auditor).json()
    assert [step["state"] for step in payment["timeline"]] == ["received", "verified", "booked"]
    assert client.get(f"/v1/orders/{trade}").json()["state"] == "paid"


def test_duplicate_notification_books_nothing_more(env):
    system, n, client, auditor = env
    trade = order(client)
    for _ in range(3):  # WeChat Pay retries, each attempt freshly signed
        system.clock.advance(15)
        headers, body = n.wechat.notification(out_trade_no=trade, transaction_id="4200000002", amount_fen=5000, at=system.clock.now())
        assert client.post(NOTIFY_WECHAT, content=body, headers=headers).status_code == 200
    assert credited_fen(system, ACCOUNT_NO) == 5000
    assert len(client.get(f"/v1/accounts/{ACCOUNT_NO}/payments", headers=auditor).json()) == 1
    assert check_ledger(system.new_uow()).ok


def test_forged_notification_is_refused_and_recorded(env):
    system, _, client, auditor = env
    trade = order(client)
    forger = WechatPayV3Notifier(platform_private_key_pem=rsa_private_key("forger"), serial="PUB_KEY_ID_1", apiv3_key=APIV3_KEY, mchid=WECHAT_MCHID)
    headers, body = forger.notification(out_trade_no=trade, transaction_id="4200000003", amount_fen=5000, at=system.clock.now())
    reply = client.post(NOTIFY_WECHAT, content=body, headers=headers)
    assert reply.status_code == 400
    assert reply.json()["code"] == "FAIL" and "SIGNATURE_INVALID" in reply.json()["message"]
    assert credited_fen(system, ACCOUNT_NO) == 0
    assert rejections(client, auditor, "wechat") == ["SIGNATURE_INVALID"]


def test_tampered_notification_is_refused(env):
    system, n, client, auditor = env
    trade = order(client)
    headers, body = n.wechat.notification(out_trade_no=trade, transaction_id="4200000004", amount_fen=5000, at=system.clock.now())
    tampered = body.replace(b'"summary": "', b'"summary": "x')
    assert client.post(NOTIFY_WECHAT, content=tampered, headers=headers).status_code == 400
    assert rejections(client, auditor, "wechat") == ["SIGNATURE_INVALID"]


def test_replayed_notification_with_a_used_nonce_is_refused(env):
    system, n, client, auditor = env
    trade = order(client)
    headers, body = n.wechat.notification(out_trade_no=trade, transaction_id="4200000005", amount_fen=5000, at=system.clock.now())
    assert client.post(NOTIFY_WECHAT, content=body, headers=headers).status_code == 200
    system.clock.advance(60)
    replay = client.post(NOTIFY_WECHAT, content=body, headers=headers)
    assert replay.status_code == 400 and "NONCE_REUSED" in replay.json()["message"]
    assert credited_fen(system, ACCOUNT_NO) == 5000
    assert rejections(client, auditor, "wechat") == ["NONCE_REUSED"]


def test_expired_notification_is_refused(env):
    system, n, client, auditor = env
    trade = order(client)
    headers, body = n.wechat.notification(out_trade_no=trade, transaction_id="4200000006", amount_fen=5000, at=system.clock.now() - timedelta(minutes=6))
    reply = client.post(NOTIFY_WECHAT, content=body, headers=headers)
    assert reply.status_code == 400 and "TIMESTAMP_OUT_OF_TOLERANCE" in reply.json()["message"]
    assert rejections(client, auditor, "wechat") == ["TIMESTAMP_OUT_OF_TOLERANCE"]


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda h, b: ({k: v for k, v in h.items() if k != "Wechatpay-Signature"}, b), "SIGNATURE_MISSING"),
        (lambda h, b: (h | {"Wechatpay-Serial": "NOT_OURS"}, b), "UNKNOWN_KEY"),
        (lambda h, b: (h | {"Wechatpay-Timestamp": "yesterday"}, b), "SIGNATURE_INVALID"),
        (lambda h, b: (h | {"Wechatpay-Signature": "%%%not-base64%%%"}, b), "SIGNATURE_INVALID"),
    ],
)
def test_malformed_wechat_headers_are_refused_with_their_code(env, mutate, code):
    system, n, client, auditor = env
    trade = order(client)
    headers, body = mutate(*n.wechat.notification(out_trade_no=trade, transaction_id="4200000007", amount_fen=5000, at=system.clock.now()))
    reply = client.post(NOTIFY_WECHAT, content=body, headers=headers)
    assert reply.status_code == 400 and code in reply.json()["message"]
    assert rejections(client, auditor, "wechat") == [code]


def test_validly_signed_garbage_is_refused_as_malformed(env):
    system, n, client, auditor = env
    from gasworks.adapters.channels.rsa import sign_sha256_rsa
    from gasworks.adapters.channels.wechatpay_v3 import signed_message

    body = b'{"event_type": "TRANSACTION.SUCCESS", "resource": {"algorithm": "AEAD_AES_256_GCM", "ciphertext": "AAAA", "nonce": "x"}}'
    ts = str(int(system.clock.now().timestamp()))
    headers = {"Wechatpay-Serial": "PUB_KEY_ID_1", "Wechatpay-Timestamp": ts, "Wechatpay-Nonce": "n1", "Wechatpay-Signature": sign_sha256_rsa(rsa_private_key("wechat"), signed_message(ts, "n1", body))}
    reply = client.post(NOTIFY_WECHAT, content=body, headers=headers)
    assert reply.status_code == 400
    assert rejections(client, auditor, "wechat") == ["DECRYPT_FAILED"]


def test_amount_mismatch_is_held_in_suspense_not_credited(env):
    system, n, client, auditor = env
    trade = order(client, amount_fen=5000)
    headers, body = n.wechat.notification(out_trade_no=trade, transaction_id="4200000008", amount_fen=4000, at=system.clock.now())
    assert client.post(NOTIFY_WECHAT, content=body, headers=headers).status_code == 200  # taken: the money is ours to place
    assert credited_fen(system, ACCOUNT_NO) == 0
    assert suspense_fen(system) == 4000
    holds = client.get("/v1/holds", headers=auditor).json()
    assert [(h["hold_reason"], h["amount_fen"]) for h in holds] == [("AMOUNT_MISMATCH", 4000)]
    assert client.get(f"/v1/orders/{trade}").json()["state"] == "open"


def test_notification_for_an_unknown_order_goes_to_suspense(env):
    system, n, client, auditor = env
    headers, body = n.wechat.notification(out_trade_no="GW20261123NOSUCHORDER", transaction_id="4200000009", amount_fen=2500, at=system.clock.now())
    assert client.post(NOTIFY_WECHAT, content=body, headers=headers).status_code == 200
    assert suspense_fen(system) == 2500
    assert [h["hold_reason"] for h in client.get("/v1/holds", headers=auditor).json()] == ["UNKNOWN_ORDER"]


def test_second_payment_for_a_paid_order_is_held(env):
    system, n, client, auditor = env
    trade = order(client)
    for txn in ("4200000010", "4200000011"):
        headers, body = n.wechat.notification(out_trade_no=trade, transaction_id=txn, amount_fen=5000, at=system.clock.now())
        assert client.post(NOTIFY_WECHAT, content=body, headers=headers).status_code == 200
    assert credited_fen(system, ACCOUNT_NO) == 5000
    assert [h["hold_reason"] for h in client.get("/v1/holds", headers=auditor).json()] == ["ORDER_ALREADY_PAID"]


def test_refund_event_is_acknowledged_and_books_nothing(env):
    system, n, client, auditor = env
    trade = order(client)
    headers, body = n.wechat.notification(out_trade_no=trade, transaction_id="4200000012", amount_fen=5000, at=system.clock.now(), event_type="REFUND.SUCCESS")
    assert client.post(NOTIFY_WECHAT, content=body, headers=headers).status_code == 200
    assert credited_fen(system, ACCOUNT_NO) == 0
    assert rejections(client, auditor, "wechat") == ["EVENT_IGNORED"]


def test_platform_key_rotation_accepts_both_keys_then_only_the_new(env):
    system, n, client, auditor = env
    new_key = new_private_key_pem()
    channel_admin.add_key(channel_id="wechat", purpose=KeyPurpose.VERIFY_PUBLIC_KEY, key_id="PUB_KEY_ID_2", material=public_key_pem(new_key), uow=system.new_uow(), actor="test")
    rotated = WechatPayV3Notifier(platform_private_key_pem=new_key, serial="PUB_KEY_ID_2", apiv3_key=APIV3_KEY, mchid=WECHAT_MCHID)
    for notifier, txn in ((n.wechat, "4200000013"), (rotated, "4200000014")):
        headers, body = notifier.notification(out_trade_no=order(client, amount_fen=100), transaction_id=txn, amount_fen=100, at=system.clock.now())
        assert client.post(NOTIFY_WECHAT, content=body, headers=headers).status_code == 200
    channel_admin.retire_key(channel_id="wechat", key_id="PUB_KEY_ID_1", uow=system.new_uow(), actor="test")
    headers, body = n.wechat.notification(out_trade_no=order(client, amount_fen=100), transaction_id="4200000015", amount_fen=100, at=system.clock.now())
    assert client.post(NOTIFY_WECHAT, content=body, headers=headers).status_code == 400
    assert credited_fen(system, ACCOUNT_NO) == 200
    assert rejections(client, auditor, "wechat") == ["UNKNOWN_KEY"]


# --- Alipay ----------------------------------------------------------------------------------------


def test_alipay_notification_books_and_replies_success(env):
    system, n, client, _ = env
    trade = order(client, channel_id="alipay", amount_fen=12345)
    headers, body = n.alipay.notification(out_trade_no=trade, trade_no="2026112322001400001", amount_fen=12345, at=system.clock.now())
    reply = client.post(NOTIFY_ALIPAY, content=body, headers=headers)
    assert (reply.status_code, reply.text) == (200, "success")
    assert credited_fen(system, ACCOUNT_NO) == 12345


def test_alipay_retry_of_the_same_trade_books_once(env):
    system, n, client, _ = env
    trade = order(client, channel_id="alipay", amount_fen=3000)
    for _ in range(2):
        system.clock.advance(240)  # Alipay's first retry comes after 4 minutes
        headers, body = n.alipay.notification(out_trade_no=trade, trade_no="2026112322001400002", amount_fen=3000, at=system.clock.now())
        assert client.post(NOTIFY_ALIPAY, content=body, headers=headers).text == "success"
    assert credited_fen(system, ACCOUNT_NO) == 3000


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        (lambda b: b.replace(b"total_amount=30.00", b"total_amount=3000.00"), "SIGNATURE_INVALID"),
        (lambda b: b.replace(b"sign_type=RSA2", b"sign_type=RSA"), "SIGNATURE_INVALID"),
        (lambda b: b + b"&%ZZ", "MALFORMED"),
        (lambda b: "金额".encode() + b, "MALFORMED"),
    ],
)
def test_tampered_or_malformed_alipay_notification_replies_failure(env, tamper, code):
    system, n, client, auditor = env
    trade = order(client, channel_id="alipay", amount_fen=3000)
    headers, body = n.alipay.notification(out_trade_no=trade, trade_no="2026112322001400003", amount_fen=3000, at=system.clock.now())
    reply = client.post(NOTIFY_ALIPAY, content=tamper(body), headers=headers)
    assert reply.text == "failure" and reply.headers["X-Gasworks-Error"] == code
    assert credited_fen(system, ACCOUNT_NO) == 0
    assert rejections(client, auditor, "alipay") == [code]


def test_stale_alipay_notification_is_refused(env):
    system, n, client, auditor = env
    trade = order(client, channel_id="alipay", amount_fen=3000)
    headers, body = n.alipay.notification(out_trade_no=trade, trade_no="2026112322001400004", amount_fen=3000, at=system.clock.now() - timedelta(hours=2))
    assert client.post(NOTIFY_ALIPAY, content=body, headers=headers).text == "failure"
    assert rejections(client, auditor, "alipay") == ["TIMESTAMP_OUT_OF_TOLERANCE"]


def test_alipay_closed_trade_is_acknowledged_without_booking(env):
    system, n, client, _ = env
    trade = order(client, channel_id="alipay", amount_fen=3000)
    headers, body = n.alipay.notification(out_trade_no=trade, trade_no="2026112322001400005", amount_fen=3000, at=system.clock.now(), trade_status="TRADE_CLOSED")
    assert client.post(NOTIFY_ALIPAY, content=body, headers=headers).text == "success"
    assert credited_fen(system, ACCOUNT_NO) == 0


# --- Bill payment (wallet-hmac) ----------------------------------------------------------------------


def wallet_pay(system, n, client, txn_id, account_no=ACCOUNT_NO, amount_fen=2000, nonce=None):
    headers, body = n.wallet.payment(path=WALLET_PAYMENTS, txn_id=txn_id, account_no=account_no, amount_fen=amount_fen, at=system.clock.now(), nonce=nonce)
    return client.post(WALLET_PAYMENTS, content=body, headers=headers)


def test_wallet_queries_the_account_then_pays_it(env):
    system, n, client, _ = env
    path = f"/v1/channels/wo-wallet/accounts/{ACCOUNT_NO}"
    looked_up = client.get(path, headers=n.wallet.signed_headers("GET", path, b"", system.clock.now()))
    assert looked_up.status_code == 200
    assert looked_up.json() == {"account_no": ACCOUNT_NO, "name_masked": "张**", "balance_fen": 0, "meter_kind": "iot"}
    paid = wallet_pay(system, n, client, "WO-0001")
    assert paid.status_code == 200 and paid.json()["status"] == "booked" and paid.json()["duplicate"] is False
    assert credited_fen(system, ACCOUNT_NO) == 2000


def test_wallet_retry_returns_the_first_answer(env):
    system, n, client, _ = env
    first = wallet_pay(system, n, client, "WO-0002").json()
    again = wallet_pay(system, n, client, "WO-0002").json()
    assert again["payment_id"] == first["payment_id"] and again["duplicate"] is True
    assert credited_fen(system, ACCOUNT_NO) == 2000


def test_wallet_retry_with_a_different_amount_is_a_conflict_and_the_first_stands(env):
    system, n, client, auditor = env
    first = wallet_pay(system, n, client, "WO-0003", amount_fen=2000).json()
    again = wallet_pay(system, n, client, "WO-0003", amount_fen=9000)
    assert again.status_code == 409 and again.json()["error"]["code"] == "TXN_ID_CONFLICT"
    assert wallet_pay(system, n, client, "WO-0003", amount_fen=2000).json()["payment_id"] == first["payment_id"]
    assert credited_fen(system, ACCOUNT_NO) == 2000
    assert rejections(client, auditor, "wo-wallet") == ["TXN_ID_CONFLICT"]


def test_wallet_payment_for_an_unknown_account_is_held(env):
    system, n, client, auditor = env
    reply = wallet_pay(system, n, client, "WO-0004", account_no="9999999999")
    assert reply.json()["status"] == "held" and reply.json()["hold_reason"] == "UNKNOWN_ACCOUNT"
    assert suspense_fen(system) == 2000


def test_wallet_reused_nonce_is_refused(env):
    system, n, client, auditor = env
    assert wallet_pay(system, n, client, "WO-0005", nonce="nonce-0005-abcdef").status_code == 200
    reply = wallet_pay(system, n, client, "WO-0006", nonce="nonce-0005-abcdef")
    assert reply.status_code == 401 and reply.json()["error"]["code"] == "NONCE_REUSED"
    assert credited_fen(system, ACCOUNT_NO) == 2000


@pytest.mark.parametrize(
    ("body", "code"),
    [(b"not json", "MALFORMED"), (b'{"txn_id": "x", "account_no": "4301000001", "amount_fen": 12.5}', "MALFORMED"), (b'{"txn_id": "x", "account_no": "4301000001", "amount_fen": -5}', "MALFORMED"), (b"[]", "MALFORMED")],
)
def test_wallet_malformed_bodies_are_refused_with_a_code(env, body, code):
    system, n, client, auditor = env
    headers = n.wallet.signed_headers("POST", WALLET_PAYMENTS, body, system.clock.now())
    reply = client.post(WALLET_PAYMENTS, content=body, headers=headers)
    assert reply.status_code == 400 and reply.json()["error"]["code"] == code
    assert rejections(client, auditor, "wo-wallet") == [code]


def test_unsigned_wallet_request_is_refused(env):
    system, _, client, _ = env
    reply = client.post(WALLET_PAYMENTS, json={"txn_id": "x", "account_no": ACCOUNT_NO, "amount_fen": 100})
    assert reply.status_code == 401 and reply.json()["error"]["code"] == "SIGNATURE_MISSING"


def test_oversized_body_is_refused_before_it_is_read(env):
    system, n, client, _ = env
    body = b"x" * (system.settings.request_body_bytes_max + 1)
    reply = client.post(WALLET_PAYMENTS, content=body, headers=n.wallet.signed_headers("POST", WALLET_PAYMENTS, body, system.clock.now()))
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "BODY_TOO_LARGE"


# --- Kiosks and counters --------------------------------------------------------------------------


def test_kiosk_payment_needs_a_device_key_and_books_once(env):
    system, _, client, auditor = env
    payment = {"txn_id": "K-0001", "account_no": OTHER_ACCOUNT_NO, "amount_fen": 10000, "method": "cash"}
    assert client.post("/v1/devices/payments", json=payment).status_code == 401
    assert client.post("/v1/devices/payments", json=payment, headers=auditor).status_code == 403
    device = {"Authorization": f"Bearer {api_key(system, Role.DEVICE, channel_id='kiosk')}"}
    first = client.post("/v1/devices/payments", json=payment, headers=device).json()
    again = client.post("/v1/devices/payments", json=payment, headers=device).json()
    assert first["status"] == "booked" and again["payment_id"] == first["payment_id"] and again["duplicate"]
    assert credited_fen(system, OTHER_ACCOUNT_NO) == 10000
    audit = client.get("/v1/audit", params={"subject": f"payment:{first['payment_id']}"}, headers=auditor).json()
    assert [a["action"] for a in audit] == ["payment.take"] and audit[0]["actor"].startswith("device:")


def test_kiosk_payment_for_an_unknown_account_is_refused_not_held(env):
    system, _, client, _ = env
    device = {"Authorization": f"Bearer {api_key(system, Role.DEVICE, channel_id='kiosk')}"}
    reply = client.post("/v1/devices/payments", json={"txn_id": "K-2", "account_no": "9999999999", "amount_fen": 100, "method": "cash"}, headers=device)
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "ACCOUNT_NOT_FOUND"
    assert suspense_fen(system) == 0


# --- Errors, checks, metrics ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "payload", "status", "code"),
    [
        ("post", "/v1/orders", {"channel_id": "wechat", "account_no": ACCOUNT_NO, "amount_fen": "50", "holder_name": "张三丰"}, 422, "VALIDATION_ERROR"),
        ("post", "/v1/orders", {"channel_id": "wechat", "account_no": ACCOUNT_NO, "amount_fen": 10**12, "holder_name": "张三丰"}, 422, "AMOUNT_ABOVE_LIMIT"),
        ("post", "/v1/orders", {"channel_id": "wo-wallet", "account_no": ACCOUNT_NO, "amount_fen": 100, "holder_name": "张三丰"}, 422, "WRONG_CHANNEL_KIND"),
        ("post", "/v1/orders", {"channel_id": "wechat", "account_no": "9999999999", "amount_fen": 100, "holder_name": "张三丰"}, 401, "RESIDENT_NOT_VERIFIED"),
        ("post", "/v1/orders", {"channel_id": "wechat", "account_no": ACCOUNT_NO, "amount_fen": 100}, 401, "AUTHENTICATION_REQUIRED"),
        ("post", "/v1/channels/nope/notify", None, 404, "CHANNEL_NOT_FOUND"),
        ("post", "/v1/channels/wo-wallet/notify", None, 400, "WRONG_ENDPOINT"),
        ("get", "/v1/orders/nope", None, 404, "ORDER_NOT_FOUND"),
        ("get", "/v1/no-such-thing", None, 404, "NOT_FOUND"),
        ("get", "/v1/payments/pay_x", None, 401, "API_KEY_MISSING"),
    ],
)
def test_bad_requests_get_a_clear_machine_readable_error(env, method, path, payload, status, code):
    _, _, client, _ = env
    reply = getattr(client, method)(path, json=payload) if payload is not None else getattr(client, method)(path)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["code"] == code


def test_operator_opens_an_account_and_phone_is_masked(env):
    system, _, client, auditor = env
    operator = {"Authorization": f"Bearer {api_key(system, Role.OPERATOR)}"}
    new = {"account_no": "430100000099", "name": "李四", "address": "雁峰区", "community": "白沙洲", "grid": "G-7", "phone": "13900001111", "meter_serial": "00000000000099", "meter_kind": "card"}
    assert client.post("/v1/accounts", json=new, headers=auditor).status_code == 403
    created = client.post("/v1/accounts", json=new, headers=operator)
    assert created.status_code == 201 and created.json()["phone_masked"] == "139****1111"
    assert "13900001111" not in json.dumps(client.get("/v1/accounts/430100000099", headers=auditor).json())
    assert client.post("/v1/accounts", json=new, headers=operator).json()["error"]["code"] == "ACCOUNT_EXISTS"


def test_ledger_check_and_metrics_after_taking_payments(env):
    system, n, client, auditor = env
    wallet_pay(system, n, client, "WO-0100")
    wallet_pay(system, n, client, "WO-0101", account_no="9999999999")
    report = client.get("/v1/checks/ledger", headers=auditor).json()
    assert report["ok"] is True and report["findings"] == []
    assert report["payments_by_state"] == {"booked": {"count": 1, "amount_fen": 2000}, "held": {"count": 1, "amount_fen": 2000}}
    assert report["totals_by_kind_fen"]["clearing"] == 4000
    metrics = client.get("/metrics").text
    assert 'gasworks_payments_taken_total{channel_kind="wallet-hmac",outcome="booked"}' in metrics


def test_the_wallet_gets_a_page_to_show_the_resident_instead_of_success(env):
    system, n, client, _ = env
    paid = wallet_pay(system, n, client, "WO-0100").json()
    link = urlsplit(paid["resident_url"])
    page = client.get(f"{link.path}?{link.query}")
    assert page.status_code == 200 and "等待燃气表联网" in page.text
    again = wallet_pay(system, n, client, "WO-0100").json()
    assert again["resident_url"] == paid["resident_url"]


def test_nonces_are_forgotten_once_their_timestamps_could_no_longer_pass(env):
    system, n, client, _ = env
    assert wallet_pay(system, n, client, "WO-0101", nonce="nonce-0101-abcdef").status_code == 200
    system.clock.advance(2 * system.settings.notification_clock_skew_s - 1)
    assert forget_old_nonces(system.new_uow(), skew_s=system.settings.notification_clock_skew_s) == 0
    system.clock.advance(2)
    assert forget_old_nonces(system.new_uow(), skew_s=system.settings.notification_clock_skew_s) == 1


def test_a_kiosk_dates_its_payment_by_its_own_clock_within_bounds(env):
    system, _, client, auditor = env
    device = {"Authorization": f"Bearer {api_key(system, Role.DEVICE, channel_id='kiosk')}"}
    taken_at = system.clock.now() - timedelta(hours=3)  # offline for a while, sending what it took
    body = {"txn_id": "K-77", "account_no": OTHER_ACCOUNT_NO, "amount_fen": 2000, "method": "cash", "paid_at": taken_at.isoformat()}
    paid = client.post("/v1/devices/payments", json=body, headers=device)
    assert paid.status_code == 200, paid.text
    assert client.get(f"/v1/payments/{paid.json()['payment_id']}", headers=auditor).json()["paid_at"].startswith(taken_at.strftime("%Y-%m-%dT%H:%M"))
    for bad in (system.clock.now() + timedelta(hours=1), system.clock.now() - timedelta(days=8)):
        refused = client.post("/v1/devices/payments", json=body | {"txn_id": "K-78", "paid_at": bad.isoformat()}, headers=device)
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "INVALID_PAID_AT"


def test_an_operator_credits_a_held_payment_to_the_right_account_and_it_buys_gas(env):
    system, n, client, auditor = env
    operator = {"Authorization": f"Bearer {api_key(system, Role.OPERATOR)}"}
    held = wallet_pay(system, n, client, "WO-0200", account_no="9999999999").json()
    assert held["status"] == "held" and suspense_fen(system) == 2000
    decided = client.post(f"/v1/holds/{held['payment_id']}/decisions", json={"decision": "credit", "account_no": ACCOUNT_NO, "reason": "resident typed a wrong digit"}, headers=operator)
    assert decided.status_code == 200, decided.text
    assert decided.json()["status"] == "booked" and decided.json()["account_no"] == ACCOUNT_NO
    assert suspense_fen(system) == 0 and credited_fen(system, ACCOUNT_NO) == 2000
    shown = client.get(f"/v1/payments/{held['payment_id']}", headers=auditor).json()
    assert shown["delivery"]["status"] == "WAITING_FOR_METER" and shown["delivery"]["order"]["purchase_seq"] == 1
    again = client.post(f"/v1/holds/{held['payment_id']}/decisions", json={"decision": "refund", "reason": "twice"}, headers=operator)
    assert again.status_code == 409 and again.json()["error"]["code"] == "HOLD_NOT_OPEN"
    assert client.get("/v1/holds", headers=auditor).json() == []
    assert [a["action"] for a in client.get("/v1/audit", params={"subject": f"payment:{held['payment_id']}"}, headers=auditor).json()] == ["hold.credit"]
    assert check_ledger(system.new_uow()).ok


def test_a_refund_is_requested_until_the_channel_confirms_it(env):
    """Changed with the payment life cycle: an operator's refund is "refund requested" (money in
    refunds in flight, the resident is told so) until the channel confirms; only then "refunded"."""
    system, n, client, auditor = env
    operator = {"Authorization": f"Bearer {api_key(system, Role.OPERATOR)}"}
    held = wallet_pay(system, n, client, "WO-0201", account_no="9999999999").json()
    with system.new_uow() as uow:
        owed_before = uow.ledger.entries_sum_fen("clearing:wo-wallet")
    bad = client.post(f"/v1/holds/{held['payment_id']}/decisions", json={"decision": "credit", "account_no": "4309999999", "reason": "x"}, headers=operator)
    assert bad.status_code == 404 and bad.json()["error"]["code"] == "ACCOUNT_NOT_FOUND"
    requested = client.post(f"/v1/holds/{held['payment_id']}/decisions", json={"decision": "refund", "reason": "no such customer"}, headers=operator)
    assert requested.status_code == 200 and requested.json()["status"] == "refund_requested"
    with system.new_uow() as uow:
        assert uow.ledger.entries_sum_fen("clearing:wo-wallet") == owed_before  # nothing has gone back yet
        assert -uow.ledger.entries_sum_fen("refunds") == 2000
    assert suspense_fen(system) == 0
    shown = client.get(f"/v1/payments/{held['payment_id']}", headers=auditor).json()["delivery"]
    assert shown["status"] == "REFUND_REQUESTED" and "Refund requested on" in shown["headline"]["en"]
    assert check_ledger(system.new_uow()).ok
    assert client.post(f"/v1/payments/{held['payment_id']}/refunds", json={"kind": "confirmed", "evidence": "x"}, headers=auditor).status_code == 403
    confirmed = client.post(f"/v1/payments/{held['payment_id']}/refunds", json={"kind": "confirmed", "evidence": "WO refund R-1"}, headers=operator)
    assert confirmed.status_code == 200 and confirmed.json()["status"] == "refunded"
    with system.new_uow() as uow:
        assert uow.ledger.entries_sum_fen("clearing:wo-wallet") == owed_before - 2000
        assert uow.ledger.entries_sum_fen("refunds") == 0
    assert client.get(f"/v1/payments/{held['payment_id']}", headers=auditor).json()["delivery"]["status"] == "REFUNDED"
    again = client.post(f"/v1/payments/{held['payment_id']}/refunds", json={"kind": "confirmed", "evidence": "again"}, headers=operator)
    assert again.status_code == 409 and again.json()["error"]["code"] == "PAYMENT_ALREADY_REFUNDED"
    assert "refund confirmed by wo-wallet" in again.json()["error"]["message"]
    with system.new_uow() as uow:
        assert uow.ledger.entries_sum_fen("clearing:wo-wallet") == owed_before - 2000
    assert check_ledger(system.new_uow()).ok


def test_wechat_refund_notification_refunds_the_payment_once_and_leaves_arrears_for_gas_bought(env):
    """A refund WeChat made on its own (REFUND.SUCCESS) is an external refund: one transaction, the
    resident's gas stays bought, the account owes it. A retry of the notification moves nothing."""
    system, n, client, auditor = env
    trade = order(client)
    headers, body = n.wechat.notification(out_trade_no=trade, transaction_id="4200000901", amount_fen=5000, at=system.clock.now())
    assert client.post(NOTIFY_WECHAT, content=body, headers=headers).status_code == 200
    payment_id = client.get(f"/v1/accounts/{ACCOUNT_NO}/payments", headers=auditor).json()[0]["id"]
    bought_fen = 5000 - balance_fen(system, ACCOUNT_NO)
    partial = n.wechat.refund_notification(out_trade_no=trade, transaction_id="4200000901", refund_fen=1000, total_fen=5000, at=system.clock.now())
    assert client.post(NOTIFY_WECHAT, content=partial[1], headers=partial[0]).status_code == 200  # acknowledged, left to an operator
    assert "PARTIAL_REFUND" in rejections(client, auditor, "wechat")
    headers, body = n.wechat.refund_notification(out_trade_no=trade, transaction_id="4200000901", refund_fen=5000, total_fen=5000, at=system.clock.now())
    reply = client.post(NOTIFY_WECHAT, content=body, headers=headers)
    assert reply.status_code == 200 and reply.json()["code"] == "SUCCESS"
    retry = n.wechat.refund_notification(out_trade_no=trade, transaction_id="4200000901", refund_fen=5000, total_fen=5000, at=system.clock.now())
    assert client.post(NOTIFY_WECHAT, content=retry[1], headers=retry[0]).status_code == 200
    shown = client.get(f"/v1/payments/{payment_id}", headers=auditor).json()
    assert shown["status"] == "refunded" and shown["delivery"]["status"] == "REFUNDED"
    assert balance_fen(system, ACCOUNT_NO) == -bought_fen, "the gas stays bought: the account owes it"
    with system.new_uow() as uow:
        assert uow.ledger.entries_sum_fen("clearing:wechat") == 0
    report = check_ledger(system.new_uow())
    assert report.ok and report.arrears == (1, bought_fen)
    unknown = n.wechat.refund_notification(out_trade_no="X", transaction_id="4209999999", refund_fen=100, total_fen=100, at=system.clock.now())
    assert client.post(NOTIFY_WECHAT, content=unknown[1], headers=unknown[0]).status_code == 400  # WeChat retries: its payment may come first
    assert "REFUND_FOR_UNKNOWN_PAYMENT" in rejections(client, auditor, "wechat")


def test_alipay_refund_notification_refunds_the_payment_once(env):
    """Alipay notifies a refund with refund_fee (all refunded so far) on the trade: a full one is an
    external refund of the payment, once; a partial one is recorded for an operator."""
    system, n, client, auditor = env
    trade = order(client, channel_id="alipay", amount_fen=8000)
    headers, body = n.alipay.notification(out_trade_no=trade, trade_no="2026112322009900001", amount_fen=8000, at=system.clock.now())
    assert client.post(NOTIFY_ALIPAY, content=body, headers=headers).text == "success"
    payment_id = client.get(f"/v1/accounts/{ACCOUNT_NO}/payments", headers=auditor).json()[0]["id"]
    gmt = system.clock.now().astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%d %H:%M:%S")
    partial = {"refund_fee": "10.00", "gmt_refund": gmt + ".123", "out_biz_no": "RF-1"}
    headers, body = n.alipay.notification(out_trade_no=trade, trade_no="2026112322009900001", amount_fen=8000, at=system.clock.now(), extra=partial)
    assert client.post(NOTIFY_ALIPAY, content=body, headers=headers).text == "success"  # acknowledged, left to an operator
    assert "PARTIAL_REFUND" in rejections(client, auditor, "alipay")
    full = {"refund_fee": "80.00", "gmt_refund": gmt, "out_biz_no": "RF-2"}
    for _ in range(2):  # Alipay resends until it reads success: the second moves nothing
        headers, body = n.alipay.notification(out_trade_no=trade, trade_no="2026112322009900001", amount_fen=8000, at=system.clock.now(), trade_status="TRADE_CLOSED", extra=full)
        assert client.post(NOTIFY_ALIPAY, content=body, headers=headers).text == "success"
    assert client.get(f"/v1/payments/{payment_id}", headers=auditor).json()["status"] == "refunded"
    with system.new_uow() as uow:
        assert uow.ledger.entries_sum_fen("clearing:alipay") == 0
    assert check_ledger(system.new_uow()).ok
