"""What one channel notification costs the database, and the channel cache that saves a read.

A booked wallet payment is one transaction of a bounded number of statements: the channel and its
keys come from the process's cache, each row is written once. A key retired through this process is
refused at once; through another process, once that process's copy is channel_cache_ttl_s old.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import event

from gasworks.adapters.channels import BILL_PAYMENT_DECODERS, InboundRequest
from gasworks.adapters.db.repositories import ChannelCache
from gasworks.domain.channels import KeyPurpose, KeyStatus
from gasworks.domain.errors import IntakeRefused
from gasworks.services import channels as channel_admin
from gasworks.services.checks import check_ledger
from gasworks.services.notifications import load_channel, take_channel_payment
from tests.conftest import make_system
from tests.support import ACCOUNT_NO, WALLET_SECRET, balance_fen, credited_fen, set_up

PATH = "/v1/channels/wo-wallet/payments"
BOOKING_STATEMENTS_MAX = 12  # was 22 in 2 transactions before the channel cache and single writes


@contextmanager
def counted(engine) -> Iterator[dict[str, int]]:
    count = {"statements": 0, "transactions": 0, "pending": 0}

    def on_statement(_conn, _cursor, statement: str, *_rest) -> None:  # noqa: ANN001, ANN002
        count["transactions"] += count["pending"]
        count["pending"] = 0
        if not statement.startswith("BEGIN"):  # SQLite's BEGIN IMMEDIATE is how its transaction starts, not work
            count["statements"] += 1

    def on_begin(_conn) -> None:  # noqa: ANN001
        count["pending"] = 1

    event.listen(engine, "before_cursor_execute", on_statement)
    event.listen(engine, "begin", on_begin)
    try:
        yield count
    finally:
        event.remove(engine, "before_cursor_execute", on_statement)
        event.remove(engine, "begin", on_begin)


def notify(system, wallet, txn_id: str, amount_fen: int):
    headers, body = wallet.payment(path=PATH, txn_id=txn_id, account_no=ACCOUNT_NO, amount_fen=amount_fen, at=system.clock.now())
    request = InboundRequest("POST", PATH, {k.lower(): v for k, v in headers.items()}, body)
    channel = load_channel("wo-wallet", system.new_uow)
    return take_channel_payment(channel, request, BILL_PAYMENT_DECODERS, system.new_booking_uow, skew_s=300)


def test_a_booked_notification_is_one_transaction_of_a_bounded_number_of_statements(system):
    n = set_up(system)
    notify(system, n.wallet, "RT-1", 5_000)  # the first fills the channel cache
    with counted(system.engine) as count:
        taken = notify(system, n.wallet, "RT-2", 5_000)
    assert taken.state.value == "booked"
    assert count["transactions"] == 1
    assert count["statements"] <= BOOKING_STATEMENTS_MAX
    assert credited_fen(system, ACCOUNT_NO) == 10_000
    assert balance_fen(system, ACCOUNT_NO) >= 0
    assert check_ledger(system.new_uow()).ok


def test_a_key_retired_through_another_process_is_refused_once_the_cached_copy_is_ttl_old(database_url, clock):
    serving, admin = make_system(database_url, clock), make_system(database_url, clock)  # two processes' worth
    elapsed_s = [0.0]
    serving.channel_cache = ChannelCache(5.0, monotonic=lambda: elapsed_s[0])
    n = set_up(admin)
    assert notify(serving, n.wallet, "RT-OLD-1", 1_000).state.value == "booked"  # cached with key wo-1
    channel_admin.add_key(channel_id="wo-wallet", purpose=KeyPurpose.HMAC_SECRET, key_id="wo-2", material=WALLET_SECRET + "2", uow=admin.new_uow(), actor="test")
    channel_admin.retire_key(channel_id="wo-wallet", key_id="wo-1", uow=admin.new_uow(), actor="test")
    elapsed_s[0] = 4.9
    assert [k.status for k in load_channel("wo-wallet", serving.new_uow).keys if k.key_id == "wo-1"] == [KeyStatus.ACTIVE]  # bounded staleness
    elapsed_s[0] = 5.0
    with pytest.raises(IntakeRefused) as refused:
        notify(serving, n.wallet, "RT-OLD-2", 1_000)
    assert refused.value.code == "UNKNOWN_KEY"
    serving.engine.dispose()
    admin.engine.dispose()


def test_a_key_retired_through_this_process_is_refused_at_once(system):
    n = set_up(system)
    assert notify(system, n.wallet, "RT-HERE-1", 1_000).state.value == "booked"
    channel_admin.add_key(channel_id="wo-wallet", purpose=KeyPurpose.HMAC_SECRET, key_id="wo-2", material=WALLET_SECRET + "2", uow=system.new_uow(), actor="test")
    channel_admin.retire_key(channel_id="wo-wallet", key_id="wo-1", uow=system.new_uow(), actor="test")
    with pytest.raises(IntakeRefused) as refused:
        notify(system, n.wallet, "RT-HERE-2", 1_000)
    assert refused.value.code == "UNKNOWN_KEY"
