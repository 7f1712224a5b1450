"""When the database cannot finish a request (a deadlock, a primary gone in a failover), the caller
hears 503 with Retry-After, never a 500; nothing was taken, and the same payment sent again is
taken once."""

from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from gasworks.entrypoints.api.app import create_app
from tests.support import ACCOUNT_NO, set_up

PATH = "/v1/channels/wo-wallet/payments"


def unreachable(engine):
    """An engine whose every connection is refused, as a dead primary's would be."""
    if engine.dialect.name == "postgresql":
        return create_engine(engine.url.set(host="127.0.0.1", port=9))
    return create_engine(engine.url.set(database="/nonexistent-dir/gasworks.db"))


def test_a_payment_the_database_cannot_take_is_503_try_again_and_the_retry_books_it_once(system):
    n = set_up(system)
    client = TestClient(create_app(system), raise_server_exceptions=False)
    client.get("/healthz")  # the channel is read once and cached: the outage hits the booking itself
    working = system.engine
    system.engine = unreachable(working)
    headers, body = n.wallet.payment(path=PATH, txn_id="T-FAILOVER-1", account_no=ACCOUNT_NO, amount_fen=5000, at=system.clock.now())
    refused = client.post(PATH, content=body, headers=headers)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "TRY_AGAIN_LATER" and refused.headers["retry-after"] == "5"

    system.engine = working  # the standby is primary now; the wallet sends the same payment again
    headers, body = n.wallet.payment(path=PATH, txn_id="T-FAILOVER-1", account_no=ACCOUNT_NO, amount_fen=5000, at=system.clock.now())
    taken = client.post(PATH, content=body, headers=headers)
    assert taken.status_code == 200 and taken.json()["duplicate"] is False, taken.text
    headers, body = n.wallet.payment(path=PATH, txn_id="T-FAILOVER-1", account_no=ACCOUNT_NO, amount_fen=5000, at=system.clock.now())
    again = client.post(PATH, content=body, headers=headers)
    assert again.json()["duplicate"] is True and again.json()["payment_id"] == taken.json()["payment_id"]
    with system.new_uow() as uow:
        assert len(uow.payments.list_for_account(ACCOUNT_NO, 10)) == 1
