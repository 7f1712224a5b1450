"""In-memory fakes of the ports in services/ports.py, and a unit of work over them.

They behave as the SQL adapters do where a service can tell: a unique key taken raises (DuplicateKey
where the SQL adapter raises it; DuplicateKey also stands in for the IntegrityError of the other
unique keys), a payment owns each life-cycle ledger transaction once (post_once answers None),
balances are computed from the entries (customers' from a cached sum, as in SQL), and lists come in
the order the SQL queries give them. What is handed out is a copy or frozen, so a service that
changes an object without saving it changes nothing stored, as with rows.

tests/test_repository_contract.py runs the same assertions against these and the SQL adapters;
a fake that drifts from SQL fails there.

Statement files and reconciliation runs are faked too; their CSV exports for the matcher are
written as the SQL adapter writes them on SQLite. The matcher itself is the real DuckDB one (it
needs no database). Carrier platforms' registry and the outbound store are faked as their SQL
adapters behave. Downlink counters are reserved for good, as on PostgreSQL: a rollback keeps them.
"""

import copy
import csv
import secrets
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

from gasworks.adapters.channels.rsa import RsaKeyChecks
from gasworks.adapters.meters.frame_security import FrameSecurityCodec
from gasworks.adapters.statements.matcher import DuckDbStatementMatcher
from gasworks.bootstrap import build_channel_gateway
from gasworks.config import Settings
from gasworks.domain.access import ApiKeyRecord
from gasworks.domain.accounts import Customer, CustomerClass, MeterKind
from gasworks.domain.carriers import CarrierDevice, CarrierPlatform, PlatformCommand, PlatformCommandStatus
from gasworks.domain.channels import Channel, ChannelKey, KeyStatus, PaymentNotice
from gasworks.domain.clock import Clock, FixedClock
from gasworks.domain.delivery import (
    OPEN_STATES,
    Alert,
    AlertKind,
    CommandEvent,
    CommandKind,
    CommandState,
    DeliveryPolicy,
    LinkState,
    MeterCommand,
    MeterLink,
    MeterModel,
    PurchaseSite,
)
from gasworks.domain.errors import DuplicateKey, InvalidInput
from gasworks.domain.kiosks import Kiosk
from gasworks.domain.ledger import (
    CACHED_BALANCE_KINDS,
    FIXED_ACCOUNTS,
    Entry,
    LedgerAccountKind,
    LedgerCheckFinding,
    LedgerTransaction,
    TransactionKind,
    kind_of,
    prepaid_account,
    presented_balance_fen,
)
from gasworks.domain.meter_models import BUILT_IN_MODELS
from gasworks.domain.meter_security import COUNTER_MAX, MeterFrameSecurity
from gasworks.domain.money import PAYMENT_FEN_ABSOLUTE_MAX, PaymentCeiling
from gasworks.domain.outbound import JobKind, JobState, OutboundJob
from gasworks.domain.payments import MONEY_SITS_IN, ONCE_PER_PAYMENT, OrderState, Payment, PaymentOrder, PaymentState
from gasworks.domain.statements import Discrepancy, DiscrepancyClass, DiscrepancyState, StatementFile, StatementLine
from gasworks.domain.tariffs import Tariff, Tier
from gasworks.services import ports
from gasworks.services.carrier_ports import CarrierRegistry
from gasworks.services.channel_gateway import (
    ChannelGateway,
    FetchedStatement,
    GatewayError,
    OrderAnswer,
    OrderStatus,
    RefundAnswer,
    RefundRequest,
    RefundState,
)
from gasworks.services.outbound_store import OutboundStore
from gasworks.services.statement_matching import ReadStatement, StatementMatcher
from gasworks.services.unit_of_work import KeyMaterialChecks, MeterFrames, UnitOfWork

T = TypeVar("T")


def _seeded_tariffs() -> dict[int, Tariff]:
    """What migration 0002 seeds, so a fresh fake prices gas as a fresh database does."""
    return {
        1: Tariff(CustomerClass.RESIDENTIAL, date(2000, 1, 1), (Tier(400_000, 299_000), Tier(1_680_000, 344_000), Tier(None, 434_000)), id=1),
        2: Tariff(CustomerClass.COMMERCIAL, date(2000, 1, 1), (Tier(None, 380_000),), id=2),
    }


@dataclass
class Tables:
    """The fake database: plain dicts and lists, deep-copied whole for a snapshot."""

    next_id: Counter[str] = field(default_factory=Counter)
    customers: dict[str, Customer] = field(default_factory=dict)
    meters: dict[str, MeterLink] = field(default_factory=dict)
    channels: dict[str, Channel] = field(default_factory=dict)
    channel_keys: dict[tuple[str, str, str], ChannelKey] = field(default_factory=dict)
    ledger_accounts: dict[str, list[Any]] = field(default_factory=lambda: {code: [LedgerAccountKind(code), 0] for code in FIXED_ACCOUNTS})
    ledger_transactions: dict[int, LedgerTransaction] = field(default_factory=dict)
    orders: dict[str, PaymentOrder] = field(default_factory=dict)
    payments: dict[str, Payment] = field(default_factory=dict)
    payment_received_at: dict[str, datetime] = field(default_factory=dict)
    nonces: dict[tuple[str, str], datetime] = field(default_factory=dict)
    rejections: dict[int, dict[str, Any]] = field(default_factory=dict)
    api_keys: dict[str, tuple[ApiKeyRecord, str]] = field(default_factory=dict)
    audit: dict[int, dict[str, Any]] = field(default_factory=dict)
    meter_models: dict[str, MeterModel] = field(default_factory=lambda: dict(BUILT_IN_MODELS))  # migration 0011 seeds them
    tariffs: dict[int, Tariff] = field(default_factory=_seeded_tariffs)
    commands: dict[int, MeterCommand] = field(default_factory=dict)  # events [] and events_saved = events_count, as a row
    command_times: dict[int, tuple[datetime, datetime]] = field(default_factory=dict)  # created_at, updated_at
    command_events: dict[int, list[CommandEvent]] = field(default_factory=dict)
    announced: list[str] = field(default_factory=list)
    kiosks: dict[str, Kiosk] = field(default_factory=dict)
    alerts: dict[int, Alert] = field(default_factory=dict)
    site_secrets: dict[str, str] = field(default_factory=dict)
    meter_security: dict[str, MeterFrameSecurity] = field(default_factory=dict)
    meter_keys: dict[tuple[str, int], tuple[bytes, datetime | None]] = field(default_factory=dict)
    statement_files: dict[int, StatementFile] = field(default_factory=dict)
    statement_lines: dict[int, tuple[StatementLine, ...]] = field(default_factory=dict)
    reconciliation_runs: dict[int, dict[str, Any]] = field(default_factory=dict)
    discrepancies: dict[int, Discrepancy] = field(default_factory=dict)
    carrier_devices: dict[str, CarrierDevice] = field(default_factory=dict)  # by serial
    carrier_pushes: dict[tuple[str, str], tuple[datetime, str | None]] = field(default_factory=dict)  # (platform, dedup_key) -> received_at, outcome
    carrier_commands: dict[tuple[str, str], PlatformCommand] = field(default_factory=dict)  # (platform, command_id)
    outbound_jobs: dict[tuple[str, str], tuple[OutboundJob, datetime]] = field(default_factory=dict)  # (kind, subject) -> job, updated_at
    channel_gateways: dict[str, str] = field(default_factory=dict)  # channel_id -> base_url

    def new_id(self, table: str) -> int:
        if table == "tariffs" and not self.next_id[table]:
            self.next_id[table] = len(self.tariffs)
        self.next_id[table] += 1
        return self.next_id[table]


class FakeDatabase:
    """What every fake unit of work of one test shares: the committed tables."""

    def __init__(self) -> None:
        self.tables = Tables()
        # Downlink counters handed out, kept whatever becomes of the unit of work that took them, as
        # PostgreSQL's reserve_downlink_counters commits them at once on a connection of its own.
        self.downlink_counters_taken: dict[str, int] = {}

    def restore(self, tables: Tables) -> None:
        """Back to `tables` (a rollback), all but the downlink counters taken for good."""
        self.tables = tables
        for serial, counter in self.downlink_counters_taken.items():
            security = tables.meter_security.get(serial)
            if security is not None and security.downlink_counter_sent < counter:
                security.downlink_counter_sent = counter


def _copy(value: T) -> T:
    return copy.deepcopy(value)


class _Repository:
    def __init__(self, db: FakeDatabase) -> None:
        self._db = db

    @property
    def _t(self) -> Tables:
        return self._db.tables


class FakeCustomers(_Repository):
    def add(self, customer: Customer) -> None:
        if customer.account_no in self._t.customers:
            raise DuplicateKey(f"customer {customer.account_no} exists")
        serial = customer.meter.serial
        if serial in self._t.meters or any(m.account_no == customer.account_no for m in self._t.meters.values()):
            raise DuplicateKey(f"meter {serial} exists")
        self._t.customers[customer.account_no] = _copy(customer)
        self._t.meters[serial] = MeterLink(serial=serial, account_no=customer.account_no, kind=customer.meter.kind)

    def exists(self, account_no: str) -> bool:
        return account_no in self._t.customers

    def meter_serial_taken(self, serial: str) -> bool:
        return serial in self._t.meters

    def get(self, account_no: str) -> Customer | None:
        return _copy(self._t.customers.get(account_no))

    def numbers_outside(self, prefix: str, limit: int) -> tuple[int, list[str]]:
        outside = sorted(no for no in self._t.customers if not no.startswith(prefix))
        return len(outside), outside[:limit]


class FakeChannels(_Repository):
    def get_recent(self, channel_id: str) -> Channel | None:
        return self.get(channel_id)  # no cache: as SQL with a ttl of 0

    def seal_plain_keys(self) -> int:
        return 0  # memory is not storage: nothing here was ever written out in the clear

    def add(self, channel: Channel, at: datetime) -> None:
        if channel.id in self._t.channels:
            raise DuplicateKey(f"channel {channel.id} exists")
        self._t.channels[channel.id] = replace(channel, keys=())
        for key in channel.keys:
            self.add_key(key)

    def add_key(self, key: ChannelKey) -> None:
        pk = (key.channel_id, key.key_id, key.purpose.value)
        if pk in self._t.channel_keys:
            raise DuplicateKey(f"channel key {pk} exists")
        if key.channel_id not in self._t.channels:
            raise LookupError(f"no channel {key.channel_id!r}")
        self._t.channel_keys[pk] = key

    def retire_key(self, channel_id: str, key_id: str, at: datetime) -> int:
        retired = 0
        for pk, key in self._t.channel_keys.items():
            if key.channel_id == channel_id and key.key_id == key_id and key.status == KeyStatus.ACTIVE:
                self._t.channel_keys[pk] = replace(key, status=KeyStatus.RETIRED)
                retired += 1
        return retired

    def get(self, channel_id: str) -> Channel | None:
        channel = self._t.channels.get(channel_id)
        if channel is None:
            return None
        keys = sorted((k for k in self._t.channel_keys.values() if k.channel_id == channel_id), key=lambda k: k.added_at or datetime.min.replace(tzinfo=UTC), reverse=True)
        return replace(channel, keys=tuple(keys))

    def list(self) -> list[Channel]:
        return [c for channel_id in sorted(self._t.channels) if (c := self.get(channel_id)) is not None]


_LIFE_CYCLE = frozenset(ONCE_PER_PAYMENT)


class FakeLedger(_Repository):
    def open_account(self, code: str, kind: LedgerAccountKind) -> None:
        if code in self._t.ledger_accounts:
            raise DuplicateKey(f"ledger account {code} is open already")
        self._t.ledger_accounts[code] = [kind, 0]

    def _owns(self, payment_id: str, kind: TransactionKind) -> bool:
        return any(t.payment_id == payment_id and t.kind == kind for t in self._t.ledger_transactions.values())

    def post(self, txn: LedgerTransaction) -> int:
        return self.post_many([txn])[0]

    def post_many(self, txns: Sequence[LedgerTransaction]) -> list[int]:
        """All or nothing, as the SQL statements are: everything is checked before anything is written."""
        owned: set[tuple[str, TransactionKind]] = set()
        for txn in txns:
            if txn.payment_id is not None and txn.kind in _LIFE_CYCLE:
                if (txn.payment_id, txn.kind) in owned or self._owns(txn.payment_id, txn.kind):
                    raise DuplicateKey(f"payment {txn.payment_id} already owns a {txn.kind} transaction")  # the partial unique index
                owned.add((txn.payment_id, txn.kind))
            for entry in txn.entries:
                if entry.account_code not in self._t.ledger_accounts:
                    raise LookupError(f"ledger account {entry.account_code!r} is not open")
        ids = []
        for txn in txns:
            txn_id = self._t.new_id("ledger_transactions")
            self._t.ledger_transactions[txn_id] = replace(txn, id=txn_id)
            for entry in txn.entries:
                if kind_of(entry.account_code) in CACHED_BALANCE_KINDS:
                    self._t.ledger_accounts[entry.account_code][1] += entry.amount_fen
            ids.append(txn_id)
        return ids

    def post_once(self, txn: LedgerTransaction) -> int | None:
        try:
            return self.post(txn)
        except DuplicateKey:
            return None

    def _entries(self) -> Iterator[tuple[LedgerTransaction, Entry]]:
        return ((t, e) for t in self._t.ledger_transactions.values() for e in t.entries)

    def balance_fen(self, account_no: str) -> int:
        code = prepaid_account(account_no)
        return presented_balance_fen(code, self.entries_sum_fen(code))

    def payment_net_fen(self, payment_id: str) -> int:
        return sum(e.amount_fen for t, e in self._entries() if t.payment_id == payment_id and t.kind in _LIFE_CYCLE and e.account_code.startswith("clearing:"))

    def entries_sum_fen(self, code: str) -> int:
        if kind_of(code) in CACHED_BALANCE_KINDS:
            if code not in self._t.ledger_accounts:
                raise LookupError(f"ledger account {code!r} is not open")
            return int(self._t.ledger_accounts[code][1])
        return sum(e.amount_fen for _, e in self._entries() if e.account_code == code)

    def purchases_fen(self, account_no: str) -> int:
        code = prepaid_account(account_no)
        return sum(e.amount_fen for t, e in self._entries() if e.account_code == code and t.kind == TransactionKind.PURCHASE)

    def totals_by_kind(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for _, e in self._entries():
            kind = str(self._t.ledger_accounts[e.account_code][0])
            totals[kind] = totals.get(kind, 0) + e.amount_fen
        return totals

    def find_violations(self, limit: int) -> list[LedgerCheckFinding]:
        findings: list[LedgerCheckFinding] = []
        txns = sorted(self._t.ledger_transactions.items())
        unbalanced = [(i, sum(e.amount_fen for e in t.entries)) for i, t in txns if sum(e.amount_fen for e in t.entries) != 0]
        findings += [LedgerCheckFinding("UNBALANCED_TRANSACTION", f"transaction {i}", f"sum {total} fen") for i, total in unbalanced[:limit]]
        lonely = [i for i, t in txns if len(t.entries) < 2]
        findings += [LedgerCheckFinding("TOO_FEW_ENTRIES", f"transaction {i}", "fewer than two entries") for i in lonely[:limit]]
        sums: dict[str, int] = defaultdict(int)
        for _, e in self._entries():
            sums[e.account_code] += e.amount_fen
        differs = [(code, cached) for code, (kind, cached) in self._t.ledger_accounts.items() if kind in CACHED_BALANCE_KINDS and cached != sums.get(code, 0)]
        findings += [LedgerCheckFinding("BALANCE_DIFFERS_FROM_ENTRIES", code, f"cached {cached} fen, entries sum {sums.get(code, 0)} fen") for code, cached in differs[:limit]]
        booked_kinds = (TransactionKind.PAYMENT_BOOKED, TransactionKind.PAYMENT_HELD)
        wrong = [
            (p.id, p.amount_fen, e.amount_fen)
            for _, t in txns
            if t.kind in booked_kinds and (p := self._t.payments.get(t.payment_id or "")) is not None
            for e in t.entries
            if e.account_code.startswith("clearing:") and e.amount_fen != p.amount_fen
        ]
        findings += [LedgerCheckFinding("PAYMENT_AMOUNT_DIFFERS_FROM_LEDGER", f"payment {pid}", f"payment {fen} fen, clearing debit {booked} fen") for pid, fen, booked in wrong[:limit]]
        nameless = [(i, t) for i, t in txns if (t.kind in _LIFE_CYCLE or t.kind == TransactionKind.PURCHASE) and (t.payment_id or "") not in self._t.payments]
        for i, t in nameless[:limit]:
            named = f"names payment {t.payment_id}, which does not exist" if t.payment_id else "names no payment"
            findings.append(LedgerCheckFinding("MONEY_MOVED_FOR_NO_PAYMENT", f"transaction {i}", f"{t.kind} {named}"))
        findings += self._money_not_where_state_says(limit)
        return findings

    def _money_not_where_state_says(self, limit: int) -> list[LedgerCheckFinding]:
        nets: dict[str, dict[LedgerAccountKind, int]] = {}
        elsewhere: dict[str, int] = defaultdict(int)
        for t, e in self._entries():
            payment = self._t.payments.get(t.payment_id or "")
            if payment is None or t.kind not in _LIFE_CYCLE:
                continue
            kind = LedgerAccountKind(self._t.ledger_accounts[e.account_code][0])
            net = nets.setdefault(payment.id, defaultdict(int))
            net[kind] += e.amount_fen
            if (kind == LedgerAccountKind.PREPAID and e.account_code != f"prepaid:{payment.account_no}") or (kind == LedgerAccountKind.CLEARING and e.account_code != f"clearing:{payment.channel_id}"):
                elsewhere[payment.id] += 1
        findings = []
        for payment_id in sorted(nets):  # the SQL groups by payment; its order is not promised
            p, net = self._t.payments[payment_id], nets[payment_id]
            clearing = net[LedgerAccountKind.CLEARING]
            holders = {k: net[k] for k in (LedgerAccountKind.PREPAID, LedgerAccountKind.SUSPENSE, LedgerAccountKind.REFUNDS)}
            holds = False
            if p.state in MONEY_SITS_IN and elsewhere[payment_id] == 0:
                holder = MONEY_SITS_IN[p.state]
                amount = clearing if p.state == PaymentState.ADJUSTED else p.amount_fen
                holds = clearing == (0 if holder is None else amount) and all(n == (0 if k != holder else -amount) for k, n in holders.items())
                holds = holds and (clearing > 0 if p.state == PaymentState.ADJUSTED else True)
            if not holds:
                prepaid, suspense, refunds = holders.values()
                findings.append(
                    LedgerCheckFinding(
                        "PAYMENT_MONEY_NOT_WHERE_STATE_SAYS",
                        f"payment {p.id}",
                        f"{p.state} {p.amount_fen} fen, its transactions net: clearing {clearing}, balance {-prepaid}, suspense {-suspense}, refunds in flight {-refunds} fen",
                    )  # fmt: skip
                )
        return findings[:limit]

    def payment_trails(self) -> list[tuple[str, str, str, int, str]]:
        owned: dict[str, list[str]] = defaultdict(list)
        for t in self._t.ledger_transactions.values():
            if t.payment_id is not None and t.kind in _LIFE_CYCLE:
                owned[t.payment_id].append(t.kind.value)
        groups: dict[tuple[str, str, str], list[str]] = defaultdict(list)
        for p in self._t.payments.values():
            path = ">".join(e.state.value for e in p.events)
            groups[(p.state.value, path, ",".join(sorted(owned[p.id])))].append(p.id)
        return [(state, path, kinds, len(ids), min(ids)) for (state, path, kinds), ids in groups.items()]

    def accounts_in_arrears(self) -> tuple[int, int]:
        owed = [cached for kind, cached in self._t.ledger_accounts.values() if kind == LedgerAccountKind.PREPAID and cached > 0]
        return len(owed), sum(owed)


class FakeOrders(_Repository):
    def add(self, order: PaymentOrder) -> None:
        if order.out_trade_no in self._t.orders:
            raise DuplicateKey(f"order {order.out_trade_no} exists")
        self._t.orders[order.out_trade_no] = _copy(order)

    def get(self, out_trade_no: str) -> PaymentOrder | None:
        return _copy(self._t.orders.get(out_trade_no))

    def count_created_since(self, account_no: str, since: datetime) -> int:
        return sum(1 for o in self._t.orders.values() if o.account_no == account_no and o.created_at > since)

    def mark_paid(self, out_trade_no: str, payment_id: str) -> bool:
        order = self._t.orders.get(out_trade_no)
        if order is None or order.state != OrderState.OPEN:
            return False
        order.state, order.payment_id = OrderState.PAID, payment_id
        return True


class FakePayments(_Repository):
    def claim(self, payment: Payment) -> None:
        if payment.id in self._t.payments or any((p.channel_id, p.channel_txn_id) == (payment.channel_id, payment.channel_txn_id) for p in self._t.payments.values()):
            raise DuplicateKey(f"payment {payment.channel_id}/{payment.channel_txn_id} already taken")
        # As the row: the payment's fields; its events are written by save_progress.
        self._t.payments[payment.id] = replace(_copy(payment), events=[])
        self._t.payment_received_at[payment.id] = payment.events[0].at

    def save_progress(self, payment: Payment, events_already_saved: int) -> None:
        stored = self._t.payments.get(payment.id)
        if stored is None:
            return  # an UPDATE of no row
        new_events = payment.events[events_already_saved:]
        if new_events and len(stored.events) > events_already_saved:
            raise DuplicateKey(f"payment {payment.id} already has event {events_already_saved + 1}")
        stored.state, stored.hold_reason, stored.account_no = payment.state, payment.hold_reason, payment.account_no
        stored.events.extend(_copy(new_events))

    def save_events(self, payment: Payment, events_already_saved: int) -> None:
        stored = self._t.payments.get(payment.id)
        new_events = payment.events[events_already_saved:]
        if not new_events:
            return
        if stored is None:
            raise LookupError(f"no payment {payment.id}")  # the events' foreign key
        if len(stored.events) > events_already_saved:
            raise DuplicateKey(f"payment {payment.id} already has event {events_already_saved + 1}")
        stored.events.extend(_copy(new_events))

    def transition(self, payment_id: str, from_state: PaymentState, to_state: PaymentState) -> bool:
        stored = self._t.payments.get(payment_id)
        if stored is None or stored.state != from_state:
            return False
        stored.state = to_state
        return True

    def get(self, payment_id: str) -> Payment | None:
        return _copy(self._t.payments.get(payment_id))

    def get_by_channel_txn(self, channel_id: str, channel_txn_id: str) -> Payment | None:
        return _copy(next((p for p in self._t.payments.values() if (p.channel_id, p.channel_txn_id) == (channel_id, channel_txn_id)), None))

    def _received_order(self, payments: list[Payment]) -> list[Payment]:
        return sorted(payments, key=lambda p: (self._t.payment_received_at[p.id], p.id))

    def list_for_account(self, account_no: str, limit: int) -> list[Payment]:
        mine = [p for p in self._t.payments.values() if p.account_no == account_no]
        newest_first = sorted(mine, key=lambda p: p.id)
        newest_first.sort(key=lambda p: self._t.payment_received_at[p.id], reverse=True)  # stable: ties stay by id, as SQL orders them
        return _copy(newest_first[:limit])

    def list_in_state(self, state: PaymentState, limit: int) -> list[Payment]:
        return _copy(self._received_order([p for p in self._t.payments.values() if p.state == state])[:limit])

    def every_claim(self, limit: int) -> list[tuple[str, str, int, str, str]]:
        return [(p.channel_id, p.channel_txn_id, p.amount_fen, p.state.value, p.id) for p in sorted(self._t.payments.values(), key=lambda p: p.id)][:limit]

    def totals_by_state(self, received_since: datetime | None = None, received_until: datetime | None = None) -> dict[str, tuple[int, int]]:
        totals: dict[str, tuple[int, int]] = {}
        for p in self._t.payments.values():
            received_at = self._t.payment_received_at[p.id]
            if (received_since is not None and received_at < received_since) or (received_until is not None and received_at >= received_until):
                continue
            n, fen = totals.get(p.state.value, (0, 0))
            totals[p.state.value] = (n + 1, fen + p.amount_fen)
        return totals


class FakeNonces(_Repository):
    def claim(self, channel_id: str, nonce: str, at: datetime) -> None:
        if (channel_id, nonce) in self._t.nonces:
            raise DuplicateKey(f"nonce {nonce!r} already used on channel {channel_id}")
        self._t.nonces[(channel_id, nonce)] = at

    def forget_older_than(self, cutoff: datetime) -> int:
        old = [key for key, seen_at in self._t.nonces.items() if seen_at < cutoff]
        for key in old:
            del self._t.nonces[key]
        return len(old)


class FakeRejections(_Repository):
    def add(
        self, *, at: datetime, channel_id: str, code: str, message: str, remote_addr: str, request_summary: dict[str, Any],
        caller: str | None = None, body_bytes: int | None = None, body_sha256: str | None = None,
    ) -> None:  # fmt: skip
        rejection_id = self._t.new_id("rejections")
        self._t.rejections[rejection_id] = {
            "id": rejection_id, "at": at, "channel_id": channel_id[:40], "code": code[:40], "message": message[:500], "remote_addr": remote_addr[:64],
            "request_summary": _copy(request_summary), "caller": caller[:140] if caller else None, "body_bytes": body_bytes, "body_sha256": body_sha256,
        }  # fmt: skip

    def list(self, *, limit: int, channel_id: str | None = None, code: str | None = None) -> list[dict[str, Any]]:
        rows = [
            r for _, r in sorted(self._t.rejections.items(), reverse=True)
            if (not channel_id or r["channel_id"] == channel_id) and (not code or r["code"] == code)
        ]  # fmt: skip
        return _copy(rows[:limit])


class FakeApiKeys(_Repository):
    def add(self, record: ApiKeyRecord, secret_sha256: str) -> None:
        if record.id in self._t.api_keys or any(sha == secret_sha256 for _, sha in self._t.api_keys.values()):
            raise DuplicateKey(f"API key {record.id} exists")
        self._t.api_keys[record.id] = (record, secret_sha256)

    def find_by_secret_sha256(self, secret_sha256: str) -> ApiKeyRecord | None:
        return next((record for record, sha in self._t.api_keys.values() if sha == secret_sha256), None)

    def list(self) -> list[ApiKeyRecord]:
        return sorted((record for record, _ in self._t.api_keys.values()), key=lambda r: r.created_at)

    def revoke(self, key_id: str, at: datetime) -> int:
        found = self._t.api_keys.get(key_id)
        if found is None or found[0].revoked_at is not None:
            return 0
        self._t.api_keys[key_id] = (replace(found[0], revoked_at=at), found[1])
        return 1


class FakeAuditLog(_Repository):
    def append(self, *, at: datetime, actor: str, action: str, subject: str, detail: dict[str, Any]) -> None:
        audit_id = self._t.new_id("audit")
        self._t.audit[audit_id] = {"id": audit_id, "at": at, "actor": actor, "action": action, "subject": subject, "detail": _copy(detail)}

    def count_actions(self, action: str) -> int:
        return sum(1 for r in self._t.audit.values() if r["action"] == action)

    def list(self, *, limit: int, subject: str | None = None) -> list[dict[str, Any]]:
        rows = [r for _, r in sorted(self._t.audit.items(), reverse=True) if not subject or r["subject"] == subject]
        return _copy(rows[:limit])


class FakeMeters(_Repository):
    def _out(self, link: MeterLink | None) -> MeterLink | None:
        if link is None:
            return None
        model = self._t.meter_models.get(link.model or "")
        return replace(_copy(link), seq_modulus=model.seq_modulus if model is not None else None)

    def get(self, serial: str, *, lock: bool = False) -> MeterLink | None:
        return self._out(self._t.meters.get(serial))

    def get_for_account(self, account_no: str, *, lock: bool = False) -> MeterLink | None:
        return self._out(next((m for m in self._t.meters.values() if m.account_no == account_no), None))

    def get_for_purchase(self, account_no: str) -> PurchaseSite | None:
        link = self.get_for_account(account_no)
        customer = self._t.customers.get(account_no)
        balance = self._t.ledger_accounts.get(prepaid_account(account_no))
        if link is None or customer is None or balance is None:
            return None  # the SQL inner-joins the customer and the prepaid account
        waiting = sum(1 for c in self._t.commands.values() if c.meter_serial == link.serial and c.state in OPEN_STATES)
        return PurchaseSite(link, customer.customer_class, int(balance[1]), waiting)

    def get_by_card(self, card_no: str, *, lock: bool = False) -> MeterLink | None:
        return self._out(next((m for m in self._t.meters.values() if m.card_no == card_no), None))

    def last_reports(self, serials: list[str]) -> dict[str, datetime | None]:
        return {s: self._t.meters[s].last_report_at for s in serials if s in self._t.meters}

    def lock_if_free(self, serial: str) -> MeterLink | None:
        return self.get(serial)  # one process, one unit of work at a time: always free

    def save(self, link: MeterLink) -> None:
        stored = self._t.meters.get(link.serial)
        if stored is None:
            return
        if link.card_no is not None and any(m.card_no == link.card_no and m.serial != link.serial for m in self._t.meters.values()):
            raise DuplicateKey(f"card {link.card_no} belongs to another meter")
        # The columns saved: everything but who the meter is and what its model's serial wraps at.
        self._t.meters[link.serial] = replace(_copy(link), account_no=stored.account_no, kind=stored.kind, seq_modulus=None)

    def _has_work(self, serial: str, now: datetime) -> bool:
        sent = (CommandState.SENT, CommandState.DELIVERED)
        return any(
            c.meter_serial == serial and c.route == MeterKind.IOT
            and (c.state == CommandState.PENDING or (c.state in sent and (c.next_send_at is None or c.next_send_at <= now)))
            for c in self._t.commands.values()
        )  # fmt: skip

    def claim_awake_with_work(self, now: datetime, limit: int) -> list[MeterLink]:
        """One process, one unit of work at a time: nothing is ever held by another worker, so nothing is skipped."""
        awake = [m for m in self._t.meters.values() if m.awake_until is not None and m.awake_until > now and self._has_work(m.serial, now)]
        return [link for m in sorted(awake, key=lambda m: m.awake_until or now)[:limit] if (link := self._out(m)) is not None]

    def silent_since(self, cutoff: datetime, limit: int, *, cutoff_by_model: Mapping[str, datetime] | None = None) -> list[str]:
        by_model = cutoff_by_model or {}
        return sorted(
            m.serial for m in self._t.meters.values()
            if m.kind == MeterKind.IOT and m.link_state == LinkState.ONLINE and m.last_report_at is not None
            and m.last_report_at < by_model.get(m.model or "", cutoff)
        )[:limit]  # fmt: skip

    def set_model(self, serial: str, model: MeterModel) -> None:
        stored = self._t.meters.get(serial)
        if stored is not None:
            stored.model, stored.reopen_needs_button = model.name, model.reopen_needs_button

    def set_reopen_needs_button(self, *, serial: str | None = None, model: str | None = None, value: bool) -> int:
        matched = [m for m in self._t.meters.values() if (m.serial == serial if serial is not None else m.model == model)]
        for m in matched:
            m.reopen_needs_button = value
        return len(matched)

    def claimed_beyond_issued(self, limit: int) -> list[tuple[str, int, int]]:
        return [(m.serial, m.applied_seq, m.purchase_seq_issued) for m in self._t.meters.values() if m.applied_seq > m.purchase_seq_issued][:limit]

    def count_by_link_state(self) -> dict[str, int]:
        return dict(Counter(m.link_state.value for m in self._t.meters.values() if m.kind == MeterKind.IOT))


class FakeMeterModels(_Repository):
    def add(self, model: MeterModel, at: datetime) -> bool:
        if model.name in self._t.meter_models:
            return False
        self._t.meter_models[model.name] = model
        return True

    def get(self, name: str) -> MeterModel | None:
        return self._t.meter_models.get(name)

    def set_reopen_needs_button(self, name: str, value: bool) -> None:
        if name in self._t.meter_models:
            self._t.meter_models[name] = replace(self._t.meter_models[name], reopen_needs_button=value)

    def list(self) -> list[MeterModel]:
        return [self._t.meter_models[name] for name in sorted(self._t.meter_models)]

    def count_meters(self) -> dict[str, int]:
        return dict(Counter(m.model for m in self._t.meters.values() if m.model is not None))


class FakeTariffs(_Repository):
    def add(self, tariff: Tariff, *, at: datetime, actor: str) -> int | None:
        if any((t.customer_class, t.effective_from) == (tariff.customer_class, tariff.effective_from) for t in self._t.tariffs.values()):
            return None
        tariff_id = self._t.new_id("tariffs")
        self._t.tariffs[tariff_id] = replace(tariff, id=tariff_id)
        return tariff_id

    def in_force(self, customer_class: CustomerClass, day: date) -> Tariff | None:
        candidates = [t for t in self._t.tariffs.values() if t.customer_class == customer_class and t.effective_from <= day]
        return max(candidates, key=lambda t: t.effective_from, default=None)

    def list(self) -> list[Tariff]:
        return sorted(self._t.tariffs.values(), key=lambda t: (t.customer_class.value, t.effective_from))


class FakeMeterCommands(_Repository):
    def _store(self, command: MeterCommand, created_at: datetime, updated_at: datetime) -> None:
        assert command.id is not None
        events = self._t.command_events.setdefault(command.id, [])
        events.extend(_copy(command.events))
        command.events_saved += len(command.events)
        command.events = []
        self._t.commands[command.id] = replace(_copy(command), note=command.note[:300], events=[], events_saved=len(events))
        self._t.command_times[command.id] = (created_at, updated_at)

    def add(self, command: MeterCommand) -> int:
        if command.purchase_seq is not None and self.credit_order(command.meter_serial, command.purchase_seq) is not None:
            raise DuplicateKey(f"meter {command.meter_serial} has purchase #{command.purchase_seq} already")
        if command.meter_serial not in self._t.meters:
            raise LookupError(f"no meter {command.meter_serial}")
        command.id = self._t.new_id("meter_commands")
        self._store(command, command.created_at, command.events[-1].at if command.events else command.created_at)
        return command.id

    def save(self, command: MeterCommand, at: datetime) -> None:
        if command.id not in self._t.commands:
            return
        self._store(command, self._t.command_times[command.id][0], at)

    def save_many(self, commands: list[MeterCommand], at: datetime) -> None:
        for command in commands:
            self.save(command, at)

    def _rows(self) -> list[MeterCommand]:
        return [self._t.commands[i] for i in sorted(self._t.commands)]

    def _with_events(self, command: MeterCommand) -> MeterCommand:
        assert command.id is not None
        return replace(_copy(command), events=_copy(self._t.command_events.get(command.id, [])), events_saved=0)

    def for_meter(self, serial: str, *, states: frozenset[CommandState] = OPEN_STATES, route: MeterKind | None = None) -> list[MeterCommand]:
        return _copy([c for c in self._rows() if c.meter_serial == serial and c.state in states and (route is None or c.route == route)])

    def for_meters(self, serials: list[str], *, route: MeterKind) -> dict[str, list[MeterCommand]]:
        wanted = set(serials)
        found: dict[str, list[MeterCommand]] = {}
        for c in self._rows():
            if c.meter_serial in wanted and c.state in OPEN_STATES and c.route == route:
                found.setdefault(c.meter_serial, []).append(_copy(c))
        return found

    def credit_order(self, serial: str, purchase_seq: int) -> MeterCommand | None:
        return _copy(next((c for c in self._rows() if c.meter_serial == serial and c.purchase_seq == purchase_seq), None))

    def get(self, command_id: int, *, with_events: bool = True) -> MeterCommand | None:
        command = self._t.commands.get(command_id)
        if command is None:
            return None
        return self._with_events(command) if with_events else _copy(command)

    def for_payment(self, payment_id: str) -> list[MeterCommand]:
        return [self._with_events(c) for c in self._rows() if c.payment_id == payment_id]

    def every_credit_order(self, limit: int) -> list[tuple[str, int, int, str]]:
        return [(c.meter_serial, c.purchase_seq or 0, c.volume_litres or 0, c.state.value) for c in self._rows() if c.kind == CommandKind.CREDIT][:limit]

    def purchase_waits_s(self, received_since: datetime, received_until: datetime, limit: int) -> list[int | None]:
        waits: list[int | None] = []
        for c in self._rows():
            received_at = self._t.payment_received_at.get(c.payment_id or "")
            if c.kind != CommandKind.CREDIT or received_at is None or not received_since <= received_at < received_until:
                continue
            applied = [e.at for e in self._t.command_events.get(c.id or 0, []) if e.state == CommandState.APPLIED]
            waits.append(max(0, int((min(applied) - received_at).total_seconds())) if applied else None)
        return waits[:limit]

    def recent(self, *, limit: int, states: list[CommandState] | None = None, serial: str | None = None) -> list[MeterCommand]:
        found = [c for c in reversed(self._rows()) if (not states or c.state in states) and (not serial or c.meter_serial == serial)]
        return _copy(found[:limit])

    def applied_credits_since(self, since: datetime, limit: int) -> list[MeterCommand]:
        found = [
            c for c in self._rows()
            if c.kind == CommandKind.CREDIT and c.state == CommandState.APPLIED and self._t.command_times[c.id or 0][1] >= since
        ]  # fmt: skip
        return _copy(found[:limit])

    def applied_without_proof(self, limit: int) -> list[tuple[str, int, int, int]]:
        found = []
        for c in self._rows():
            meter = self._t.meters.get(c.meter_serial)
            if meter is None or c.kind != CommandKind.CREDIT or c.state != CommandState.APPLIED or c.purchase_seq is None:
                continue
            if c.purchase_seq > meter.applied_seq or c.purchase_seq > meter.purchase_seq_issued:
                found.append((c.meter_serial, c.purchase_seq, meter.applied_seq, meter.purchase_seq_issued))
        return sorted(found)[:limit]

    def meters_with_due_expiry(self, now: datetime, limit: int) -> list[str]:
        due = {
            c.meter_serial for c in self._rows()
            if c.state in (CommandState.PENDING, CommandState.SENT) and c.expires_at is not None and c.expires_at <= now
        }  # fmt: skip
        return sorted(due)[:limit]

    def open_iot_credits_older_than(self, cutoff: datetime, limit: int) -> list[MeterCommand]:
        found = [c for c in self._rows() if c.state in OPEN_STATES and c.route == MeterKind.IOT and c.created_at < cutoff]
        return _copy(found[:limit])

    def payment_deliveries(self) -> list[dict[str, Any]]:
        rows = []
        payments = sorted(self._t.payments.values(), key=lambda p: self._t.payment_received_at[p.id])
        for p in payments:
            credits: list[MeterCommand | None] = [c for c in self._rows() if c.payment_id == p.id and c.kind == CommandKind.CREDIT] or [None]
            for c in credits:
                events = self._t.command_events.get(c.id or 0, []) if c is not None else []

                def first_at(state: CommandState, events: list[CommandEvent] = events) -> datetime | None:
                    return min((e.at for e in events if e.state == state), default=None)

                rows.append({
                    "payment_id": p.id, "channel_id": p.channel_id, "channel_txn_id": p.channel_txn_id, "amount_fen": p.amount_fen,
                    "account_no": p.account_no, "state": p.state.value, "hold_reason": p.hold_reason.value if p.hold_reason else None,
                    "paid_at": p.paid_at or self._t.payment_received_at[p.id], "received_at": self._t.payment_received_at[p.id],
                    "command_id": c.id if c else None, "route": c.route.value if c else None, "command_state": c.state.value if c else None,
                    "purchase_seq": c.purchase_seq if c else None, "volume_litres": c.volume_litres if c else None, "meter_serial": c.meter_serial if c else None,
                    "written_at": first_at(CommandState.WRITTEN_TO_CARD), "applied_at": first_at(CommandState.APPLIED),
                })  # fmt: skip
        return rows

    def announce(self, serial: str) -> None:
        self._t.announced.append(serial)  # kept only if the unit of work commits, as a NOTIFY is

    def count_open(self, serial: str) -> int:
        return sum(1 for c in self._t.commands.values() if c.meter_serial == serial and c.state in OPEN_STATES)

    def undelivered_cost_fen(self) -> int:
        return sum(
            c.cost_fen or 0 for c in self._t.commands.values()
            if c.kind == CommandKind.CREDIT and c.state not in (CommandState.APPLIED, CommandState.CANCELLED)
        )  # fmt: skip

    def counts_by_state(self) -> dict[tuple[str, str], int]:
        return dict(Counter((c.route.value, c.state.value) for c in self._t.commands.values()))


class FakeKiosks(_Repository):
    def add(self, kiosk: Kiosk, at: datetime) -> bool:
        if kiosk.id in self._t.kiosks:
            return False
        self._t.kiosks[kiosk.id] = _copy(kiosk)
        return True

    def set_status(self, kiosk_id: str, status: str) -> int:
        kiosk = self._t.kiosks.get(kiosk_id)
        if kiosk is None:
            return 0
        self._t.kiosks[kiosk_id] = replace(kiosk, status=status)
        return 1

    def list(self, *, status: str | None = None) -> list[Kiosk]:
        return _copy([self._t.kiosks[i] for i in sorted(self._t.kiosks) if not status or self._t.kiosks[i].status == status])


class FakeAlerts(_Repository):
    def _open(self, kind: str, subject: str) -> Alert | None:
        return next((a for a in self._t.alerts.values() if a.cleared_at is None and (a.kind, a.subject) == (kind, subject)), None)

    def raise_once(self, *, kind: AlertKind | str, subject: str, reason: str, at: datetime) -> bool:
        if self._open(str(kind), subject) is not None:
            return False
        alert_id = self._t.new_id("alerts")
        self._t.alerts[alert_id] = Alert(alert_id, str(kind), subject, reason[:500], at, None)
        return True

    def clear(self, *, kind: AlertKind | str, subject: str, at: datetime, resolved_by: str | None = None, resolution: str | None = None) -> int:
        alert = self._open(str(kind), subject)
        if alert is None:
            return 0
        self._t.alerts[alert.id] = replace(alert, cleared_at=at, resolved_by=resolved_by, resolution=resolution[:300] if resolution else None)
        return 1

    def get(self, alert_id: int) -> Alert | None:
        return self._t.alerts.get(alert_id)

    def open_of_kind(self, kind: AlertKind | str, limit: int) -> list[Alert]:
        return [a for _, a in sorted(self._t.alerts.items()) if a.kind == str(kind) and a.cleared_at is None][:limit]

    def list(self, *, limit: int, open_only: bool = True, subject: str | None = None) -> list[Alert]:
        found = [a for _, a in sorted(self._t.alerts.items(), reverse=True) if (not open_only or a.cleared_at is None) and (not subject or a.subject == subject)]
        return found[:limit]

    def count_open_by_kind(self) -> dict[str, int]:
        return dict(Counter(a.kind for a in self._t.alerts.values() if a.cleared_at is None))


class FakeSiteSecrets(_Repository):
    def get_or_create(self, name: str, at: datetime) -> str:
        return self._t.site_secrets.setdefault(name, secrets.token_urlsafe(32))


class FakeMeterKeys(_Repository):
    """Keys kept in clear: sealing them at rest is the SQL adapter's business, not the services'."""

    def site_key(self) -> bytes:
        return bytes(32)

    def _with_profile(self, security: MeterFrameSecurity) -> MeterFrameSecurity:
        """With the meter's model as it is now (meters.model -> meter_models), as the SQL reads it."""
        meter = self._t.meters.get(security.serial)
        profile = self._t.meter_models.get(meter.model or "") if meter is not None else None
        if profile is None:
            raise InvalidInput(f"meter {security.serial} has frame security but no known model: set one with `gasworks meters set {security.serial} --model`", code="METER_MODEL_MISSING")
        return replace(_copy(security), profile=profile)

    def get_security(self, serial: str, *, lock: bool = False) -> MeterFrameSecurity | None:
        security = self._t.meter_security.get(serial)
        return self._with_profile(security) if security is not None else None

    def add_security(self, security: MeterFrameSecurity) -> None:
        if security.serial in self._t.meter_security:
            raise DuplicateKey(f"meter {security.serial} has a security record")
        if security.serial not in self._t.meters:
            raise LookupError(f"no meter {security.serial}")
        self._t.meter_security[security.serial] = _copy(security)

    def save_security(self, security: MeterFrameSecurity) -> None:
        if security.serial in self._t.meter_security:
            self._t.meter_security[security.serial] = _copy(security)

    def _models_of_secured(self) -> list[str | None]:
        """meters.model of each meter with a security record, as the SQL joins them."""
        return [self._t.meters[serial].model for serial in self._t.meter_security if serial in self._t.meters]

    def models_in_use(self) -> set[str]:
        return {m for m in self._models_of_secured() if m is not None}

    def count_by_model(self) -> dict[str, int]:
        return {m: n for m, n in Counter(self._models_of_secured()).items() if m is not None}

    def add_key(self, serial: str, key_version: int, key: bytes, at: datetime) -> None:
        if (serial, key_version) in self._t.meter_keys:
            raise DuplicateKey(f"meter {serial} has key version {key_version}")
        self._t.meter_keys[(serial, key_version)] = (key, None)

    def key(self, serial: str, key_version: int) -> bytes | None:
        found = self._t.meter_keys.get((serial, key_version))
        return found[0] if found is not None and found[1] is None else None

    def reserve_downlink_counters(self, serials: Iterable[str]) -> dict[str, MeterFrameSecurity]:
        """Taken for good, as on PostgreSQL: a rollback of the caller's unit of work keeps them taken."""
        reserved = {}
        for serial in sorted(set(serials)):
            security = self._t.meter_security.get(serial)
            if security is None or security.active_key_version is None or security.downlink_counter_sent >= COUNTER_MAX:
                continue
            security.downlink_counter_sent += 1
            self._db.downlink_counters_taken[serial] = security.downlink_counter_sent
            reserved[serial] = self._with_profile(security)
        return reserved

    def retire_other_keys(self, serial: str, keep_version: int, at: datetime) -> int:
        retired = 0
        for (s, version), (key, retired_at) in list(self._t.meter_keys.items()):
            if s == serial and version != keep_version and retired_at is None:
                self._t.meter_keys[(s, version)] = (key, at)
                retired += 1
        return retired


def _write_csv(path: Path, header: str, rows: Iterable[Iterable[Any]]) -> int:
    """As the SQL adapter writes it on SQLite: empty for NULL, ISO 8601 for a time."""
    count = 0
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(header.split(","))
        for row in rows:
            writer.writerow(["" if v is None else (v.isoformat() if isinstance(v, datetime) else v) for v in row])
            count += 1
    return count


class FakeStatements(_Repository):
    def find(self, channel_id: str, statement_date: date, sha256: str) -> StatementFile | None:
        return next((f for f in self._t.statement_files.values() if (f.channel_id, f.statement_date, f.sha256) == (channel_id, statement_date, sha256)), None)

    def get(self, file_id: int) -> StatementFile | None:
        return self._t.statement_files.get(file_id)

    def add(self, *, channel_id: str, statement_date: date, format_: str, sha256: str, filename: str, statement: ReadStatement, at: datetime, actor: str) -> int | None:
        if self.find(channel_id, statement_date, sha256) is not None:
            return None
        file_id = self._t.new_id("statement_files")
        self._t.statement_files[file_id] = StatementFile(
            file_id, channel_id, statement_date, format_, sha256, filename[:200], statement.lines, statement.paid_total_fen, statement.fee_total_fen, at, actor
        )  # fmt: skip
        self._t.statement_lines[file_id] = tuple(x for batch in statement.batches(1_000) for x in batch)
        return file_id

    def export_lines(self, file_id: int, path: Path) -> int:
        rows = ((x.channel_txn_id, x.out_trade_no, x.account_no, x.amount_fen, x.fee_fen, x.status.value, x.line_no) for x in self._t.statement_lines.get(file_id, ()))
        return _write_csv(path, "channel_txn_id,out_trade_no,account_no,amount_fen,fee_fen,status,line_no", rows)

    def export_neighbour_txns(self, channel_id: str, date_from: date, date_to: date, exclude_file_id: int, path: Path) -> int:
        files = [f.id for f in self._t.statement_files.values() if f.channel_id == channel_id and date_from <= f.statement_date <= date_to and f.id != exclude_file_id]
        return _write_csv(path, "channel_txn_id", ((x.channel_txn_id,) for file_id in files for x in self._t.statement_lines[file_id]))


class FakeReconciliations(_Repository):
    def run_for_file(self, file_id: int) -> dict[str, Any] | None:
        return _copy(next((r for r in self._t.reconciliation_runs.values() if r["file_id"] == file_id), None))

    def get_run(self, run_id: int) -> dict[str, Any] | None:
        return _copy(self._t.reconciliation_runs.get(run_id))

    def add_run(
        self, *, channel_id: str, statement_date: date, file_id: int, started_at: datetime, finished_at: datetime, actor: str, verdict: str, totals: dict[str, Any], matched: int
    ) -> int:  # fmt: skip
        if self.run_for_file(file_id) is not None:
            raise DuplicateKey(f"statement file {file_id} was reconciled already")
        run_id = self._t.new_id("reconciliation_runs")
        self._t.reconciliation_runs[run_id] = {
            "id": run_id, "channel_id": channel_id, "statement_date": statement_date, "file_id": file_id, "started_at": started_at,
            "finished_at": finished_at, "actor": actor, "verdict": verdict, "totals": _copy(totals), "matched": matched,
        }  # fmt: skip
        return run_id

    def add_discrepancies(self, run_id: int, found: list[Discrepancy]) -> None:
        for d in found:
            discrepancy_id = self._t.new_id("discrepancies")
            self._t.discrepancies[discrepancy_id] = replace(
                d, id=discrepancy_id, run_id=run_id, detail=d.detail[:500], proposed_action=d.proposed_action[:300], resolved_at=None, resolved_by=None, resolution=None
            )  # fmt: skip

    def discrepancies(
        self, *, run_id: int | None = None, state: DiscrepancyState | None = None, klass: DiscrepancyClass | None = None, channel_id: str | None = None, limit: int
    ) -> list[Discrepancy]:  # fmt: skip
        found = [
            d for _, d in sorted(self._t.discrepancies.items())
            if (run_id is None or d.run_id == run_id) and (state is None or d.state == state) and (klass is None or d.klass == klass) and (channel_id is None or d.channel_id == channel_id)
        ]  # fmt: skip
        return _copy(found[:limit])

    def get_discrepancy(self, discrepancy_id: int) -> Discrepancy | None:
        return _copy(self._t.discrepancies.get(discrepancy_id))

    def settle(self, discrepancy_id: int, *, state: DiscrepancyState, at: datetime, by: str, resolution: str, from_state: DiscrepancyState | None = None) -> bool:
        d = self._t.discrepancies.get(discrepancy_id)
        if d is None or (from_state is not None and d.state != from_state):
            return False
        self._t.discrepancies[discrepancy_id] = replace(d, state=state, resolved_at=at, resolved_by=by, resolution=resolution[:300])
        return True

    def carried_over(self, channel_id: str, before: date) -> list[Discrepancy]:
        runs = self._t.reconciliation_runs
        return _copy([
            d for _, d in sorted(self._t.discrepancies.items())
            if d.channel_id == channel_id and d.state == DiscrepancyState.CARRIED_OVER and runs[d.run_id or 0]["statement_date"] < before
        ])  # fmt: skip

    def export_payments(self, channel_id: str, received_from: datetime, received_to: datetime, path: Path) -> int:
        rows = []
        for p in self._t.payments.values():
            received_at = self._t.payment_received_at[p.id]
            if p.channel_id != channel_id or not received_from <= received_at < received_to:
                continue
            credits: list[MeterCommand | None] = [c for _, c in sorted(self._t.commands.items()) if c.payment_id == p.id and c.kind == CommandKind.CREDIT] or [None]
            for c in credits:
                ordered_at = self._t.command_times[c.id][0] if c is not None and c.id is not None else None
                rows.append((
                    p.id, p.channel_txn_id, p.amount_fen, p.state.value, p.account_no, p.paid_at or received_at,
                    c.id if c else None, c.state.value if c else None, c.route.value if c else None, ordered_at,
                ))  # fmt: skip
        return _write_csv(path, "payment_id,channel_txn_id,amount_fen,state,account_no,paid_at,command_id,command_state,route,ordered_at", rows)


class FakeCarriers(_Repository):
    def add_device(self, device: CarrierDevice) -> bool:
        taken = device.serial in self._t.carrier_devices or any((d.platform, d.device_id) == (device.platform, device.device_id) for d in self._t.carrier_devices.values())
        if taken:
            return False
        if device.serial not in self._t.meters:
            raise LookupError(f"no meter {device.serial}")  # the foreign key
        self._t.carrier_devices[device.serial] = device
        return True

    def device_by_id(self, platform: CarrierPlatform, device_id: str) -> CarrierDevice | None:
        return next((d for d in self._t.carrier_devices.values() if (d.platform, d.device_id) == (platform, device_id)), None)

    def device_of(self, serial: str) -> CarrierDevice | None:
        return self._t.carrier_devices.get(serial)

    def set_online(self, platform: CarrierPlatform, device_id: str, online: bool, at: datetime) -> None:
        device = self.device_by_id(platform, device_id)
        if device is not None:
            self._t.carrier_devices[device.serial] = replace(device, online=online, online_changed_at=at)

    def count_devices(self, platform: CarrierPlatform) -> int:
        return sum(1 for d in self._t.carrier_devices.values() if d.platform == platform)

    def claim_push(self, platform: CarrierPlatform, dedup_key: str, *, at: datetime, kind: str, device_id: str) -> tuple[bool, str | None]:
        key = (platform.value, dedup_key)
        if key in self._t.carrier_pushes:
            return False, self._t.carrier_pushes[key][1]
        self._t.carrier_pushes[key] = (at, None)
        return True, None

    def settle_push(self, platform: CarrierPlatform, dedup_key: str, outcome: str) -> None:
        key = (platform.value, dedup_key)
        if key in self._t.carrier_pushes:
            self._t.carrier_pushes[key] = (self._t.carrier_pushes[key][0], outcome[:40])

    def release_push(self, platform: CarrierPlatform, dedup_key: str) -> None:
        key = (platform.value, dedup_key)
        if key in self._t.carrier_pushes and self._t.carrier_pushes[key][1] is None:
            del self._t.carrier_pushes[key]

    def forget_pushes_before(self, before: datetime) -> int:
        old = [key for key, (received_at, _) in self._t.carrier_pushes.items() if received_at < before]
        for key in old:
            del self._t.carrier_pushes[key]
        return len(old)

    def add_command(self, command: PlatformCommand) -> None:
        key = (command.platform.value, command.command_id)
        if key in self._t.carrier_commands:
            raise DuplicateKey(f"platform command {key} exists")
        self._t.carrier_commands[key] = command

    def command(self, platform: CarrierPlatform, command_id: str) -> PlatformCommand | None:
        return self._t.carrier_commands.get((platform.value, command_id))

    def latest_command(self, serial: str, frame_seq: int) -> PlatformCommand | None:
        found = [c for c in self._t.carrier_commands.values() if (c.serial, c.frame_seq) == (serial, frame_seq)]
        return max(found, key=lambda c: c.created_at, default=None)

    def set_command_status(self, platform: CarrierPlatform, command_id: str, status: PlatformCommandStatus, at: datetime) -> None:
        key = (platform.value, command_id)
        if key in self._t.carrier_commands:
            self._t.carrier_commands[key] = replace(self._t.carrier_commands[key], status=status, status_at=at)


class FakeOutbound(_Repository):
    def job(self, kind: JobKind, subject: str, *, lock: bool = False) -> OutboundJob | None:
        found = self._t.outbound_jobs.get((kind.value, subject))
        return _copy(found[0]) if found is not None else None

    def save_job(self, job: OutboundJob, at: datetime) -> None:
        if job.channel_id not in self._t.channels:
            raise LookupError(f"no channel {job.channel_id!r}")  # the foreign key
        self._t.outbound_jobs[(job.kind.value, job.subject)] = (replace(_copy(job), last_outcome=job.last_outcome[:300], step=job.step[:20]), at)

    def jobs(self, kind: JobKind, *, channel_id: str | None = None, limit: int = 100) -> list[OutboundJob]:
        found = [(job, at) for job, at in self._t.outbound_jobs.values() if job.kind == kind and (channel_id is None or job.channel_id == channel_id)]
        return _copy([job for job, _ in sorted(found, key=lambda pair: pair[1], reverse=True)[:limit]])

    def gateway_url(self, channel_id: str) -> str | None:
        return self._t.channel_gateways.get(channel_id)

    def set_gateway_url(self, channel_id: str, base_url: str, at: datetime) -> None:
        if channel_id not in self._t.channels:
            raise LookupError(f"no channel {channel_id!r}")  # the foreign key
        self._t.channel_gateways[channel_id] = base_url

    def gateway_channels(self) -> list[str]:
        return sorted(self._t.channel_gateways)

    def open_orders_due(self, channel_id: str, created_after: datetime, created_before: datetime, now: datetime, limit: int) -> list[PaymentOrder]:
        def due(out_trade_no: str) -> bool:
            found = self._t.outbound_jobs.get((JobKind.ORDER_QUERY.value, out_trade_no))
            return found is None or (found[0].state == JobState.WAITING and found[0].next_try_at <= now)

        found = [
            o for o in self._t.orders.values()
            if o.channel_id == channel_id and o.state == OrderState.OPEN and created_after < o.created_at <= created_before and due(o.out_trade_no)
        ]  # fmt: skip
        return _copy(sorted(found, key=lambda o: o.created_at)[:limit])

    def close_order(self, out_trade_no: str) -> bool:
        order = self._t.orders.get(out_trade_no)
        if order is None or order.state != OrderState.OPEN:
            return False
        order.state = OrderState.CLOSED
        return True


class FakeUnitOfWork:
    """Use as `with uow: ...; uow.commit()`, like SqlUnitOfWork: commit keeps the changes, leaving
    the block rolls back whatever was not committed (also changes made after a commit)."""

    def __init__(
        self, db: FakeDatabase, clock: Clock, *, delivery: DeliveryPolicy | None = None, local_timezone: str = "Asia/Shanghai",
        payment_ceiling: PaymentCeiling | None = None,
    ) -> None:  # fmt: skip
        self.db = db
        self.clock = clock
        self.delivery = delivery or DeliveryPolicy()
        self.payment_ceiling = payment_ceiling or PaymentCeiling(PAYMENT_FEN_ABSOLUTE_MAX)
        self.local_timezone = local_timezone
        self.key_checks: KeyMaterialChecks = RsaKeyChecks()
        self.frames: MeterFrames = FrameSecurityCodec()
        self._committed: Tables | None = None
        self.commits = 0
        self.customers: ports.CustomersRepository = FakeCustomers(db)
        self.channels: ports.ChannelsRepository = FakeChannels(db)
        self.ledger: ports.LedgerRepository = FakeLedger(db)
        self.orders: ports.OrdersRepository = FakeOrders(db)
        self.payments: ports.PaymentsRepository = FakePayments(db)
        self.nonces: ports.NoncesRepository = FakeNonces(db)
        self.rejections: ports.RejectionsRepository = FakeRejections(db)
        self.api_keys: ports.ApiKeysRepository = FakeApiKeys(db)
        self.audit: ports.AuditLogRepository = FakeAuditLog(db)
        self.meters: ports.MetersRepository = FakeMeters(db)
        self.meter_models: ports.MeterModelsRepository = FakeMeterModels(db)
        self.tariffs: ports.TariffsRepository = FakeTariffs(db)
        self.meter_commands: ports.MeterCommandsRepository = FakeMeterCommands(db)
        self.kiosks: ports.KiosksRepository = FakeKiosks(db)
        self.alerts: ports.AlertsRepository = FakeAlerts(db)
        self.site_secrets: ports.SiteSecretsRepository = FakeSiteSecrets(db)
        self.meter_keys: ports.MeterKeysRepository = FakeMeterKeys(db)
        self.statements: ports.StatementsRepository = FakeStatements(db)
        self.reconciliations: ports.ReconciliationsRepository = FakeReconciliations(db)
        self.carriers: CarrierRegistry = FakeCarriers(db)
        self.outbound: OutboundStore = FakeOutbound(db)
        # The real matcher, not a fake: DuckDB runs in process over the CSV files the fakes export.
        self.statement_matcher: StatementMatcher = DuckDbStatementMatcher()

    def recent_channel(self, channel_id: str) -> Channel | None:
        with self:
            return self.channels.get_recent(channel_id)

    def __enter__(self) -> "FakeUnitOfWork":
        if self._committed is not None:
            raise RuntimeError("unit of work is already open")
        self._committed = copy.deepcopy(self.db.tables)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._committed is not None
        self.db.restore(self._committed)  # what was committed; anything since is dropped
        self._committed = None

    def commit(self) -> None:
        if self._committed is None:
            raise RuntimeError("commit outside the unit of work")
        self._committed = copy.deepcopy(self.db.tables)
        self.commits += 1

    def rollback(self) -> None:
        assert self._committed is not None
        self.db.restore(copy.deepcopy(self._committed))


class FakeSystem:
    """Stands where tests use bootstrap's System for service calls: a clock and new units of work."""

    def __init__(self, clock: FixedClock, *, payment_ceiling: PaymentCeiling | None = None, delivery: DeliveryPolicy | None = None) -> None:
        self.clock = clock
        self.settings = Settings.model_construct()  # the defaults, not the environment: the worker reads its bounds here, as from a System
        self.db = FakeDatabase()
        self.payment_ceiling = payment_ceiling or PaymentCeiling(PAYMENT_FEN_ABSOLUTE_MAX)
        self.delivery = delivery or DeliveryPolicy()

    def new_uow(self) -> FakeUnitOfWork:
        return FakeUnitOfWork(self.db, self.clock, delivery=self.delivery, payment_ceiling=self.payment_ceiling)

    def channel_gateway(self, channel_id: str) -> ChannelGateway | None:
        """The real gateway, as System builds it, from the channel and base URL in the fake store."""
        return build_channel_gateway(channel_id, self.new_uow, self.settings, self.clock)


def _conforms(db: FakeDatabase) -> UnitOfWork:
    """mypy checks here that the fake unit of work and its fakes have the ports' shapes."""
    return FakeUnitOfWork(db, FixedClock(datetime(2026, 1, 1, tzinfo=UTC)))


class FakeChannel:
    """A payment channel in memory: the ChannelGateway port (services/channel_gateway.py), which
    order recovery asks. A test says what happened at the channel (`collect`); gasworks asks."""

    def __init__(self, channel_id: str, clock: Clock) -> None:
        self.channel_id = channel_id
        self._clock = clock
        self._collected: dict[str, PaymentNotice] = {}  # by out_trade_no
        self._refunds: dict[str, RefundAnswer] = {}  # by our refund number
        self.queries = 0

    def collect(self, out_trade_no: str, channel_txn_id: str, amount_fen: int) -> PaymentNotice:
        """The resident paid the order at the channel; no notification is sent by this."""
        notice = PaymentNotice(self.channel_id, channel_txn_id, amount_fen, self._clock.now(), out_trade_no=out_trade_no)
        self._collected[out_trade_no] = notice
        return notice

    def query_order(self, out_trade_no: str) -> OrderAnswer:
        self.queries += 1
        notice = self._collected.get(out_trade_no)
        return OrderAnswer(out_trade_no, OrderStatus.PAID if notice else OrderStatus.NOT_FOUND, notice)

    def refund(self, request: RefundRequest) -> RefundAnswer:
        """Idempotent by our refund number, as the channels are: asking twice refunds once."""
        if request.refund_no not in self._refunds:
            self._refunds[request.refund_no] = RefundAnswer(request.refund_no, RefundState.SUCCESS, request.refund_fen, f"R-{request.refund_no}", self._clock.now())
        return self._refunds[request.refund_no]

    def refund_status(self, refund_no: str, *, out_trade_no: str | None = None) -> RefundAnswer:
        if refund_no not in self._refunds:
            raise GatewayError("REFUND_NOT_FOUND", f"no refund {refund_no}", retryable=False)
        return self._refunds[refund_no]

    def fetch_statement(self, day: date) -> FetchedStatement:
        raise GatewayError("NO_STATEMENT", f"{self.channel_id} keeps no statements in memory", retryable=False)


def _channel_conforms(clock: Clock) -> ChannelGateway:
    """mypy checks here that the fake channel has the gateway port's shape."""
    return FakeChannel("wechat", clock)
