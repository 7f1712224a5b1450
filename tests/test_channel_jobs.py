"""The worker's calls to the channels against a local WeChat Pay stub over real HTTP that signs and
verifies as WeChat Pay does (and an Alipay one).

The jobs themselves (fixture `jobs`) run on the in-memory fakes (tests/fakes.py), SQLite and
PostgreSQL: the same assertions, with orders and channel messages handed to the services the API
calls. What a resident or a channel sees over HTTP, the CLI, and the running worker's own thread
(fixture `env`) stay on the two databases.
"""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from gasworks.adapters.channels import NOTIFY_DECODERS
from gasworks.adapters.meters.transport import LoopbackTransport
from gasworks.config import Settings
from gasworks.domain.channels import InboundRequest, KeyPurpose
from gasworks.domain.delivery import AlertKind
from gasworks.domain.outbound import JobKind, JobState
from gasworks.domain.payments import PaymentState
from gasworks.entrypoints.api.app import create_app
from gasworks.entrypoints.cli.common import out as cli_out
from gasworks.entrypoints.cli.main import app as cli
from gasworks.entrypoints.workers.channel_jobs import ChannelJobs
from gasworks.entrypoints.workers.processes import child_environment
from gasworks.entrypoints.workers.worker import Worker
from gasworks.services import channels as channel_admin
from gasworks.services import notifications, orders
from gasworks.services.checks import check_ledger
from gasworks.services.holds import HoldDecision, decide_hold
from gasworks.services.outbound import configure_gateway, refund_number
from gasworks.sim.statements import wechat_trade_bill
from gasworks.sim.stubs.wechatpay import WechatPayStub
from gasworks.sim.world import Collected
from tests.support import ACCOUNT_NO, WECHAT_MCHID, Channels, public_key_pem, rsa_private_key, served_in_thread, set_up

MERCHANT_SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
NOTIFY = "/v1/channels/wechat/notify"


@contextmanager
def wechat_pay_at_its_stub(system) -> Iterator[tuple[Channels, WechatPayStub]]:
    """set_up's channels and accounts, our merchant key, and WeChat Pay's API as a local stub the gateway calls."""
    notifiers = set_up(system)
    system.settings.statement_fetch_hour = system.settings.statement_late_hour = 23  # statement tests set their own hours
    channel_admin.add_key(channel_id="wechat", purpose=KeyPurpose.SIGNING_KEY, key_id=MERCHANT_SERIAL, material=rsa_private_key("merchant"), uow=system.new_uow(), actor="test")
    # The platform key that signs WeChat Pay's answers is the one its notifications are verified with.
    stub = WechatPayStub(
        mchid=WECHAT_MCHID, merchant_serial=MERCHANT_SERIAL, merchant_public_key_pem=public_key_pem(rsa_private_key("merchant")), now=system.clock.now,
        platform_private_key_pem=rsa_private_key("wechat"), platform_serial="PUB_KEY_ID_1",
    )  # fmt: skip
    with served_in_thread(stub.app()) as base_url:
        configure_gateway("wechat", base_url, uow=system.new_uow(), actor="test")
        yield notifiers, stub


def new_order(client, amount_fen=5000) -> str:
    response = client.post("/v1/orders", json={"channel_id": "wechat", "account_no": ACCOUNT_NO, "amount_fen": amount_fen, "holder_phone": "13812345678"})
    assert response.status_code == 201, response.text
    return response.json()["out_trade_no"]


class Services:
    """Orders and channel messages handed to the services the API calls: on any store."""

    def __init__(self, system) -> None:
        self.system = system

    def order(self, amount_fen=5000) -> str:
        resident = orders.ResidentProof(phone="13812345678")
        return orders.create_order(channel_id="wechat", account_no=ACCOUNT_NO, amount_fen=amount_fen, ceiling=self.system.payment_ceiling, uow=self.system.new_uow(), resident=resident).out_trade_no

    def notify(self, message: tuple[dict[str, str], bytes], channel_id="wechat") -> None:
        """Verified by the channel's own codec and taken, as at /v1/channels/{id}/notify; a refusal raises."""
        headers, body = message
        request = InboundRequest("POST", f"/v1/channels/{channel_id}/notify", {k.lower(): v for k, v in headers.items()}, body)
        channel = notifications.load_channel(channel_id, self.system.new_uow)
        notifications.take_channel_payment(channel, request, NOTIFY_DECODERS, self.system.new_uow, skew_s=self.system.settings.notification_clock_skew_s, ceiling=self.system.payment_ceiling)


class Http:
    """The same through the API."""

    def __init__(self, client) -> None:
        self.client = client

    def order(self, amount_fen=5000) -> str:
        return new_order(self.client, amount_fen)

    def notify(self, message: tuple[dict[str, str], bytes], channel_id="wechat") -> None:
        headers, body = message
        assert self.client.post(f"/v1/channels/{channel_id}/notify", content=body, headers=headers).status_code == 200


@pytest.fixture
def env(system):
    """Through the API, on SQLite and PostgreSQL."""
    with wechat_pay_at_its_stub(system) as (notifiers, stub):
        yield system, notifiers, stub, TestClient(create_app(system))


@pytest.fixture
def jobs(any_system):
    """The worker's jobs on the fakes and both databases (conftest's any_system); orders and
    notifications come in through the services."""
    with wechat_pay_at_its_stub(any_system) as (notifiers, stub):
        yield any_system, notifiers, stub, Services(any_system)


def job(system, kind, subject):
    with system.new_uow() as uow:
        return uow.outbound.job(kind, subject)


def open_alerts(system, kind):
    with system.new_uow() as uow:
        return uow.alerts.open_of_kind(kind, 100)


def payments_of_channel(system):
    with system.new_uow() as uow:
        return uow.payments.list_for_account(ACCOUNT_NO, 100)


def refunds_in_flight_fen(system) -> int:
    with system.new_uow() as uow:
        return -uow.ledger.entries_sum_fen("refunds")


# ---- order recovery -----------------------------------------------------------------------------


def test_an_order_paid_without_notification_is_booked_once_even_when_the_notification_comes_too(env):
    system, n, stub, client = env
    trade = new_order(client)
    txn = stub.pay(trade, 5000)
    jobs = ChannelJobs(system)
    assert jobs.run_once().booked == 0  # the notification gets ten minutes first
    system.clock.advance(601)
    assert jobs.run_once().booked == 1
    assert len(payments_of_channel(system)) == 1
    headers, body = n.wechat.notification(out_trade_no=trade, transaction_id=txn, amount_fen=5000, at=system.clock.now())
    assert client.post(NOTIFY, content=body, headers=headers).status_code == 200  # the late notification: acknowledged
    system.clock.advance(3600)
    assert jobs.run_once().booked == 0  # and the order is not asked about again
    [payment] = payments_of_channel(system)
    assert client.get(f"/o/{trade}", follow_redirects=False).headers["location"].split("?")[0].endswith(f"/p/{payment.id}")
    assert payment.channel_txn_id == txn and payment.amount_fen == 5000 and payment.state == PaymentState.BOOKED
    assert job(system, JobKind.ORDER_QUERY, trade).state == JobState.DONE
    assert check_ledger(system.new_uow()).ok
    with system.new_uow() as uow:
        assert uow.audit.count_actions("payment.recovered") == 1


def test_an_order_closed_at_the_channel_is_closed_and_says_so(env):
    system, _, stub, client = env
    trade = new_order(client)
    stub.set_state(trade, "CLOSED")
    system.clock.advance(601)
    assert ChannelJobs(system).run_once().closed == 1
    assert client.get(f"/v1/orders/{trade}").json()["state"] == "closed"
    page = client.get(f"/o/{trade}")
    assert page.status_code == 200 and "订单已关闭，未扣款" in page.text and "no money was taken" in page.text
    assert payments_of_channel(system) == []


def test_an_unpaid_order_is_asked_again_with_capped_backoff_remembered_across_restarts(jobs):
    system, _, stub, front = jobs
    trade = front.order()
    stub.set_state(trade, "NOTPAY")
    system.clock.advance(601)
    ChannelJobs(system).run_once()
    first = job(system, JobKind.ORDER_QUERY, trade)
    assert (first.tries, first.next_try_at) == (1, system.clock.now() + timedelta(seconds=60))
    calls = len(stub.calls)
    ChannelJobs(system).run_once()  # a restarted worker: not due yet, not asked
    assert len(stub.calls) == calls
    waits = []
    for _ in range(8):
        system.clock.move_to(job(system, JobKind.ORDER_QUERY, trade).next_try_at)
        ChannelJobs(system).run_once()
        current = job(system, JobKind.ORDER_QUERY, trade)
        waits.append(int((current.next_try_at - system.clock.now()).total_seconds()))
    assert waits == [120, 240, 480, 960, 1920, 3600, 3600, 3600]
    stub.pay(trade, 5000)
    system.clock.move_to(job(system, JobKind.ORDER_QUERY, trade).next_try_at)
    assert ChannelJobs(system).run_once().booked == 1


def test_a_channel_that_keeps_failing_raises_one_alert_and_is_still_retried(jobs):
    system, _, stub, front = jobs
    system.settings.channel_tries_before_alert = 3
    trade = front.order()
    stub.fail_next = 1000
    system.clock.advance(601)
    for _ in range(5):
        ChannelJobs(system).run_once()
        system.clock.move_to(job(system, JobKind.ORDER_QUERY, trade).next_try_at)
    [alert] = [a for a in open_alerts(system, AlertKind.CHANNEL_CALL_FAILING) if a.subject.startswith("order_query:")]
    assert alert.subject == f"order_query:{trade}" and "CHANNEL_ERROR" in alert.reason and job(system, JobKind.ORDER_QUERY, trade).tries == 5
    stub.fail_next = 0
    stub.pay(trade, 5000)
    assert ChannelJobs(system).run_once().booked == 1


def test_an_order_answer_that_does_not_verify_books_nothing(jobs):
    system, _, stub, front = jobs
    trade = front.order()
    stub.set_state(trade, "NOTPAY")
    stub.tamper = True  # NOTPAY turned into SUCCESS on the way
    system.clock.advance(601)
    report = ChannelJobs(system).run_once()
    assert report.booked == 0 and payments_of_channel(system) == []
    assert job(system, JobKind.ORDER_QUERY, trade).last_outcome.startswith("ANSWER_UNVERIFIED")


# ---- refunds ------------------------------------------------------------------------------------


def held_payment(system, n, stub, front) -> tuple[str, str]:
    """A WeChat payment for an order that does not exist here: held in suspense, then refunded by an operator."""
    txn = stub.pay("GWNOSUCHORDER0001", 5000)
    front.notify(n.wechat.notification(out_trade_no="GWNOSUCHORDER0001", transaction_id=txn, amount_fen=5000, at=system.clock.now()))
    with system.new_uow() as uow:
        [held] = uow.payments.list_in_state(PaymentState.HELD, 10)
    decide_hold(held.id, HoldDecision.REFUND, reason="no such order", uow=system.new_uow(), actor="operator")
    return held.id, txn


def payment_state(system, payment_id) -> PaymentState:
    with system.new_uow() as uow:
        return uow.payments.get(payment_id).state


def test_a_refund_is_called_retried_with_the_same_number_and_refunded_only_when_the_channel_confirms(jobs):
    system, n, stub, front = jobs
    payment_id, _ = held_payment(system, n, stub, front)
    assert refunds_in_flight_fen(system) == 5000
    stub.fail_next = 2  # the channel is down for the first two calls
    jobs = ChannelJobs(system)
    for _ in range(2):
        jobs.run_once()
        system.clock.move_to(job(system, JobKind.REFUND, payment_id).next_try_at)
    assert stub.refunds == {} and payment_state(system, payment_id) == PaymentState.REFUND_REQUESTED
    jobs.run_once()  # accepted, PROCESSING: still only requested
    [refund_no] = stub.refunds
    assert payment_state(system, payment_id) == PaymentState.REFUND_REQUESTED and refunds_in_flight_fen(system) == 5000
    assert job(system, JobKind.REFUND, payment_id).step == "requested"
    system.clock.move_to(job(system, JobKind.REFUND, payment_id).next_try_at)
    jobs.run_once()  # asked about, still processing
    assert payment_state(system, payment_id) == PaymentState.REFUND_REQUESTED
    stub.settle_refund(refund_no, "SUCCESS")
    system.clock.move_to(job(system, JobKind.REFUND, payment_id).next_try_at)
    assert jobs.run_once().refunds_confirmed == 1
    assert payment_state(system, payment_id) == PaymentState.REFUNDED and refunds_in_flight_fen(system) == 0
    assert len(stub.refunds) == 1 and set(stub.refund_calls) == {refund_no}
    with system.new_uow() as uow:
        assert refund_no == refund_number(uow.payments.get(payment_id))
    assert check_ledger(system.new_uow()).ok


def test_a_refund_confirmed_by_notification_first_is_not_confirmed_twice(jobs):
    system, n, stub, front = jobs
    payment_id, txn = held_payment(system, n, stub, front)
    ChannelJobs(system).run_once()
    front.notify(n.wechat.refund_notification(out_trade_no="GWNOSUCHORDER0001", transaction_id=txn, refund_fen=5000, total_fen=5000, at=system.clock.now()))
    assert payment_state(system, payment_id) == PaymentState.REFUNDED
    stub.settle_refund(next(iter(stub.refunds)), "SUCCESS")
    system.clock.advance(7200)
    assert ChannelJobs(system).run_once().refunds_confirmed == 0
    assert check_ledger(system.new_uow()).ok
    with system.new_uow() as uow:
        assert uow.audit.count_actions("refund.confirmed") == 1


@pytest.mark.parametrize("status", ["CLOSED", "ABNORMAL"])
def test_a_refund_the_channel_cannot_pay_is_an_alert_and_the_money_stays_in_flight(jobs, status):
    system, n, stub, front = jobs
    payment_id, _ = held_payment(system, n, stub, front)
    stub.refund_status_on_create = status
    assert ChannelJobs(system).run_once().refunds_failed == 1
    [alert] = open_alerts(system, AlertKind.REFUND_NOT_PAID)
    assert alert.subject == f"payment:{payment_id}"
    assert payment_state(system, payment_id) == PaymentState.REFUND_REQUESTED and refunds_in_flight_fen(system) == 5000
    assert job(system, JobKind.REFUND, payment_id).state == JobState.GAVE_UP


def test_a_refund_abnormal_notification_raises_the_alert_and_moves_no_money(env):
    system, n, stub, client = env
    payment_id, txn = held_payment(system, n, stub, Http(client))
    headers, body = n.wechat.refund_notification(out_trade_no="GWNOSUCHORDER0001", transaction_id=txn, refund_fen=5000, total_fen=5000, at=system.clock.now(), refund_status="ABNORMAL")
    assert client.post(NOTIFY, content=body, headers=headers).status_code == 200  # acknowledged: WeChat Pay stops
    [alert] = open_alerts(system, AlertKind.REFUND_NOT_PAID)
    assert alert.subject == f"payment:{payment_id}" and "ABNORMAL" in alert.reason
    assert payment_state(system, payment_id) == PaymentState.REFUND_REQUESTED and refunds_in_flight_fen(system) == 5000
    assert check_ledger(system.new_uow()).ok


# ---- statements ---------------------------------------------------------------------------------

DAY = date(2026, 11, 23)


@pytest.fixture
def statements_jobs(jobs):
    system = jobs[0]
    system.settings.statement_fetch_hour, system.settings.statement_late_hour = 10, 12
    return jobs


def paid_on_the_day(system, n, stub, front) -> Collected:
    trade = front.order()
    txn = stub.pay(trade, 5000)
    front.notify(n.wechat.notification(out_trade_no=trade, transaction_id=txn, amount_fen=5000, at=system.clock.now()))
    return Collected("wechat", txn, ACCOUNT_NO, 5000, system.clock.now(), out_trade_no=trade, reached_gasworks=True)


def test_the_worker_fetches_checks_imports_and_reconciles_yesterdays_statement_after_ten(statements_jobs):
    system, n, stub, front = statements_jobs  # START is 17:00 Beijing on the 23rd
    stub.bills[DAY.isoformat()] = wechat_trade_bill(DAY, [paid_on_the_day(system, n, stub, front)])
    system.clock.move_to(datetime(2026, 11, 24, 1, 30, tzinfo=UTC))  # 09:30 Beijing: too early
    assert ChannelJobs(system).run_once().statements_imported == 0
    system.clock.move_to(datetime(2026, 11, 24, 2, 5, tzinfo=UTC))  # 10:05 Beijing
    assert ChannelJobs(system).run_once().statements_imported == 1
    done = job(system, JobKind.STATEMENT, f"wechat:{DAY}")
    assert done.state == JobState.DONE and "sha1 hash_value" in done.last_outcome and "verdict clean" in done.last_outcome
    system.clock.advance(3600)
    assert ChannelJobs(system).run_once().statements_imported == 0  # once a day
    with system.new_uow() as uow:
        assert uow.audit.count_actions("statement.fetched") == 1


def test_a_worker_told_to_call_for_orders_only_leaves_the_statements_to_another(statements_jobs):
    system, n, stub, front = statements_jobs
    stub.bills[DAY.isoformat()] = wechat_trade_bill(DAY, [paid_on_the_day(system, n, stub, front)])
    system.clock.move_to(datetime(2026, 11, 24, 2, 5, tzinfo=UTC))  # 10:05 Beijing: due
    system.settings.channel_jobs = "orders"
    assert ChannelJobs(system).run_once().statements_imported == 0 and not any("tradebill" in call for call in stub.calls)
    system.settings.channel_jobs = "orders,statements"
    assert ChannelJobs(system).run_once().statements_imported == 1


def test_worker_processes_call_the_channels_from_the_first_only():
    settings = Settings(database_url="postgresql://x/y", channel_jobs="orders,statements")
    assert child_environment(settings, 1, base={})["GASWORKS_CHANNEL_JOBS"] == ""
    with pytest.raises(ValueError, match="channel jobs are orders, refunds, statements"):
        Settings(channel_jobs="orders,payouts")


def test_a_bill_whose_hash_does_not_match_is_not_imported_and_raises_an_alert(statements_jobs):
    system, n, stub, front = statements_jobs
    stub.bills[DAY.isoformat()] = wechat_trade_bill(DAY, [paid_on_the_day(system, n, stub, front)])
    stub.wrong_bill = True
    system.clock.move_to(datetime(2026, 11, 24, 2, 5, tzinfo=UTC))
    assert ChannelJobs(system).run_once().statements_imported == 0
    [alert] = open_alerts(system, AlertKind.STATEMENT_HASH_MISMATCH)
    assert alert.subject == f"statement:wechat:{DAY}"
    with system.new_uow() as uow:
        assert uow.audit.count_actions("statement.import") == 0
    stub.wrong_bill = False  # the next download is the right one
    system.clock.move_to(job(system, JobKind.STATEMENT, f"wechat:{DAY}").next_try_at)
    assert ChannelJobs(system).run_once().statements_imported == 1


def test_a_statement_not_available_by_the_late_hour_raises_an_alert_cleared_when_it_comes(statements_jobs):
    system, n, stub, front = statements_jobs
    collected = paid_on_the_day(system, n, stub, front)
    system.clock.move_to(datetime(2026, 11, 24, 2, 5, tzinfo=UTC))  # 10:05: not there, not late yet
    ChannelJobs(system).run_once()
    assert open_alerts(system, AlertKind.STATEMENT_LATE) == []
    assert job(system, JobKind.STATEMENT, f"wechat:{DAY}").last_outcome.startswith("STATEMENT_NOT_READY")
    system.clock.move_to(datetime(2026, 11, 24, 4, 1, tzinfo=UTC))  # 12:01
    ChannelJobs(system).run_once()
    [late] = open_alerts(system, AlertKind.STATEMENT_LATE)
    assert late.subject == f"statement:wechat:{DAY}"
    stub.bills[DAY.isoformat()] = wechat_trade_bill(DAY, [collected])
    system.clock.move_to(job(system, JobKind.STATEMENT, f"wechat:{DAY}").next_try_at)
    assert ChannelJobs(system).run_once().statements_imported == 1
    assert open_alerts(system, AlertKind.STATEMENT_LATE) == []


def test_statements_fetch_from_the_command_line(env, database_url):
    system, n, stub, client = env
    stub.bills[DAY.isoformat()] = wechat_trade_bill(DAY, [paid_on_the_day(system, n, stub, Http(client))])
    stub.now = lambda: datetime.now(UTC)  # the command runs on the real clock
    runner = CliRunner()
    result = runner.invoke(cli, ["statements", "fetch", "--channel", "wechat", "--date", DAY.isoformat(), "--database-url", database_url])
    assert result.exit_code == 0, result.output
    assert "1 lines imported" in result.output and "sha1 hash_value" in result.output and "verdict: clean" in result.output
    stub.wrong_bill = True
    again = runner.invoke(cli, ["statements", "fetch", "--channel", "wechat", "--date", DAY.isoformat(), "--database-url", database_url])
    assert again.exit_code == 2 and "STATEMENT_HASH_MISMATCH" in again.output
    missing = runner.invoke(cli, ["statements", "fetch", "--channel", "wechat", "--date", "2026-11-30", "--database-url", database_url])
    assert missing.exit_code == 2 and "STATEMENT_NOT_READY" in missing.output


def test_the_running_worker_asks_the_channel_on_its_own(env):
    system, _, stub, client = env
    trade = new_order(client)
    stub.pay(trade, 5000)
    system.clock.advance(601)
    system.settings.channel_jobs_interval_s = 1
    stop = threading.Event()
    worker = threading.Thread(target=Worker(system, LoopbackTransport()).run, args=(stop,), daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while not payments_of_channel(system) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        worker.join(timeout=15)
    [payment] = payments_of_channel(system)
    assert payment.out_trade_no == trade and payment.state == PaymentState.BOOKED


def test_gateway_configuration_from_the_command_line(env, database_url, tmp_path, monkeypatch):
    system, _, stub, client = env
    monkeypatch.setattr(cli_out, "width", 200)  # the table whole, as on an operator's wide terminal
    runner = CliRunner()
    bad = runner.invoke(cli, ["channels", "gateway", "wechat", "--base-url", "ftp://example.cn", "--database-url", database_url])
    assert bad.exit_code == 2 and "INVALID_URL" in bad.output
    public = tmp_path / "not_a_private_key.pem"
    public.write_text(stub.platform_public_key_pem)
    refused = runner.invoke(cli, ["channels", "add-key", "wechat", "--purpose", "sign", "--key-id", "X", "--file", str(public), "--database-url", database_url])
    assert refused.exit_code == 2 and "INVALID_KEY" in refused.output
    trade = new_order(client)
    stub.set_state(trade, "NOTPAY")
    system.clock.advance(601)
    ChannelJobs(system).run_once()
    listed = runner.invoke(cli, ["channels", "jobs", "--kind", "order_query", "--database-url", database_url])
    assert listed.exit_code == 0 and trade in listed.output and "not_paid" in listed.output


# ---- Alipay through the same jobs ---------------------------------------------------------------


def test_an_alipay_refund_goes_through_the_worker_to_the_alipay_stub_and_is_refunded_once(any_system):
    """Refunds end to end on Alipay: decided → the worker's refund call (signed RSA2, out_request_no =
    our refund number) → refunded once Alipay says the money went back (fund_change=Y), and asked
    for no more after that."""
    from gasworks.sim.stubs.alipay_gateway import AlipayGatewayStub

    system = any_system
    n = set_up(system)
    channel_admin.add_key(channel_id="alipay", purpose=KeyPurpose.SIGNING_KEY, key_id="app-key-1", material=rsa_private_key("merchant"), uow=system.new_uow(), actor="test")
    with AlipayGatewayStub(app_id=n.alipay.app_id, app_public_key_pem=public_key_pem(rsa_private_key("merchant")), alipay_private_key_pem=rsa_private_key("alipay"), now=system.clock.now) as stub:
        configure_gateway("alipay", stub.gateway_url, uow=system.new_uow(), actor="test")
        stub.create_trade("GWNOSUCHORDER0002", 5000)
        trade_no = stub.pay("GWNOSUCHORDER0002", at=system.clock.now()).trade_no
        Services(system).notify(n.alipay.notification(out_trade_no="GWNOSUCHORDER0002", trade_no=trade_no, amount_fen=5000, at=system.clock.now()), channel_id="alipay")
        with system.new_uow() as uow:
            [held] = uow.payments.list_in_state(PaymentState.HELD, 10)
        decide_hold(held.id, HoldDecision.REFUND, reason="no such order", uow=system.new_uow(), actor="operator")
        assert refunds_in_flight_fen(system) == 5000

        ChannelJobs(system).run_once()  # Alipay answers fund_change=Y: the money went back, so it is refunded now
        assert payment_state(system, held.id) == PaymentState.REFUNDED and refunds_in_flight_fen(system) == 0
        [request] = [biz for method, biz in stub.requests if method == "alipay.trade.refund"]
        with system.new_uow() as uow:
            assert request["out_request_no"] == refund_number(uow.payments.get(held.id)) and request["refund_amount"] == "50.00"
        assert stub.trades["GWNOSUCHORDER0002"].refunded_fen == 5000
        ChannelJobs(system).run_once()  # nothing left to do: no second refund call
        assert [m for m in stub.calls if m == "alipay.trade.refund"] == ["alipay.trade.refund"]
    assert check_ledger(system.new_uow()).ok
