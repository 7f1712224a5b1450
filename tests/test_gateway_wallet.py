"""The wallet gateway against a local wallet speaking the documented query API, HMAC-signed both ways."""

import secrets
from datetime import UTC, date, datetime

import pytest

from gasworks.adapters.channels.gateways.wallet import WalletGateway
from gasworks.services.channel_gateway import GatewayError, OrderStatus, RefundRequest
from gasworks.sim.stubs.wallet import WalletStub
from tests.support import WALLET_SECRET, served_in_thread


@pytest.fixture
def served():
    stub = WalletStub(key_id="wo-1", secret=WALLET_SECRET)
    with served_in_thread(stub.app()) as base_url:
        yield stub, base_url + stub.prefix


def gateway(base_url: str, secret: str = WALLET_SECRET) -> WalletGateway:
    return WalletGateway(channel_id="wo-wallet", base_url=base_url, keys={"wo-1": secret}, now=lambda: datetime.now(UTC))


def test_a_paid_transaction_is_answered_as_the_payment_a_notification_would_carry(served):
    stub, base_url = served
    stub.transactions["WO123"] = {"txn_id": "WO123", "status": "paid", "account_no": "4301000001", "amount_fen": 5000, "paid_at": "2026-11-23T09:00:00+08:00"}
    answer = gateway(base_url).query_order("WO123")
    assert answer.status == OrderStatus.PAID and answer.notice is not None
    assert (answer.notice.channel_txn_id, answer.notice.account_no, answer.notice.amount_fen) == ("WO123", "4301000001", 5000)
    assert gateway(base_url).query_order("WO404").status == OrderStatus.NOT_FOUND
    assert stub.refused == []


def test_a_tampered_or_replayed_answer_is_refused(served):
    stub, base_url = served
    stub.tamper = True  # "not_found" becomes "paid" after signing
    with pytest.raises(GatewayError) as tampered:
        gateway(base_url).query_order("WO404")
    assert tampered.value.code == "ANSWER_UNVERIFIED"
    stub.tamper = False
    stub.transactions["WO1"] = {"txn_id": "WO1", "status": "paid", "account_no": "4301000001", "amount_fen": 5000}
    gateway(base_url).query_order("WO1")
    stub.replay = True  # the same signed answer again, for another request: its nonce is not this request's
    with pytest.raises(GatewayError) as replayed:
        gateway(base_url).query_order("WO1")
    assert replayed.value.code == "ANSWER_UNVERIFIED"


def test_the_wallet_refuses_a_request_not_signed_with_the_shared_secret(served):
    stub, base_url = served
    with pytest.raises(GatewayError) as refused:
        gateway(base_url, secret=secrets.token_hex(20)).query_order("WO1")
    assert stub.refused == ["signature"] and refused.value.code == "ANSWER_UNVERIFIED"


def test_the_wallet_statement_is_fetched_and_refunds_are_not_its_api(served):
    stub, base_url = served
    stub.statements["2026-11-22"] = b"txn_id,account_no,amount_fen,paid_at,status\n# total,0,0\n"
    assert gateway(base_url).fetch_statement(date(2026, 11, 22)).content.startswith(b"txn_id,")
    with pytest.raises(GatewayError) as not_ready:
        gateway(base_url).fetch_statement(date(2026, 11, 23))
    assert not_ready.value.code == "STATEMENT_NOT_READY"
    with pytest.raises(GatewayError) as unsupported:
        gateway(base_url).refund(RefundRequest("GWR1", "", "WO1", 100, 100, "x"))
    assert unsupported.value.code == "NOT_SUPPORTED" and not unsupported.value.retryable
