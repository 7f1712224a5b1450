"""Exactly once under concurrency, on real PostgreSQL, through a real HTTP server."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from gasworks.entrypoints.api.app import create_app
from gasworks.services.checks import check_ledger
from tests.conftest import make_system
from tests.support import ACCOUNT_NO, credited_fen, served_in_thread, set_up

PARALLEL = 16


@pytest.fixture
def served(postgres_only_url, clock):
    system = make_system(postgres_only_url, clock)
    notifiers = set_up(system)
    with served_in_thread(create_app(system)) as base_url:
        yield system, notifiers, base_url
    system.engine.dispose()


def in_parallel(requests: list) -> list[httpx.Response]:
    barrier = threading.Barrier(len(requests))

    def send(request):
        barrier.wait()  # release them together so they really race
        with httpx.Client(timeout=30) as client:
            return client.send(request)

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(send, requests))


def test_concurrent_duplicate_wallet_payments_book_exactly_once(served):
    system, n, base = served
    path = "/v1/channels/wo-wallet/payments"
    requests = []
    for _ in range(PARALLEL):
        headers, body = n.wallet.payment(path=path, txn_id="WO-RACE-1", account_no=ACCOUNT_NO, amount_fen=3000, at=system.clock.now())
        requests.append(httpx.Request("POST", base + path, headers=headers, content=body))
    replies = in_parallel(requests)
    assert [r.status_code for r in replies] == [200] * PARALLEL
    assert len({r.json()["payment_id"] for r in replies}) == 1
    assert sorted(r.json()["duplicate"] for r in replies) == [False] + [True] * (PARALLEL - 1)
    assert credited_fen(system, ACCOUNT_NO) == 3000
    assert check_ledger(system.new_uow()).ok


def test_concurrent_wechat_notifications_for_one_order_book_it_once(served):
    system, n, base = served
    with httpx.Client(base_url=base) as client:
        trade = client.post("/v1/orders", json={"channel_id": "wechat", "account_no": ACCOUNT_NO, "amount_fen": 8800, "holder_name": "张三丰"}).json()["out_trade_no"]
    requests = []
    for i in range(PARALLEL):
        # Half are retries of one transaction, half are other transactions claiming the same order.
        txn = "4200009999" if i % 2 == 0 else f"42000100{i:02d}"
        headers, body = n.wechat.notification(out_trade_no=trade, transaction_id=txn, amount_fen=8800, at=system.clock.now())
        requests.append(httpx.Request("POST", base + "/v1/channels/wechat/notify", headers=headers, content=body))
    replies = in_parallel(requests)
    assert [r.status_code for r in replies] == [200] * PARALLEL
    assert credited_fen(system, ACCOUNT_NO) == 8800  # the order is paid once
    report = check_ledger(system.new_uow())
    assert report.ok
    booked, held = report.payments_by_state.get("booked", (0, 0)), report.payments_by_state.get("held", (0, 0))
    assert booked == (1, 8800)
    assert held == (PARALLEL // 2, 8800 * PARALLEL // 2)  # every other transaction is in suspense, none lost


def test_several_workers_deliver_every_purchase_once_in_order(postgres_only_url, clock):
    """Four workers on one PostgreSQL: SKIP LOCKED keeps them off each other's meters."""
    from gasworks.adapters.meters.transport import LoopbackTransport
    from gasworks.domain.accounts import MeterKind
    from gasworks.domain.channels import PaymentNotice
    from gasworks.entrypoints.workers.worker import Worker
    from gasworks.services import accounts, meter_keys
    from gasworks.services.intake import accept_payment
    from gasworks.sim.meter import SimulatedMeter

    system = make_system(postgres_only_url, clock)
    set_up(system)
    transport = LoopbackTransport()
    meters = []
    for i in range(20):
        serial = f"{10_000_000_000_000 + i:014d}"
        accounts.open_account(accounts.OpenAccount(f"43020000{i:02d}", "李四", "", "华新苑", "G-02", "13900000000", serial, MeterKind.IOT), system.new_uow(), actor="test")
        meter = SimulatedMeter(serial)
        meter.install_key(meter_keys.export_key(serial, system.new_uow(), actor="test"))
        transport.attach(serial, meter.on_downlink)
        meters.append(meter)
    for round_ in range(3):
        for i in range(20):
            accept_payment(PaymentNotice("wo-wallet", f"C{round_}-{i}", 2_000 + round_, None, account_no=f"43020000{i:02d}"), system.new_uow())
    for meter in meters:
        transport.send_uplink(meter.serial, meter.report(clock.now()))
    workers = [Worker(system, transport) for _ in range(4)]

    def work(worker: Worker) -> None:
        idle = 0
        while idle < 20:
            idle = idle + 1 if worker.run_once(wait_s=0.01) == 0 else 0

    with ThreadPoolExecutor(len(workers)) as pool:
        list(pool.map(work, workers))
    for meter in meters:
        assert [seq for seq, _ in meter.applied] == [1, 2, 3], meter.serial
        assert len(meter.frames_seen) == 3, f"{meter.serial} was sent {len(meter.frames_seen)} frames for 3 purchases"
    assert check_ledger(system.new_uow()).ok
    system.engine.dispose()


def test_a_booking_wakes_a_listening_worker_at_once_instead_of_at_its_next_poll(postgres_only_url, clock):
    """The worker polls every 30 s here; only PostgreSQL's NOTIFY from the booking can make it send in time."""
    from gasworks.adapters.meters.transport import LoopbackTransport
    from gasworks.bootstrap import bootstrap
    from gasworks.config import Settings
    from gasworks.domain.delivery import CommandState
    from gasworks.entrypoints.workers.worker import Worker
    from tests.delivery_rig import Rig

    system = bootstrap(Settings(database_url=postgres_only_url, worker_poll_interval_s=30, watchdog_interval_s=10**9), clock=clock)
    set_up(system)
    rig = Rig(system, LoopbackTransport())
    rig.wake()
    rig.settle()  # the meter reported: it listens for the next 60 s (virtual time stands still)
    stop = threading.Event()
    worker = Worker(system, rig.transport)
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        time.sleep(1.0)  # the worker is now waiting, and listening
        paid = rig.pay(10_000)
        deadline = time.monotonic() + 5
        while rig.orders(paid.payment_id)[0].state != CommandState.APPLIED:
            assert time.monotonic() < deadline, "the worker was not woken by the booking"
            time.sleep(0.05)
    finally:
        stop.set()
        rig.transport.uplinks.nudge()
        thread.join(timeout=10)
        system.engine.dispose()
