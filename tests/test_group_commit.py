"""Group commit on real PostgreSQL: members share one COMMIT, each in its own savepoint.

The group's window runs on a clock the test moves, so the members are in one group by
construction, not by luck of timing; everything else (savepoints, unique keys, the COMMIT and its
failure) is the real server's.
"""

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select, text

from gasworks.adapters.db import tables as t
from gasworks.adapters.db.group_commit import GroupCommit, GroupCommitFailed
from gasworks.domain.channels import PaymentNotice
from gasworks.domain.errors import InvalidInput
from gasworks.services.checks import check_ledger
from gasworks.services.intake import accept_payment
from tests.conftest import make_system
from tests.support import ACCOUNT_NO, OTHER_ACCOUNT_NO, credited_fen, set_up

WAIT_S = 20


class SteppedClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def grouped(postgres_only_url, clock):
    system = make_system(postgres_only_url, clock)
    set_up(system)
    stepped = SteppedClock()
    group_commit = GroupCommit(system.engine, window_s=0.05, monotonic=stepped)

    def new_uow():
        uow = system.new_uow()
        uow.group_commit = group_commit
        return uow

    yield system, group_commit, stepped, new_uow
    system.engine.dispose()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def in_one_group(group_commit: GroupCommit, stepped: SteppedClock, calls: list[Callable[[], object]], *, before_commit: Callable[[], None] = lambda: None) -> list:
    """Run the calls concurrently; close the window once all have finished their turns."""

    def outcome(call: Callable[[], object]) -> object:
        try:
            return call()
        except Exception as error:  # noqa: BLE001 - the test inspects what each caller got
            return error

    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(outcome, call) for call in calls]
        wait_until(lambda: group_commit.open_group is not None and group_commit.open_group.finished == len(calls), "members did not finish their turns")
        assert not any(f.done() for f in futures), "a member was answered before the COMMIT"
        before_commit()
        stepped.now_s += 1.0  # the window closes: the last member sends the COMMIT
        return [f.result(WAIT_S) for f in futures]


def notice(txn: str, amount_fen: int, account_no: str = ACCOUNT_NO) -> PaymentNotice:
    return PaymentNotice("wo-wallet", txn, amount_fen, None, account_no=account_no, replay_nonce=f"nonce-{txn}-{amount_fen}")


def payments_in_database(system) -> int:
    with system.engine.connect() as c:
        return c.execute(select(func.count()).select_from(t.payments)).scalar_one()


def test_a_failing_member_rolls_back_alone_and_the_others_are_committed(grouped):
    system, group_commit, stepped, new_uow = grouped
    ceiling = system.payment_ceiling.fen_max
    calls = [lambda i=i: accept_payment(notice(f"G-{i}", 1_000 + i, ACCOUNT_NO if i % 2 else OTHER_ACCOUNT_NO), new_uow(), refuse_above_ceiling=True) for i in range(5)]
    calls.append(lambda: accept_payment(notice("G-TOO-MUCH", ceiling + 1), new_uow(), refuse_above_ceiling=True))
    outcomes = in_one_group(group_commit, stepped, calls)
    assert group_commit.groups_opened == 1
    assert isinstance(outcomes[-1], InvalidInput) and outcomes[-1].code == "AMOUNT_ABOVE_LIMIT"
    assert [o.state.value for o in outcomes[:-1]] == ["booked"] * 5
    assert payments_in_database(system) == 5
    with system.engine.connect() as c:  # its nonce went with its savepoint: the channel may send it again
        assert c.execute(select(func.count()).select_from(t.used_nonces).where(t.used_nonces.c.nonce.like("nonce-G-TOO-MUCH%"))).scalar_one() == 0
    assert credited_fen(system, ACCOUNT_NO) + credited_fen(system, OTHER_ACCOUNT_NO) == sum(1_000 + i for i in range(5))
    assert check_ledger(system.new_uow()).ok


def test_a_duplicate_inside_one_group_is_booked_once(grouped):
    system, group_commit, stepped, new_uow = grouped
    calls = [lambda: accept_payment(notice("G-TWICE", 2_500), new_uow()), lambda: accept_payment(PaymentNotice("wo-wallet", "G-TWICE", 2_500, None, account_no=ACCOUNT_NO, replay_nonce="nonce-retry"), new_uow())]
    first, second = in_one_group(group_commit, stepped, calls)
    assert group_commit.groups_opened == 1
    assert first.payment_id == second.payment_id
    assert sorted([first.duplicate, second.duplicate]) == [False, True]
    assert payments_in_database(system) == 1
    assert credited_fen(system, ACCOUNT_NO) == 2_500
    assert check_ledger(system.new_uow()).ok


def test_when_the_shared_commit_fails_no_member_is_acknowledged_and_nothing_is_written(grouped):
    system, group_commit, stepped, new_uow = grouped
    calls = [lambda i=i: accept_payment(notice(f"G-LOST-{i}", 3_000 + i), new_uow()) for i in range(3)]

    def kill_the_groups_connection() -> None:
        group = group_commit.open_group
        assert group is not None
        pid = group.connection.connection.dbapi_connection.info.backend_pid
        with system.engine.connect() as c:
            c.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    outcomes = in_one_group(group_commit, stepped, calls, before_commit=kill_the_groups_connection)
    assert all(isinstance(o, GroupCommitFailed) for o in outcomes), outcomes
    system.engine.dispose()  # the pool may still hold the killed connection
    assert payments_in_database(system) == 0
    assert credited_fen(system, ACCOUNT_NO) == 0
    assert check_ledger(system.new_uow()).ok


def test_members_take_turns_so_concurrent_bookings_of_one_meter_keep_its_serials(grouped):
    """Ten payments for one account in one group: ten purchases, serials 1..10, one balance."""
    system, group_commit, stepped, new_uow = grouped
    calls = [lambda i=i: accept_payment(notice(f"G-SAME-{i}", 1_000), new_uow()) for i in range(10)]
    outcomes = in_one_group(group_commit, stepped, calls)
    assert all(o.state.value == "booked" for o in outcomes)
    with system.engine.connect() as c:
        serials = sorted(c.execute(select(t.meter_commands.c.purchase_seq).where(t.meter_commands.c.account_no == ACCOUNT_NO)).scalars())
    assert serials == list(range(1, 11))
    assert credited_fen(system, ACCOUNT_NO) == 10_000
    assert check_ledger(system.new_uow()).ok


def test_group_commit_is_off_unless_configured_and_only_on_postgresql(postgres_only_url, clock, tmp_path):
    from gasworks.bootstrap import bootstrap
    from gasworks.config import Settings

    assert make_system(postgres_only_url, clock).new_booking_uow().group_commit is None
    on = bootstrap(Settings(database_url=postgres_only_url, group_commit_ms=2), clock=clock)
    assert on.new_booking_uow().group_commit is on.group_commit is not None
    assert on.new_uow().group_commit is None  # only the booking of a notification is grouped
    sqlite = bootstrap(Settings(database_url=f"sqlite:///{tmp_path / 'g.db'}", group_commit_ms=2), clock=clock)
    assert sqlite.new_booking_uow().group_commit is None
