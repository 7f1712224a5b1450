"""One contract for the repositories, run against the in-memory fakes, SQLite and PostgreSQL.

The service tests on fakes (tests/test_services_on_fakes.py) are only as true as the fakes: each
behaviour a use case relies on (a key taken once, a balance from its entries, a payment's life-cycle
transaction once, an order paid once, commands in the order they reach the meter, an alert raised
once) is asserted here in the same words for all three. A fake that drifts from SQL fails here.
"""

import csv
import inspect
import shutil
from collections.abc import Callable
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from gasworks.domain.access import ApiKeyRecord
from gasworks.domain.accounts import Customer, CustomerClass, Meter, MeterKind
from gasworks.domain.carriers import CarrierDevice, CarrierPlatform, PlatformCommand, PlatformCommandStatus
from gasworks.domain.channels import Channel, ChannelKey, ChannelKind, KeyPurpose, KeyStatus
from gasworks.domain.delivery import AlertKind, CommandState, LinkState, MeterModel, credit_order, valve_command
from gasworks.domain.errors import DuplicateKey
from gasworks.domain.kiosks import Kiosk
from gasworks.domain.ledger import DELIVERY, SUSPENSE, LedgerAccountKind, TransactionKind, clearing_account, prepaid_account, transfer
from gasworks.domain.meter_security import COUNTER_MAX, DEFAULT_METER_MODEL, MeterFrameSecurity
from gasworks.domain.outbound import JobKind, JobState, OutboundJob
from gasworks.domain.payments import OrderState, Payment, PaymentOrder, PaymentState
from gasworks.domain.statements import Discrepancy, DiscrepancyClass, DiscrepancyState, LineStatus, StatementLine
from gasworks.domain.tariffs import Tariff, Tier
from gasworks.services import carrier_ports, outbound_store, ports
from gasworks.services.unit_of_work import UnitOfWork
from tests.conftest import START, make_system
from tests.fakes import FakeSystem

ACCOUNT = "4301000001"
OTHER = "4301000002"
SERIAL = "00000000000001"
OTHER_SERIAL = "00000000000002"
UnitsOfWork = Callable[[], Any]  # a FakeUnitOfWork or an SqlUnitOfWork, each a fresh one


@pytest.fixture(params=["fake", "sqlite", "postgres"])
def new_uow(request: pytest.FixtureRequest, tmp_path, clock) -> UnitsOfWork:
    """A factory of units of work over an empty store of the kind named; a wallet channel and two accounts in it."""
    if request.param == "fake":
        new = FakeSystem(clock).new_uow
    else:
        if request.param == "sqlite":
            path = tmp_path / "gasworks.db"
            shutil.copy(request.getfixturevalue("sqlite_template"), path)
            url = f"sqlite:///{path}"
        else:
            url = request.getfixturevalue("postgres_only_url")
        system = make_system(url, clock)
        request.addfinalizer(system.engine.dispose)
        new = system.new_uow
    with new() as uow:
        uow.channels.add(Channel("wallet", ChannelKind.WALLET_HMAC, "Wallet"), START)
        uow.ledger.open_account(clearing_account("wallet"), LedgerAccountKind.CLEARING)
        for account_no, serial, kind in ((ACCOUNT, SERIAL, MeterKind.IOT), (OTHER, OTHER_SERIAL, MeterKind.CARD)):
            uow.customers.add(Customer(account_no, "张三", "1 栋", "华新苑", "G-01", "13812345678", CustomerClass.RESIDENTIAL, Meter(serial, kind), START))
            uow.ledger.open_account(prepaid_account(account_no), LedgerAccountKind.PREPAID)
        uow.commit()
    return new


def payment(txn: str, amount_fen: int = 1_000, *, pid: str | None = None, account_no: str = ACCOUNT, at=START) -> Payment:
    p = Payment.received(
        id=pid or f"pay_{txn}", channel_id="wallet", channel_txn_id=txn, amount_fen=amount_fen, account_no=account_no,
        out_trade_no=None, method="", paid_at=None, at=at,
    )  # fmt: skip
    p.move_to(PaymentState.VERIFIED, at, "verified")
    return p


def booking(p: Payment, kind: TransactionKind = TransactionKind.PAYMENT_BOOKED, credit: str = prepaid_account(ACCOUNT)):
    return transfer(kind, debit=clearing_account("wallet"), credit=credit, amount_fen=p.amount_fen, at=START, payment_id=p.id, memo=p.channel_txn_id)


# ---- the unit of work ------------------------------------------------------------------------------


def test_leaving_without_commit_keeps_nothing_and_a_commit_keeps_all(new_uow):
    with new_uow() as uow:
        uow.payments.claim(payment("T-ROLLED-BACK"))
        uow.nonces.claim("wallet", "n-1", START)
    with new_uow() as uow:
        assert uow.payments.get("pay_T-ROLLED-BACK") is None
        uow.nonces.claim("wallet", "n-1", START)  # not taken: the first claim rolled back
        uow.commit()
        uow.payments.claim(payment("T-AFTER-COMMIT"))  # after the commit, in the same block: not kept
    with new_uow() as uow:
        assert uow.payments.get("pay_T-AFTER-COMMIT") is None
        with pytest.raises(DuplicateKey):
            uow.nonces.claim("wallet", "n-1", START)


# ---- payments and nonces ---------------------------------------------------------------------------


def test_a_payment_is_claimed_once_per_channel_transaction_and_the_transaction_stays_usable(new_uow):
    first = payment("T-1", 1_000)
    with new_uow() as uow:
        uow.payments.claim(first)
        uow.payments.save_progress(first, events_already_saved=0)
        uow.commit()
    with new_uow() as uow:
        with pytest.raises(DuplicateKey):
            uow.payments.claim(payment("T-1", 9_000, pid="pay_other"))
        found = uow.payments.get_by_channel_txn("wallet", "T-1")  # still usable after the refusal
        assert found is not None and found.id == first.id and found.amount_fen == 1_000
        uow.nonces.claim("wallet", "after-duplicate", START)
        uow.commit()
    with new_uow() as uow:
        kept = uow.payments.get(first.id)
        assert kept == first, "the payment as claimed and saved, with its events in order"
        assert [e.state for e in kept.events] == [PaymentState.RECEIVED, PaymentState.VERIFIED]
        assert uow.payments.get("pay_other") is None
        assert uow.payments.get_by_channel_txn("wallet", "T-2") is None


def test_saved_progress_and_compare_and_set_transitions(new_uow):
    p = payment("T-3")
    with new_uow() as uow:
        uow.payments.claim(p)
        assert uow.payments.get(p.id).events == [], "events are written by save_progress, not by the claim"
        uow.payments.save_progress(p, events_already_saved=0)
        p.move_to(PaymentState.BOOKED, START, "booked")
        uow.payments.save_progress(p, events_already_saved=2)
        assert uow.payments.transition(p.id, PaymentState.BOOKED, PaymentState.REVERSED) is True
        assert uow.payments.transition(p.id, PaymentState.BOOKED, PaymentState.REVERSED) is False, "a second decision finds it moved on"
        assert uow.payments.transition("pay_nobody", PaymentState.BOOKED, PaymentState.REVERSED) is False
        uow.commit()
    with new_uow() as uow:
        stored = uow.payments.get(p.id)
        assert stored.state == PaymentState.REVERSED
        assert [e.state for e in stored.events] == [PaymentState.RECEIVED, PaymentState.VERIFIED, PaymentState.BOOKED]


def test_payments_are_listed_newest_first_for_an_account_and_oldest_first_by_state(new_uow):
    with new_uow() as uow:
        for n, (minutes, account) in enumerate([(5, ACCOUNT), (1, ACCOUNT), (3, OTHER), (3, ACCOUNT), (1, ACCOUNT)]):
            p = payment(f"T-L{n}", 100 * (n + 1), pid=f"pay_{n}", account_no=account, at=START + timedelta(minutes=minutes))
            uow.payments.claim(p)
            uow.payments.save_progress(p, 0)
        uow.commit()
    with new_uow() as uow:
        assert [p.id for p in uow.payments.list_for_account(ACCOUNT, 10)] == ["pay_0", "pay_3", "pay_1", "pay_4"], "received desc, then id"
        assert [p.id for p in uow.payments.list_for_account(ACCOUNT, 2)] == ["pay_0", "pay_3"]
        assert [p.id for p in uow.payments.list_in_state(PaymentState.VERIFIED, 10)] == ["pay_1", "pay_4", "pay_2", "pay_3", "pay_0"]
        assert uow.payments.list_in_state(PaymentState.BOOKED, 10) == []
        assert uow.payments.totals_by_state() == {"verified": (5, 1_500)}


def test_a_nonce_is_good_once_per_channel_until_forgotten(new_uow):
    with new_uow() as uow:
        uow.nonces.claim("wallet", "n-1", START)
        uow.nonces.claim("other-channel", "n-1", START)
        with pytest.raises(DuplicateKey):
            uow.nonces.claim("wallet", "n-1", START + timedelta(seconds=1))
        uow.nonces.claim("wallet", "n-2", START + timedelta(minutes=10))
        uow.commit()
    with new_uow() as uow:
        assert uow.nonces.forget_older_than(START + timedelta(minutes=5)) == 2
        uow.nonces.claim("wallet", "n-1", START + timedelta(minutes=10))
        with pytest.raises(DuplicateKey):
            uow.nonces.claim("wallet", "n-2", START + timedelta(minutes=10))


# ---- the ledger ------------------------------------------------------------------------------------


def test_balances_come_from_the_entries(new_uow):
    p = payment("T-L1", 10_000)
    with new_uow() as uow:
        uow.payments.claim(p)
        p.move_to(PaymentState.BOOKED, START)
        uow.payments.save_progress(p, 0)
        booked_id = uow.ledger.post(booking(p))
        uow.ledger.post(transfer(TransactionKind.PURCHASE, debit=prepaid_account(ACCOUNT), credit=DELIVERY, amount_fen=7_000, at=START, payment_id=p.id))
        assert uow.ledger.post(transfer(TransactionKind.PURCHASE, debit=prepaid_account(ACCOUNT), credit=DELIVERY, amount_fen=1_000, at=START, payment_id=p.id)) > booked_id
        uow.commit()
    with new_uow() as uow:
        assert uow.ledger.balance_fen(ACCOUNT) == 2_000
        assert uow.ledger.balance_fen(OTHER) == 0
        assert uow.ledger.entries_sum_fen(prepaid_account(ACCOUNT)) == -2_000
        assert uow.ledger.entries_sum_fen(clearing_account("wallet")) == 10_000
        assert uow.ledger.entries_sum_fen(DELIVERY) == -8_000
        assert uow.ledger.entries_sum_fen(SUSPENSE) == 0
        assert uow.ledger.purchases_fen(ACCOUNT) == 8_000
        assert uow.ledger.payment_net_fen(p.id) == 10_000, "its own life-cycle transactions only; purchases are not"
        assert uow.ledger.totals_by_kind() == {"clearing": 10_000, "prepaid": -2_000, "delivery": -8_000}
        assert uow.ledger.find_violations(10) == []
        assert uow.ledger.accounts_in_arrears() == (0, 0)
        with pytest.raises(LookupError):
            uow.ledger.entries_sum_fen(prepaid_account("4309999999"))


def test_a_payment_owns_each_life_cycle_transaction_once(new_uow):
    p = payment("T-O1", 5_000)
    p.move_to(PaymentState.BOOKED, START)
    p.move_to(PaymentState.REVERSED, START)
    with new_uow() as uow:
        uow.payments.claim(p)
        uow.payments.save_progress(p, 0)
        assert uow.ledger.post_once(booking(p)) is not None
        reversal = transfer(TransactionKind.PAYMENT_REVERSED, debit=prepaid_account(ACCOUNT), credit=clearing_account("wallet"), amount_fen=5_000, at=START, payment_id=p.id)
        assert uow.ledger.post_once(reversal) is not None
        assert uow.ledger.post_once(reversal) is None, "the second reversal is refused"
        assert uow.ledger.post_once(booking(p)) is None
        assert uow.ledger.balance_fen(ACCOUNT) == 0, "nothing of a refused one is written"
        assert uow.ledger.entries_sum_fen(clearing_account("wallet")) == 0
        purchase = transfer(TransactionKind.PURCHASE, debit=clearing_account("wallet"), credit=DELIVERY, amount_fen=100, at=START, payment_id=p.id)
        assert uow.ledger.post_once(purchase) is not None and uow.ledger.post_once(purchase) is not None, "purchases are not once per payment"
        unnamed = transfer(TransactionKind.PAYMENT_REVERSED, debit=SUSPENSE, credit=clearing_account("wallet"), amount_fen=1, at=START)
        assert uow.ledger.post_once(unnamed) is not None and uow.ledger.post_once(unnamed) is not None, "no payment named: nothing to be unique on"
        uow.commit()
    with new_uow() as uow:
        assert uow.ledger.entries_sum_fen(DELIVERY) == -200
        codes = sorted(f.code for f in uow.ledger.find_violations(10))
        assert codes == ["MONEY_MOVED_FOR_NO_PAYMENT", "MONEY_MOVED_FOR_NO_PAYMENT"]


def test_an_account_below_zero_is_in_arrears(new_uow):
    p = payment("T-A1", 3_000)
    with new_uow() as uow:
        uow.payments.claim(p)
        p.move_to(PaymentState.BOOKED, START)
        uow.payments.save_progress(p, 0)
        uow.ledger.post(booking(p))
        uow.ledger.post(transfer(TransactionKind.PURCHASE, debit=prepaid_account(ACCOUNT), credit=DELIVERY, amount_fen=3_000, at=START, payment_id=p.id))
        assert uow.payments.transition(p.id, PaymentState.BOOKED, PaymentState.REVERSED)
        p.move_to(PaymentState.REVERSED, START)
        uow.payments.save_progress(p, 3)
        uow.ledger.post(transfer(TransactionKind.PAYMENT_REVERSED, debit=prepaid_account(ACCOUNT), credit=clearing_account("wallet"), amount_fen=3_000, at=START, payment_id=p.id))
        uow.commit()
    with new_uow() as uow:
        assert uow.ledger.balance_fen(ACCOUNT) == -3_000
        assert uow.ledger.accounts_in_arrears() == (1, 3_000)
        assert uow.ledger.find_violations(10) == []
        assert uow.ledger.payment_trails() == [("reversed", "received>verified>booked>reversed", "payment_booked,payment_reversed", 1, p.id)]


def test_money_where_the_state_does_not_say_is_found(new_uow):
    p = payment("T-W1", 2_000)
    with new_uow() as uow:
        uow.payments.claim(p)
        p.move_to(PaymentState.BOOKED, START)
        uow.payments.save_progress(p, 0)
        uow.ledger.post(booking(p, credit=prepaid_account(OTHER)))  # on another account's balance
        uow.commit()
    with new_uow() as uow:
        assert [(f.code, f.subject) for f in uow.ledger.find_violations(10)] == [("PAYMENT_MONEY_NOT_WHERE_STATE_SAYS", f"payment {p.id}")]


# ---- orders ----------------------------------------------------------------------------------------


def order(no: str, minutes: int, *, account_no: str = ACCOUNT) -> PaymentOrder:
    return PaymentOrder(no, "wallet", account_no, 5_000, OrderState.OPEN, START + timedelta(minutes=minutes))


def test_an_order_is_paid_once_and_open_ones_are_found_in_their_window(new_uow):
    with new_uow() as uow:
        for no, minutes in (("GW-3", 3), ("GW-1", 1), ("GW-2", 2), ("GW-9", 9)):
            uow.orders.add(order(no, minutes))
        uow.orders.add(order("GW-X", 2, account_no=OTHER))
        uow.commit()
    with new_uow() as uow:
        assert uow.orders.mark_paid("GW-2", "pay_a") is True
        assert uow.orders.mark_paid("GW-2", "pay_b") is False, "another payment already paid it"
        assert uow.orders.mark_paid("GW-NONE", "pay_a") is False
        uow.commit()
    with new_uow() as uow:
        paid = uow.orders.get("GW-2")
        assert paid.state == OrderState.PAID and paid.payment_id == "pay_a"
        assert uow.orders.get("GW-NONE") is None
        window = uow.outbound.open_orders_due("wallet", START, START + timedelta(minutes=3), START, 10)  # none asked yet: all due
        assert [o.out_trade_no for o in window] == ["GW-1", "GW-X", "GW-3"], "oldest first, paid ones left out"
        assert [o.out_trade_no for o in uow.outbound.open_orders_due("wallet", START + timedelta(minutes=1), START + timedelta(minutes=9), START, 1)] == ["GW-X"]
        assert uow.orders.count_created_since(ACCOUNT, START + timedelta(minutes=1)) == 3
        with pytest.raises((DuplicateKey, IntegrityError)):
            uow.orders.add(order("GW-1", 5))


# ---- meters, commands, alerts ------------------------------------------------------------------------


def test_commands_come_in_the_order_they_must_reach_the_meter(new_uow):
    with new_uow() as uow:

        def credit(seq: int, serial: str = SERIAL, route: MeterKind = MeterKind.IOT):
            return credit_order(meter_serial=serial, account_no=ACCOUNT, route=route, payment_id=f"pay_{seq}", purchase_seq=seq, volume_litres=10 * seq, cost_fen=100 * seq, at=START, ttl_s=3600)

        first_id = uow.meter_commands.add(credit(1))
        valve_id = uow.meter_commands.add(valve_command(meter_serial=SERIAL, account_no=ACCOUNT, open_=False, at=START, ttl_s=60, why="arrears"))
        second = credit(2)
        second_id = uow.meter_commands.add(second)
        assert second.id == second_id and second.events == [] and second.events_saved == 1, "added: its events are saved"
        card_id = uow.meter_commands.add(credit(1, serial=OTHER_SERIAL, route=MeterKind.CARD))
        uow.commit()
    with new_uow() as uow:
        assert [c.id for c in uow.meter_commands.for_meter(SERIAL)] == [first_id, valve_id, second_id]
        assert [c.purchase_seq for c in uow.meter_commands.for_meter(OTHER_SERIAL, route=MeterKind.CARD)] == [1]
        assert uow.meter_commands.for_meter(OTHER_SERIAL, route=MeterKind.IOT) == []
        assert uow.meter_commands.count_open(SERIAL) == 3
        assert uow.meter_commands.undelivered_cost_fen() == 100 + 200 + 100
        applied = uow.meter_commands.credit_order(SERIAL, 1)
        assert applied.id == first_id and applied.events == [] and applied.events_saved == 1
        applied.move_to(CommandState.SENT, START + timedelta(seconds=1), "sent")
        applied.move_to(CommandState.APPLIED, START + timedelta(seconds=2), "applied")
        uow.meter_commands.save(applied, START + timedelta(seconds=2))
        uow.commit()
    with new_uow() as uow:
        assert [c.id for c in uow.meter_commands.for_meter(SERIAL)] == [valve_id, second_id], "applied is no longer open"
        assert [c.id for c in uow.meter_commands.for_meter(SERIAL, states=frozenset({CommandState.APPLIED}))] == [first_id]
        shown = uow.meter_commands.get(first_id)
        assert [e.state for e in shown.events] == [CommandState.PENDING, CommandState.SENT, CommandState.APPLIED] and shown.events_saved == 0
        assert uow.meter_commands.get(first_id, with_events=False).events_saved == 3
        assert uow.meter_commands.undelivered_cost_fen() == 200 + 100
        assert [c.id for c in uow.meter_commands.applied_credits_since(START + timedelta(seconds=2), 10)] == [first_id]
        assert uow.meter_commands.applied_credits_since(START + timedelta(seconds=3), 10) == []
        assert uow.meter_commands.applied_without_proof(10) == [(SERIAL, 1, 0, 0)], "the meter's record does not cover it"
        assert [c.id for c in uow.meter_commands.recent(limit=2)] == [card_id, second_id], "newest first"
        assert [c.id for c in uow.meter_commands.recent(limit=10, serial=SERIAL)] == [second_id, valve_id, first_id]
        assert [c.state for c in uow.meter_commands.recent(limit=10, states=[CommandState.APPLIED])] == [CommandState.APPLIED]
        assert [c.purchase_seq for c in uow.meter_commands.for_payment("pay_2")] == [2]
        assert uow.meter_commands.counts_by_state() == {("iot", "applied"): 1, ("iot", "pending"): 2, ("card", "pending"): 1}
        assert uow.meter_commands.open_iot_credits_older_than(START + timedelta(seconds=1), 10)[0].id == valve_id
        assert uow.meter_commands.meters_with_due_expiry(START + timedelta(seconds=60), 10) == [SERIAL]
        assert uow.meter_commands.meters_with_due_expiry(START + timedelta(seconds=59), 10) == []
    with new_uow() as uow:
        with pytest.raises((DuplicateKey, IntegrityError)):
            uow.meter_commands.add(credit_order(meter_serial=SERIAL, account_no=ACCOUNT, route=MeterKind.IOT, payment_id="pay_x", purchase_seq=2, volume_litres=1, cost_fen=1, at=START, ttl_s=60))


def awake_with_work(uow, now) -> list[str]:
    return [link.serial for link in uow.meters.claim_awake_with_work(now, 10)]


def test_a_meter_is_read_as_saved_and_found_when_awake_with_work(new_uow):
    with new_uow() as uow:
        link = uow.meters.get_for_account(ACCOUNT)
        assert link.serial == SERIAL and link.kind == MeterKind.IOT and link.purchase_seq_issued == 0 and link.link_state == LinkState.UNKNOWN
        link.purchase_seq_issued, link.card_no, link.awake_until = 2, None, START + timedelta(minutes=5)
        link.link_state, link.last_report_at = LinkState.ONLINE, START
        uow.meters.save(link)
        uow.meter_commands.add(valve_command(meter_serial=SERIAL, account_no=ACCOUNT, open_=True, at=START, ttl_s=60, why="paid"))
        card_meter = uow.meters.get(OTHER_SERIAL)  # awake too, but with nothing to send over the air
        card_meter.awake_until = START + timedelta(minutes=9)
        uow.meters.save(card_meter)
        uow.meter_commands.add(credit_order(meter_serial=OTHER_SERIAL, account_no=OTHER, route=MeterKind.CARD, payment_id="pay_c", purchase_seq=1, volume_litres=1, cost_fen=1, at=START, ttl_s=60))
        uow.commit()
    with new_uow() as uow:
        assert uow.meters.get(SERIAL) == link
        assert uow.meters.get("00000000009999") is None
        assert uow.meters.claim_awake_with_work(START, 10) == [link], "the meter as saved, claimed"
        assert awake_with_work(uow, START + timedelta(minutes=5)) == [], "asleep again; the card meter has no over-the-air work"
        (sent,) = uow.meter_commands.for_meter(SERIAL)
        sent.move_to(CommandState.SENT, START, "sent")
        sent.next_send_at = START + timedelta(seconds=30)
        uow.meter_commands.save(sent, START)
        assert awake_with_work(uow, START) == [], "sent, and not yet due again"
        assert awake_with_work(uow, START + timedelta(seconds=30)) == [SERIAL], "due for a resend"
        sent.next_send_at = None  # a new report reopened its window
        uow.meter_commands.save(sent, START)
        assert awake_with_work(uow, START) == [SERIAL], "in flight with no wait set: due at once"
        assert uow.meters.silent_since(START + timedelta(seconds=1), 10) == [SERIAL]
        assert uow.meters.last_reports([SERIAL, "00000000009999"]) == {SERIAL: link.last_report_at}, "an unknown serial is left out"
        assert uow.meters.count_by_link_state() == {"online": 1}
        assert uow.meters.claimed_beyond_issued(10) == []


def test_an_alert_is_raised_once_while_it_is_open(new_uow):
    with new_uow() as uow:
        assert uow.alerts.raise_once(kind=AlertKind.METER_BACKLOG, subject="meter:1", reason="backlog", at=START) is True
        assert uow.alerts.raise_once(kind=AlertKind.METER_BACKLOG, subject="meter:1", reason="again", at=START) is False
        assert uow.alerts.raise_once(kind=AlertKind.METER_BACKLOG, subject="meter:2", reason="backlog", at=START) is True
        assert uow.alerts.raise_once(kind="CARD_COUNTER_AHEAD", subject="meter:1", reason="x" * 900, at=START) is True
        uow.commit()
    with new_uow() as uow:
        assert uow.alerts.count_open_by_kind() == {str(AlertKind.METER_BACKLOG): 2, "CARD_COUNTER_AHEAD": 1}
        assert uow.alerts.clear(kind=AlertKind.METER_BACKLOG, subject="meter:1", at=START, resolved_by="op", resolution="drained") == 1
        assert uow.alerts.clear(kind=AlertKind.METER_BACKLOG, subject="meter:1", at=START) == 0
        assert uow.alerts.raise_once(kind=AlertKind.METER_BACKLOG, subject="meter:1", reason="back again", at=START) is True
        uow.commit()
    with new_uow() as uow:
        opened = uow.alerts.open_of_kind(AlertKind.METER_BACKLOG, 10)
        assert [(a.subject, a.reason) for a in opened] == [("meter:2", "backlog"), ("meter:1", "back again")]
        everything = uow.alerts.list(limit=10, open_only=False, subject="meter:1")
        assert [a.reason[:10] for a in everything] == ["back again", "x" * 10, "backlog"], "newest first"
        cleared = everything[-1]
        assert cleared.cleared_at == START and cleared.resolved_by == "op" and cleared.resolution == "drained"
        assert len(everything[1].reason) == 500
        assert uow.alerts.get(cleared.id) == cleared
        assert [a.reason for a in uow.alerts.list(limit=10)][-1] == "backlog", "open only"


# ---- the fakes' shapes ---------------------------------------------------------------------------------


def test_every_fake_has_its_ports_methods_with_the_same_parameters(clock):
    """A fake whose method lost or renamed a parameter would pass its own tests and fail in SQL."""
    uow = FakeSystem(clock).new_uow()
    for name, port in inspect.get_annotations(UnitOfWork).items():
        if not (isinstance(port, type) and port.__module__ in (ports.__name__, carrier_ports.__name__, outbound_store.__name__)):
            continue
        fake = getattr(uow, name)
        for method in (m for m in vars(port) if not m.startswith("_")):
            wanted = inspect.signature(getattr(port, method)).parameters
            got = inspect.signature(getattr(fake, method)).parameters
            assert [(p.name, p.kind, p.default) for p in list(wanted.values())[1:]] == [(p.name, p.kind, p.default) for p in got.values()], f"{name}.{method}"


# ---- the rest of the money path's repositories -----------------------------------------------------------


def test_channels_customers_tariffs_and_keys_are_read_as_written(new_uow):
    later = START + timedelta(days=1)
    with new_uow() as uow:
        uow.channels.add_key(ChannelKey("wallet", "k-1", KeyPurpose.HMAC_SECRET, "s1", KeyStatus.ACTIVE, START))
        uow.channels.add_key(ChannelKey("wallet", "k-2", KeyPurpose.HMAC_SECRET, "s2", KeyStatus.ACTIVE, later))
        assert uow.channels.retire_key("wallet", "k-1", later) == 1
        assert uow.channels.retire_key("wallet", "k-1", later) == 0
        assert uow.customers.exists(ACCOUNT) and not uow.customers.exists("4309999999")
        assert uow.customers.meter_serial_taken(OTHER_SERIAL) and not uow.customers.meter_serial_taken("00000000009999")
        assert uow.tariffs.add(Tariff(CustomerClass.RESIDENTIAL, date(2026, 12, 1), (Tier(None, 300_000),)), at=START, actor="op") is not None
        assert uow.tariffs.add(Tariff(CustomerClass.RESIDENTIAL, date(2026, 12, 1), (Tier(None, 310_000),)), at=START, actor="op") is None, "versions are never edited"
        uow.commit()
    with new_uow() as uow:
        channel = uow.channels.get("wallet")
        assert [(k.key_id, k.status) for k in channel.keys] == [("k-2", KeyStatus.ACTIVE), ("k-1", KeyStatus.RETIRED)], "newest first"
        assert [c.id for c in uow.channels.list()] == ["wallet"] and uow.channels.get("nobody") is None
        customer = uow.customers.get(ACCOUNT)
        assert customer.meter == Meter(SERIAL, MeterKind.IOT) and customer.created_at == START and uow.customers.get("4309999999") is None
        assert uow.tariffs.in_force(CustomerClass.RESIDENTIAL, date(2026, 11, 30)).effective_from == date(2000, 1, 1), "the seeded one"
        assert uow.tariffs.in_force(CustomerClass.RESIDENTIAL, date(2026, 12, 1)).tiers == (Tier(None, 300_000),)
        assert [(t.customer_class, t.effective_from) for t in uow.tariffs.list()] == [
            (CustomerClass.COMMERCIAL, date(2000, 1, 1)), (CustomerClass.RESIDENTIAL, date(2000, 1, 1)), (CustomerClass.RESIDENTIAL, date(2026, 12, 1)),
        ]  # fmt: skip


def test_api_keys_audit_and_rejections_are_kept_and_listed_newest_first(new_uow):
    with new_uow() as uow:
        uow.api_keys.add(ApiKeyRecord("key_b", "b", "operator", None, START + timedelta(seconds=1), None), "b" * 64)
        uow.api_keys.add(ApiKeyRecord("key_a", "a", "device", "wallet", START, None), "a" * 64)
        assert uow.api_keys.revoke("key_b", START) == 1 and uow.api_keys.revoke("key_b", START) == 0
        for n in range(3):
            uow.audit.append(at=START, actor="op", action="hold.credit" if n else "account.open", subject=f"payment:{n % 2}", detail={"n": n})
            uow.rejections.add(at=START, channel_id="wallet" if n else "w" * 60, code=f"CODE_{n}", message="m" * 600, remote_addr="10.0.0.1", request_summary={"n": n})
        uow.commit()
    with new_uow() as uow:
        assert [k.id for k in uow.api_keys.list()] == ["key_a", "key_b"], "oldest first"
        assert uow.api_keys.find_by_secret_sha256("b" * 64).revoked_at == START and uow.api_keys.find_by_secret_sha256("c" * 64) is None
        assert uow.audit.count_actions("hold.credit") == 2
        assert [(r["subject"], r["detail"]) for r in uow.audit.list(limit=10, subject="payment:0")] == [("payment:0", {"n": 2}), ("payment:0", {"n": 0})]
        rejections = uow.rejections.list(limit=10)
        assert [r["code"] for r in rejections] == ["CODE_2", "CODE_1", "CODE_0"] and rejections[-1]["channel_id"] == "w" * 40 and len(rejections[0]["message"]) == 500
        assert [r["code"] for r in uow.rejections.list(limit=10, channel_id="wallet", code="CODE_1")] == ["CODE_1"]


def test_meter_keys_kiosks_models_and_site_secrets(new_uow):
    with new_uow() as uow:
        profile = uow.meter_models.get(DEFAULT_METER_MODEL)
        uow.meters.set_model(SERIAL, profile)
        uow.meter_keys.add_security(MeterFrameSecurity(serial=SERIAL, profile=profile, active_key_version=1))
        uow.meter_keys.add_key(SERIAL, 1, b"k" * 16, START)
        uow.meter_keys.add_key(SERIAL, 2, b"K" * 16, START)
        assert uow.kiosks.add(Kiosk("k-1", "Kiosk", "wallet", "华新苑", "", 26.9, 112.6, "active"), START) is True
        assert uow.kiosks.add(Kiosk("k-1", "Again", "wallet", "华新苑", "", 26.9, 112.6, "active"), START) is False
        assert uow.meter_models.add(MeterModel("m-1", 1), START) is True and uow.meter_models.add(MeterModel("m-1", 4), START) is False
        secret = uow.site_secrets.get_or_create("s", START)
        assert uow.site_secrets.get_or_create("s", START) == secret
        uow.commit()
    with new_uow() as uow:
        assert uow.meter_keys.key(SERIAL, 2) == b"K" * 16
        assert uow.meter_keys.retire_other_keys(SERIAL, 2, START) == 1
        assert uow.meter_keys.key(SERIAL, 1) is None and uow.meter_keys.key(SERIAL, 3) is None
        assert uow.meter_keys.get_security(SERIAL).active_key_version == 1 and uow.meter_keys.count_by_model() == {DEFAULT_METER_MODEL: 1}
        assert uow.kiosks.set_status("k-1", "offline") == 1 and uow.kiosks.set_status("k-9", "offline") == 0
        assert [k.status for k in uow.kiosks.list()] == ["offline"] and uow.kiosks.list(status="active") == []
        assert uow.meter_models.get("m-1") == MeterModel("m-1", 1)
        link = uow.meters.get(SERIAL)
        link.model = "m-1"
        uow.meters.save(link)
        assert uow.meters.get(SERIAL).seq_modulus == 256, "a one-byte serial wraps"
        assert uow.meters.set_reopen_needs_button(model="m-1", value=True) == 1
        assert uow.meters.get(SERIAL).reopen_needs_button is True


# ---- statements and reconciliation runs ------------------------------------------------------------------


class LinesRead:
    """A statement as the matcher hands it over (services/statement_matching.ReadStatement), from lines in hand."""

    format = "plain"

    def __init__(self, lines: tuple[StatementLine, ...], work) -> None:
        self._lines, self._work = lines, work
        self.lines = len(lines)
        self.paid_total_fen = sum(x.amount_fen for x in lines if x.status == LineStatus.PAID)
        self.fee_total_fen = sum(x.fee_fen for x in lines)

    def lines_csv(self, file_id: int):
        path = self._work / f"lines-{file_id}.csv"
        with path.open("w", newline="") as out:
            for x in self._lines:
                paid_at = x.paid_at.isoformat() if x.paid_at else None
                csv.writer(out).writerow(["" if v is None else v for v in (file_id, x.line_no, x.channel_txn_id, x.out_trade_no, x.account_no, x.amount_fen, x.fee_fen, x.status.value, paid_at)])
        return path

    def batches(self, batch_lines: int):
        for start in range(0, len(self._lines), batch_lines):
            yield list(self._lines[start : start + batch_lines])

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def read_csv(path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_a_statement_file_is_imported_once_by_content_and_exported_for_the_matcher(new_uow, tmp_path):
    day = START.date()
    lines = (
        StatementLine(1, "T-1", None, ACCOUNT, 1_000, 6, LineStatus.PAID, START),
        StatementLine(2, "T-2", "GW-1", None, 500, 3, LineStatus.REFUNDED, None),
    )
    statement = LinesRead(lines, tmp_path)
    with new_uow() as uow:
        file_id = uow.statements.add(channel_id="wallet", statement_date=day, format_="plain", sha256="a" * 64, filename="s.csv", statement=statement, at=START, actor="op")
        assert uow.statements.add(channel_id="wallet", statement_date=day, format_="plain", sha256="a" * 64, filename="t.csv", statement=statement, at=START, actor="op") is None
        next_day = uow.statements.add(
            channel_id="wallet", statement_date=day + timedelta(days=1), format_="plain", sha256="a" * 64, filename="s.csv", statement=LinesRead(lines[:1], tmp_path), at=START, actor="op"
        )  # fmt: skip
        assert next_day is not None and next_day != file_id, "the day is part of the key"
        uow.commit()
    with new_uow() as uow:
        imported = uow.statements.get(file_id)
        assert uow.statements.find("wallet", day, "a" * 64) == imported
        assert (imported.lines, imported.paid_total_fen, imported.fee_total_fen, imported.imported_by) == (2, 1_000, 9, "op")
        assert uow.statements.find("wallet", day, "b" * 64) is None and uow.statements.get(999) is None
        assert uow.statements.export_lines(file_id, tmp_path / "lines.csv") == 2
        assert read_csv(tmp_path / "lines.csv") == [
            {"channel_txn_id": "T-1", "out_trade_no": "", "account_no": ACCOUNT, "amount_fen": "1000", "fee_fen": "6", "status": "paid", "line_no": "1"},
            {"channel_txn_id": "T-2", "out_trade_no": "GW-1", "account_no": "", "amount_fen": "500", "fee_fen": "3", "status": "refunded", "line_no": "2"},
        ]
        assert uow.statements.export_neighbour_txns("wallet", day, day + timedelta(days=1), file_id, tmp_path / "near.csv") == 1
        assert read_csv(tmp_path / "near.csv") == [{"channel_txn_id": "T-1"}]
        assert uow.statements.export_neighbour_txns("wallet", day, day, file_id, tmp_path / "none.csv") == 0


TOTALS = {"unknown_payment": {"count": 1, "amount_fen": 2_000}}


def test_a_run_keeps_its_discrepancies_and_each_is_decided_once(new_uow, tmp_path):
    day = START.date()
    p = payment("T-R1", 2_000, at=START)
    with new_uow() as uow:
        uow.payments.claim(p)
        uow.payments.save_progress(p, 0)
        file_ids = [
            uow.statements.add(channel_id="wallet", statement_date=day + timedelta(days=n), format_="plain", sha256=f"{n}" * 64, filename="s.csv", statement=LinesRead((), tmp_path), at=START, actor="op")
            for n in range(2)
        ]  # fmt: skip
        run_ids = [
            uow.reconciliations.add_run(channel_id="wallet", statement_date=day + timedelta(days=n), file_id=file_id, started_at=START, finished_at=START, actor="op", verdict="unclean", totals=TOTALS, matched=0)
            for n, file_id in enumerate(file_ids)
        ]  # fmt: skip
        found = Discrepancy(None, None, DiscrepancyClass.UNKNOWN_PAYMENT, DiscrepancyState.OPEN, "wallet", "T-R1", p.id, None, 2_000, "d" * 600, "reverse")
        late = Discrepancy(None, None, DiscrepancyClass.MISSING_NOTIFICATION, DiscrepancyState.CARRIED_OVER, "wallet", "T-R2", None, 700, None, "near midnight", "look again")
        uow.reconciliations.add_discrepancies(run_ids[0], [found, late])
        uow.reconciliations.add_discrepancies(run_ids[1], [found])
        uow.commit()
    with new_uow() as uow:
        run = uow.reconciliations.run_for_file(file_ids[0])
        assert run == uow.reconciliations.get_run(run_ids[0]) and run["verdict"] == "unclean" and run["totals"] == TOTALS
        assert uow.reconciliations.run_for_file(999) is None
        first, carried, again = uow.reconciliations.discrepancies(limit=10)
        assert (first.run_id, carried.run_id, again.run_id) == (run_ids[0], run_ids[0], run_ids[1]) and len(first.detail) == 500
        assert [d.id for d in uow.reconciliations.discrepancies(run_id=run_ids[1], limit=10)] == [again.id]
        assert [d.id for d in uow.reconciliations.discrepancies(state=DiscrepancyState.OPEN, klass=DiscrepancyClass.UNKNOWN_PAYMENT, channel_id="wallet", limit=1)] == [first.id]
        assert [d.id for d in uow.reconciliations.carried_over("wallet", day + timedelta(days=1))] == [carried.id]
        assert uow.reconciliations.carried_over("wallet", day) == []
        assert uow.reconciliations.settle(first.id, state=DiscrepancyState.RESOLVED, at=START, by="op", resolution="reversed", from_state=DiscrepancyState.OPEN) is True
        assert uow.reconciliations.settle(first.id, state=DiscrepancyState.RESOLVED, at=START, by="op2", resolution="again", from_state=DiscrepancyState.OPEN) is False
        uow.commit()
    with new_uow() as uow:
        decided = uow.reconciliations.get_discrepancy(first.id)
        assert (decided.state, decided.resolved_at, decided.resolved_by, decided.resolution) == (DiscrepancyState.RESOLVED, START, "op", "reversed")
        assert uow.reconciliations.get_discrepancy(999) is None
        assert uow.reconciliations.export_payments("wallet", START, START + timedelta(days=1), tmp_path / "p.csv") == 1
        (row,) = read_csv(tmp_path / "p.csv")
        assert {k: row[k] for k in ("payment_id", "channel_txn_id", "amount_fen", "state", "account_no", "command_id")} == {
            "payment_id": p.id, "channel_txn_id": "T-R1", "amount_fen": "2000", "state": "verified", "account_no": ACCOUNT, "command_id": "",
        }  # fmt: skip
        assert uow.reconciliations.export_payments("wallet", START + timedelta(seconds=1), START + timedelta(days=1), tmp_path / "q.csv") == 0


def test_a_plain_post_of_a_second_life_cycle_transaction_or_to_an_unopened_account_fails(new_uow):
    p = payment("T-P1", 1_000)
    with new_uow() as uow:
        uow.payments.claim(p)
        uow.ledger.post(booking(p))
        with pytest.raises((DuplicateKey, IntegrityError)):
            uow.ledger.post(booking(p))
    with new_uow() as uow:
        with pytest.raises((LookupError, IntegrityError)):
            uow.ledger.post(booking(p, credit=prepaid_account("4309999999")))


# ---- the batch methods of intake and delivery ------------------------------------------------------------

THIRD = "4301000003"
THIRD_SERIAL = "00000000000003"


def add_iot_customer(uow, account_no: str = THIRD, serial: str = THIRD_SERIAL) -> None:
    uow.customers.add(Customer(account_no, "李四", "2 栋", "华新苑", "G-01", "13812345679", CustomerClass.COMMERCIAL, Meter(serial, MeterKind.IOT), START))
    uow.ledger.open_account(prepaid_account(account_no), LedgerAccountKind.PREPAID)


def store_kind(request: pytest.FixtureRequest) -> str:
    return request.node.callspec.params["new_uow"]


def test_post_many_posts_each_transaction_and_moves_each_cached_balance_by_its_net(new_uow):
    first, second = payment("T-M1", 1_000), payment("T-M2", 300)
    with new_uow() as uow:
        uow.payments.claim(first)
        uow.payments.claim(second)
        delivered = transfer(TransactionKind.PURCHASE, debit=prepaid_account(ACCOUNT), credit=DELIVERY, amount_fen=400, at=START, payment_id=first.id, memo="gas")
        ids = uow.ledger.post_many([booking(first), delivered, booking(second)])
        assert len(ids) == 3 and ids == sorted(ids) and len(set(ids)) == 3, "one id per transaction, in the order given"
        uow.commit()
    with new_uow() as uow:
        assert uow.ledger.balance_fen(ACCOUNT) == 1_000 - 400 + 300
        assert uow.ledger.entries_sum_fen(prepaid_account(ACCOUNT)) == -(1_000 - 400 + 300), "the cached sum, as the entries say"
        assert uow.ledger.entries_sum_fen(clearing_account("wallet")) == 1_300
        assert uow.ledger.purchases_fen(ACCOUNT) == 400
        assert uow.ledger.post_once(booking(first)) is None, "the batch's booking is owned by its payment"
    third = payment("T-M3", 50)
    with new_uow() as uow:
        uow.payments.claim(third)
        with pytest.raises((DuplicateKey, IntegrityError)):
            uow.ledger.post_many([booking(third), booking(third)])
    with new_uow() as uow:
        with pytest.raises((LookupError, IntegrityError)):
            uow.ledger.post_many([booking(payment("T-M4", 70)), booking(third, credit=prepaid_account("4309999999"))])
    with new_uow() as uow:
        assert uow.ledger.balance_fen(ACCOUNT) == 900, "a refused batch left nothing behind"
        assert uow.ledger.payment_net_fen(third.id) == 0


def test_a_payments_events_are_saved_without_its_state(new_uow):
    p = payment("T-E1")
    with new_uow() as uow:
        uow.payments.claim(p)
        uow.payments.save_events(p, events_already_saved=0)
        p.move_to(PaymentState.BOOKED, START, "booked")
        uow.payments.save_events(p, events_already_saved=2)
        uow.payments.save_events(p, events_already_saved=3)  # nothing new: nothing written
        uow.commit()
    with new_uow() as uow:
        kept = uow.payments.get(p.id)
        assert [e.state for e in kept.events] == [PaymentState.RECEIVED, PaymentState.VERIFIED, PaymentState.BOOKED]
        assert kept.state == PaymentState.VERIFIED, "the state as claimed: save_events writes events only"
        with pytest.raises((DuplicateKey, IntegrityError)):
            uow.payments.save_events(p, events_already_saved=1)


def test_a_purchase_site_is_the_meter_with_its_class_balance_and_waiting_commands(new_uow):
    p = payment("T-S1", 2_000)
    with new_uow() as uow:
        uow.payments.claim(p)
        uow.ledger.post(booking(p))
        uow.meter_commands.add(valve_command(meter_serial=SERIAL, account_no=ACCOUNT, open_=True, at=START, ttl_s=60, why="paid"))
        add_iot_customer(uow)
        uow.commit()
    with new_uow() as uow:
        site = uow.meters.get_for_purchase(ACCOUNT)
        assert site.link == uow.meters.get(SERIAL)
        assert (site.customer_class, site.prepaid_entries_sum_fen, site.open_commands) == (CustomerClass.RESIDENTIAL, -2_000, 1)
        third = uow.meters.get_for_purchase(THIRD)
        assert (third.link.serial, third.customer_class, third.prepaid_entries_sum_fen, third.open_commands) == (THIRD_SERIAL, CustomerClass.COMMERCIAL, 0, 0)
        assert uow.meters.get_for_purchase("4309999999") is None


def test_a_meter_takes_a_model_and_its_button_and_models_count_their_meters(new_uow):
    with new_uow() as uow:
        money = uow.meter_models.get("cjt188-money")
        assert money is not None and money.reopen_needs_button is True, "the built-in models are there from the start"
        assert uow.meter_models.count_meters() == {}
        uow.meters.set_model(SERIAL, money)
        uow.meters.set_model(OTHER_SERIAL, uow.meter_models.get(DEFAULT_METER_MODEL))
        uow.meters.set_model("00000000009999", money)  # no such meter: nothing
        uow.commit()
    with new_uow() as uow:
        link = uow.meters.get(SERIAL)
        assert (link.model, link.reopen_needs_button, link.seq_modulus) == ("cjt188-money", True, 256)
        assert uow.meter_models.count_meters() == {"cjt188-money": 1, DEFAULT_METER_MODEL: 1}


def test_awake_meters_with_work_are_claimed_soonest_asleep_first(new_uow):
    with new_uow() as uow:
        add_iot_customer(uow)
        for serial, account_no, awake_minutes in ((SERIAL, ACCOUNT, 9), (THIRD_SERIAL, THIRD, 3)):
            link = uow.meters.get(serial)
            link.awake_until = START + timedelta(minutes=awake_minutes)
            uow.meters.save(link)
            uow.meter_commands.add(valve_command(meter_serial=serial, account_no=account_no, open_=True, at=START, ttl_s=600, why="paid"))
        uow.commit()
    with new_uow() as uow:
        claimed = uow.meters.claim_awake_with_work(START, 10)
        assert [link.serial for link in claimed] == [THIRD_SERIAL, SERIAL], "the one falling asleep first goes first"
        assert claimed[0] == uow.meters.get(THIRD_SERIAL)
        assert [link.serial for link in uow.meters.claim_awake_with_work(START, 1)] == [THIRD_SERIAL]
        assert [link.serial for link in uow.meters.claim_awake_with_work(START + timedelta(minutes=3), 10)] == [SERIAL]


def test_commands_of_many_meters_are_read_and_saved_in_one_go(new_uow):
    with new_uow() as uow:
        add_iot_customer(uow)
        ids = {
            name: uow.meter_commands.add(command)
            for name, command in (
                ("a1", valve_command(meter_serial=SERIAL, account_no=ACCOUNT, open_=False, at=START, ttl_s=60, why="arrears")),
                ("c1", valve_command(meter_serial=THIRD_SERIAL, account_no=THIRD, open_=True, at=START, ttl_s=60, why="paid")),
                ("a2", credit_order(meter_serial=SERIAL, account_no=ACCOUNT, route=MeterKind.IOT, payment_id="pay_a2", purchase_seq=1, volume_litres=10, cost_fen=100, at=START, ttl_s=60)),
                ("card", credit_order(meter_serial=OTHER_SERIAL, account_no=OTHER, route=MeterKind.CARD, payment_id="pay_c", purchase_seq=1, volume_litres=1, cost_fen=1, at=START, ttl_s=60)),
            )
        }  # fmt: skip
        uow.commit()
    with new_uow() as uow:
        found = uow.meter_commands.for_meters([SERIAL, THIRD_SERIAL, OTHER_SERIAL, "00000000009999"], route=MeterKind.IOT)
        assert {serial: [c.id for c in commands] for serial, commands in found.items()} == {SERIAL: [ids["a1"], ids["a2"]], THIRD_SERIAL: [ids["c1"]]}
        assert found[SERIAL] == uow.meter_commands.for_meter(SERIAL, route=MeterKind.IOT), "as for_meter reads each"
        assert uow.meter_commands.for_meters([OTHER_SERIAL], route=MeterKind.CARD)[OTHER_SERIAL][0].id == ids["card"]
        assert uow.meter_commands.for_meters([], route=MeterKind.IOT) == {}
        sent = [found[SERIAL][0], found[THIRD_SERIAL][0]]
        for command in sent:
            command.move_to(CommandState.SENT, START + timedelta(seconds=1), "sent")
            command.sends, command.next_send_at = 1, START + timedelta(seconds=31)
        uow.meter_commands.save_many(sent, START + timedelta(seconds=1))
        assert [(c.events, c.events_saved) for c in sent] == [([], 2), ([], 2)], "their events are saved"
        uow.meter_commands.save_many([], START)
        uow.commit()
    with new_uow() as uow:
        for command_id in (ids["a1"], ids["c1"]):
            kept = uow.meter_commands.get(command_id)
            assert (kept.state, kept.sends, kept.next_send_at) == (CommandState.SENT, 1, START + timedelta(seconds=31))
            assert [e.state for e in kept.events] == [CommandState.PENDING, CommandState.SENT]
        assert uow.meter_commands.get(ids["a2"]).state == CommandState.PENDING, "not in the batch: unchanged"


def test_downlink_counters_are_reserved_for_good_and_never_handed_out_twice(new_uow, request):
    with new_uow() as uow:
        add_iot_customer(uow)
        sealing, plain = uow.meter_models.get(DEFAULT_METER_MODEL), uow.meter_models.get("carrier-plain")
        for serial, profile, version in ((SERIAL, sealing, 1), (THIRD_SERIAL, sealing, 1), (OTHER_SERIAL, plain, None)):
            uow.meters.set_model(serial, profile)
            uow.meter_keys.add_security(MeterFrameSecurity(serial=serial, profile=profile, active_key_version=version))
        exhausted = uow.meter_keys.get_security(THIRD_SERIAL)
        exhausted.downlink_counter_sent = COUNTER_MAX
        uow.meter_keys.save_security(exhausted)
        uow.commit()
    with new_uow() as uow:
        reserved = uow.meter_keys.reserve_downlink_counters([SERIAL, SERIAL, THIRD_SERIAL, OTHER_SERIAL, "00000000009999"])
        assert list(reserved) == [SERIAL], "once per meter; an exhausted counter, a meter without a key and an unknown one are left out"
        assert reserved[SERIAL].downlink_counter_sent == 1 and reserved[SERIAL].profile == uow.meter_models.get(DEFAULT_METER_MODEL)
        assert uow.meter_keys.reserve_downlink_counters(iter([SERIAL]))[SERIAL].downlink_counter_sent == 2
        assert uow.meter_keys.reserve_downlink_counters([]) == {}
        # left without commit: the frames may have gone out already
    with new_uow() as uow:
        again = uow.meter_keys.reserve_downlink_counters([SERIAL])[SERIAL].downlink_counter_sent
        if store_kind(request) == "sqlite":
            assert again == 1, "SQLite takes them in the caller's transaction (one writer): rolled back with it"
        else:
            assert again == 3, "taken for good: a rolled back unit of work does not hand the same counter out again"
        uow.commit()
    with new_uow() as uow:
        assert uow.meter_keys.get_security(SERIAL).downlink_counter_sent == again


# ---- carrier platforms and calling the channels -----------------------------------------------------------


def test_a_carrier_device_is_bound_once_and_each_push_is_claimed_once(new_uow):
    ctwing = CarrierPlatform.CTWING
    device = CarrierDevice(SERIAL, ctwing, "dev-1", "p-1", "860000000000001", 3600, START)
    with new_uow() as uow:
        assert uow.carriers.add_device(device) is True
        assert uow.carriers.add_device(replace(device, device_id="dev-2")) is False, "the meter is on a platform already"
        assert uow.carriers.add_device(replace(device, serial=OTHER_SERIAL)) is False, "the platform's device is bound to another meter"
        assert uow.carriers.device_of(OTHER_SERIAL) is None, "a refused binding leaves the unit of work usable"
        uow.carriers.set_online(ctwing, "dev-1", True, START)
        assert uow.carriers.claim_push(ctwing, "k-1", at=START, kind="dataReport", device_id="dev-1") == (True, None)
        assert uow.carriers.claim_push(ctwing, "k-1", at=START, kind="dataReport", device_id="dev-1") == (False, None), "a retry while it is taken"
        uow.carriers.settle_push(ctwing, "k-1", "TAKEN")
        assert uow.carriers.claim_push(ctwing, "k-2", at=START + timedelta(minutes=10), kind="dataReport", device_id="dev-1") == (True, None)
        uow.carriers.release_push(ctwing, "k-2")
        for n, status in enumerate((PlatformCommandStatus.SAVED, PlatformCommandStatus.SENT)):
            uow.carriers.add_command(PlatformCommand(ctwing, f"c-{n}", SERIAL, 7, 3600, START + timedelta(seconds=n), status, START))
        uow.commit()
    with new_uow() as uow:
        assert uow.carriers.device_by_id(ctwing, "dev-1") == replace(device, online=True, online_changed_at=START) == uow.carriers.device_of(SERIAL)
        assert uow.carriers.device_by_id(CarrierPlatform.ONENET, "dev-1") is None
        assert uow.carriers.claim_push(ctwing, "k-1", at=START, kind="dataReport", device_id="dev-1") == (False, "TAKEN")
        assert uow.carriers.claim_push(ctwing, "k-2", at=START, kind="dataReport", device_id="dev-1") == (True, None), "released: its retry is taken afresh"
        assert uow.carriers.forget_pushes_before(START + timedelta(minutes=1)) == 2
        assert uow.carriers.latest_command(SERIAL, 7).command_id == "c-1" and uow.carriers.latest_command(SERIAL, 8) is None
        uow.carriers.set_command_status(ctwing, "c-0", PlatformCommandStatus.DELIVERED, START + timedelta(seconds=5))
        delivered = uow.carriers.command(ctwing, "c-0")
        assert (delivered.status, delivered.status_at) == (PlatformCommandStatus.DELIVERED, START + timedelta(seconds=5))
        assert uow.carriers.command(ctwing, "c-9") is None


def test_outbound_jobs_and_gateways_are_kept_and_orders_are_due_once_their_wait_is_over(new_uow):
    with new_uow() as uow:
        for no, minutes in (("GW-1", 1), ("GW-2", 2), ("GW-3", 3)):
            uow.orders.add(order(no, minutes))
        waiting = OutboundJob.new(JobKind.ORDER_QUERY, "GW-1", "wallet", START + timedelta(minutes=10))
        uow.outbound.save_job(waiting, START)
        done = replace(OutboundJob.new(JobKind.ORDER_QUERY, "GW-2", "wallet", START), state=JobState.DONE, last_outcome="x" * 400)
        uow.outbound.save_job(done, START + timedelta(seconds=1))
        uow.outbound.set_gateway_url("wallet", "http://127.0.0.1:1/old", START)
        uow.outbound.set_gateway_url("wallet", "http://127.0.0.1:1/new", START)
        uow.commit()
    with new_uow() as uow:
        assert uow.outbound.job(JobKind.ORDER_QUERY, "GW-2").last_outcome == "x" * 300
        assert uow.outbound.job(JobKind.REFUND, "GW-2") is None
        assert [j.subject for j in uow.outbound.jobs(JobKind.ORDER_QUERY)] == ["GW-2", "GW-1"], "most recently updated first"
        assert uow.outbound.jobs(JobKind.ORDER_QUERY, channel_id="other") == [] and len(uow.outbound.jobs(JobKind.ORDER_QUERY, limit=1)) == 1
        assert uow.outbound.gateway_url("wallet") == "http://127.0.0.1:1/new" and uow.outbound.gateway_url("other") is None
        assert uow.outbound.gateway_channels() == ["wallet"]
        window = (START - timedelta(days=1), START + timedelta(days=1))
        assert [o.out_trade_no for o in uow.outbound.open_orders_due("wallet", *window, START, 10)] == ["GW-3"], "GW-1 waits, GW-2 is done"
        assert [o.out_trade_no for o in uow.outbound.open_orders_due("wallet", *window, START + timedelta(minutes=10), 10)] == ["GW-1", "GW-3"]
        assert uow.outbound.close_order("GW-3") is True and uow.outbound.close_order("GW-3") is False
        assert uow.orders.get("GW-3").state == OrderState.CLOSED
        uow.outbound.save_job(replace(waiting, tries=1), START + timedelta(seconds=2))
        assert uow.outbound.job(JobKind.ORDER_QUERY, "GW-1").tries == 1, "saved again: updated in place"


# ---- a province's figures --------------------------------------------------------------------------


def test_a_citys_figures_payments_in_a_window_time_to_gas_and_accounts_of_other_cities(new_uow):
    with new_uow() as uow:
        for n, minutes in enumerate((0, 30, 90)):  # received at 09:00, 09:30 and 10:30
            p = payment(f"T-W{n}", 1_000 * (n + 1), pid=f"pay_{n + 1}", at=START + timedelta(minutes=minutes))
            uow.payments.claim(p)
            uow.payments.save_progress(p, 0)
        for seq in (1, 2):
            uow.meter_commands.add(credit_order(meter_serial=SERIAL, account_no=ACCOUNT, route=MeterKind.IOT, payment_id=f"pay_{seq}", purchase_seq=seq, volume_litres=10, cost_fen=100, at=START, ttl_s=3600))
        uow.commit()
    with new_uow() as uow:
        applied = uow.meter_commands.credit_order(SERIAL, 1)
        applied.move_to(CommandState.SENT, START + timedelta(seconds=30), "sent")
        applied.move_to(CommandState.APPLIED, START + timedelta(seconds=95), "applied")
        uow.meter_commands.save(applied, START + timedelta(seconds=95))
        uow.commit()
    an_hour = (START, START + timedelta(hours=1))
    with new_uow() as uow:
        assert uow.payments.totals_by_state(*an_hour) == {"verified": (2, 3_000)}
        assert uow.payments.totals_by_state(START + timedelta(hours=1)) == {"verified": (1, 3_000)}
        assert sorted(uow.meter_commands.purchase_waits_s(*an_hour, 10), key=str) == [95, None]  # applied 95 s after paid; one still on its way
        assert uow.meter_commands.purchase_waits_s(START + timedelta(hours=1), START + timedelta(hours=2), 10) == []
        assert uow.customers.numbers_outside("4301", 5) == (0, [])
        assert uow.customers.numbers_outside("4103", 1) == (2, [ACCOUNT])


def test_an_auditors_snapshot_reads_every_claim_and_every_credit_order(new_uow):
    with new_uow() as uow:
        for n in (2, 1):
            p = payment(f"T-S{n}", 1_000 * n, pid=f"pay_{n}")
            uow.payments.claim(p)
            uow.payments.save_progress(p, 0)
        uow.meter_commands.add(credit_order(meter_serial=SERIAL, account_no=ACCOUNT, route=MeterKind.IOT, payment_id="pay_1", purchase_seq=1, volume_litres=10, cost_fen=100, at=START, ttl_s=3600))
        uow.meter_commands.add(valve_command(meter_serial=SERIAL, account_no=ACCOUNT, open_=False, at=START, ttl_s=60, why="arrears"))
        uow.commit()
    with new_uow() as uow:
        assert uow.payments.every_claim(10) == [("wallet", "T-S1", 1_000, "verified", "pay_1"), ("wallet", "T-S2", 2_000, "verified", "pay_2")]
        assert uow.payments.every_claim(1) == [("wallet", "T-S1", 1_000, "verified", "pay_1")]
        assert uow.meter_commands.every_credit_order(10) == [(SERIAL, 1, 10, "pending")]  # the valve command is no credit order


def test_a_model_that_reports_weekly_is_not_silent_after_a_day(new_uow):
    weekly = MeterModel("weekly-nbiot", report_interval_s=7 * 86_400)
    with new_uow() as uow:
        uow.meter_models.add(weekly, START)
        uow.meters.set_model(SERIAL, weekly)
        link = uow.meters.get(SERIAL)
        link.last_report_at, link.link_state = START, LinkState.ONLINE
        uow.meters.save(link)
        uow.commit()
    two_days_later = START + timedelta(days=2)
    with new_uow() as uow:
        assert uow.meters.silent_since(two_days_later, 10) == [SERIAL], "one cutoff for every model"
        assert uow.meters.silent_since(two_days_later, 10, cutoff_by_model={"weekly-nbiot": START}) == [], "its model's own cutoff"
        assert uow.meters.silent_since(two_days_later, 10, cutoff_by_model={"weekly-nbiot": START + timedelta(seconds=1)}) == [SERIAL]
