"""A primary lost mid-booking (pg_auto_failover's failover, a dropped connection): gasworks finds
the primary by a multi-host URL, and a booking cut off is taken again through the same idempotent
path, so the retry books nothing twice. The cluster kill itself is a drill (scripts/pg-failover),
not a CI test; here the cut is made on the real PostgreSQL by terminating the booking's backend."""

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, make_url, text
from sqlalchemy.exc import OperationalError

from gasworks.adapters.db.engine import make_engine, sqlalchemy_url
from gasworks.adapters.db.unit_of_work import SqlUnitOfWork
from gasworks.config import Settings
from gasworks.entrypoints.api.app import create_app
from gasworks.services import notifications
from gasworks.services.checks import check_ledger
from gasworks.services.intake import accept_payment
from tests.conftest import make_system
from tests.support import ACCOUNT_NO, set_up

PATH = "/v1/channels/wo-wallet/payments"


def test_libpq_multi_host_urls_become_sqlalchemy_urls_with_every_host_in_order():
    printed = "postgres://autoctl@node1:6001,node2:6002/gasworks?target_session_attrs=read-write&sslmode=prefer"
    assert sqlalchemy_url(printed) == ("postgresql+psycopg://autoctl@/gasworks?host=node1:6001&host=node2:6002&target_session_attrs=read-write&sslmode=prefer")
    assert sqlalchemy_url("postgresql://postgres@127.0.0.1:5432/test") == "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    assert sqlalchemy_url("sqlite:///gasworks.db") == "sqlite:///gasworks.db"


def test_a_multi_host_url_whose_first_host_is_dead_books_on_the_one_that_answers(postgres_only_url, clock):
    live = make_url(postgres_only_url)
    multi_host = f"postgres://{live.username}@127.0.0.1:9,{live.host}:{live.port}/{live.database}?target_session_attrs=read-write"
    with make_engine(multi_host).connect() as connection:
        assert connection.execute(text("SELECT pg_is_in_recovery()")).scalar_one() is False
    system = make_system(multi_host, clock)
    n = set_up(system)
    client = TestClient(create_app(system), raise_server_exceptions=False)
    headers, body = n.wallet.payment(path=PATH, txn_id="T-MULTI-HOST", account_no=ACCOUNT_NO, amount_fen=5000, at=clock.now())
    taken = client.post(PATH, content=body, headers=headers)
    assert taken.status_code == 200 and taken.json()["status"] == "booked", taken.text
    system.engine.dispose()


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def test_a_booking_whose_connection_is_killed_mid_transaction_is_taken_again_and_booked_once(postgres_only_url, clock):
    system = make_system(postgres_only_url, clock)
    n = set_up(system)
    client = TestClient(create_app(system), raise_server_exceptions=False)
    client.get("/healthz")
    killed: list[int] = []

    @event.listens_for(system.engine, "before_cursor_execute")
    def kill_at_first_payment_insert(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if not killed and statement.lstrip().upper().startswith("INSERT INTO PAYMENTS"):
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            with psycopg.connect(_libpq(postgres_only_url), autocommit=True) as other:  # as a dying primary would
                other.execute("SELECT pg_terminate_backend(%s)", (pid,))
            killed.append(pid)

    headers, body = n.wallet.payment(path=PATH, txn_id="T-CUT-MID", account_no=ACCOUNT_NO, amount_fen=5000, at=clock.now())
    taken = client.post(PATH, content=body, headers=headers)
    assert killed, "the cut happened"
    assert taken.status_code == 200 and taken.json()["status"] == "booked" and taken.json()["duplicate"] is False, taken.text
    with system.new_uow() as uow:
        assert [p.id for p in uow.payments.list_for_account(ACCOUNT_NO, 10)] == [taken.json()["payment_id"]]
    assert check_ledger(system.new_uow()).ok
    system.engine.dispose()


def test_a_booking_committed_whose_answer_was_lost_is_found_by_the_retry_not_booked_again(postgres_only_url, clock, monkeypatch):
    """The worst cut: COMMIT reached the primary, the connection died before its answer. The rerun
    finds the nonce used by the run that was cut and answers with the payment already booked."""
    system = make_system(postgres_only_url, clock)
    n = set_up(system)
    client = TestClient(create_app(system), raise_server_exceptions=False)
    client.get("/healthz")
    real_commit = SqlUnitOfWork.commit
    lost: list[bool] = []

    def commit_then_lose_the_answer(self):  # noqa: ANN001, ANN202
        real_commit(self)
        if not lost:
            lost.append(True)
            raise OperationalError("COMMIT", {}, psycopg.OperationalError("server closed the connection unexpectedly"))

    monkeypatch.setattr(SqlUnitOfWork, "commit", commit_then_lose_the_answer)
    headers, body = n.wallet.payment(path=PATH, txn_id="T-CUT-AFTER", account_no=ACCOUNT_NO, amount_fen=5000, at=clock.now())
    taken = client.post(PATH, content=body, headers=headers)
    assert lost and taken.status_code == 200, taken.text
    assert taken.json()["status"] == "booked" and taken.json()["duplicate"] is True
    with system.new_uow() as uow:
        assert [p.id for p in uow.payments.list_for_account(ACCOUNT_NO, 10)] == [taken.json()["payment_id"]]
    assert check_ledger(system.new_uow()).ok
    system.engine.dispose()


@pytest.mark.parametrize("attempts", [1, 3])
def test_when_the_database_stays_away_the_caller_hears_503_after_the_bounded_retries(postgres_only_url, clock, monkeypatch, attempts):
    system = make_system(postgres_only_url, clock)
    system.settings = Settings(database_url=postgres_only_url, cut_retry_attempts=attempts, cut_retry_backoff_ms=0)
    n = set_up(system)
    client = TestClient(create_app(system), raise_server_exceptions=False)
    client.get("/healthz")
    runs: list[int] = []

    def always_cut(self):  # noqa: ANN001, ANN202
        raise OperationalError("COMMIT", {}, psycopg.OperationalError("connection refused"))

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        runs.append(1)
        return accept_payment(*args, **kwargs)

    monkeypatch.setattr(SqlUnitOfWork, "commit", always_cut)
    monkeypatch.setattr(notifications, "accept_payment", counted)
    headers, body = n.wallet.payment(path=PATH, txn_id="T-CUT-ALWAYS", account_no=ACCOUNT_NO, amount_fen=5000, at=clock.now())
    refused = client.post(PATH, content=body, headers=headers)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "TRY_AGAIN_LATER"
    assert len(runs) == attempts
    monkeypatch.undo()
    with system.new_uow() as uow:
        assert uow.payments.list_for_account(ACCOUNT_NO, 10) == []
    system.engine.dispose()
