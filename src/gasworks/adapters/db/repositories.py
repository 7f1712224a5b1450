"""Repositories: the only code that speaks SQL. They map rows to domain objects and back."""

import functools
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import (
    Connection,
    Insert,
    Table,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    not_,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from gasworks.adapters.db import tables as t
from gasworks.domain.access import ApiKeyRecord
from gasworks.domain.accounts import (
    Customer,
    CustomerClass,
    Meter,
    MeterKind,
    MeterStatus,
)
from gasworks.domain.channels import (
    Channel,
    ChannelKey,
    ChannelKind,
    KeyPurpose,
    KeyStatus,
)
from gasworks.domain.errors import DuplicateKey
from gasworks.domain.ledger import (
    CACHED_BALANCE_KINDS,
    LedgerAccountKind,
    LedgerCheckFinding,
    LedgerTransaction,
    TransactionKind,
    kind_of,
    prepaid_account,
    presented_balance_fen,
)
from gasworks.domain.payments import (
    MONEY_SITS_IN,
    ONCE_PER_PAYMENT,
    HoldReason,
    OrderState,
    Payment,
    PaymentEvent,
    PaymentOrder,
    PaymentState,
)


class Customers:
    def __init__(self, c: Connection) -> None:
        self.c = c

    def add(self, customer: Customer) -> None:
        self.c.execute(
            insert(t.customers).values(
                account_no=customer.account_no,
                name=customer.name,
                address=customer.address,
                community=customer.community,
                grid=customer.grid,
                phone=customer.phone,
                customer_class=customer.customer_class.value,
                created_at=customer.created_at,
                latitude=customer.location[0] if customer.location else None,
                longitude=customer.location[1] if customer.location else None,
            )
        )
        self.c.execute(
            insert(t.meters).values(
                serial=customer.meter.serial,
                account_no=customer.account_no,
                kind=customer.meter.kind.value,
                status=customer.meter.status.value,
            )
        )

    def exists(self, account_no: str) -> bool:
        row = self.c.execute(select(t.customers.c.account_no).where(t.customers.c.account_no == account_no)).first()
        return row is not None

    def meter_serial_taken(self, serial: str) -> bool:
        return self.c.execute(select(t.meters.c.serial).where(t.meters.c.serial == serial)).first() is not None

    def _query(self):  # noqa: ANN202
        return select(t.customers, t.meters.c.serial, t.meters.c.kind, t.meters.c.status).join(t.meters, t.meters.c.account_no == t.customers.c.account_no)

    def numbers_outside(self, prefix: str, limit: int) -> tuple[int, list[str]]:
        outside = t.customers.c.account_no.not_like(f"{prefix}%")
        count = self.c.execute(select(func.count()).select_from(t.customers).where(outside)).scalar_one()
        examples = self.c.execute(select(t.customers.c.account_no).where(outside).order_by(t.customers.c.account_no).limit(limit)).scalars().all()
        return int(count), list(examples)

    def get(self, account_no: str) -> Customer | None:
        row = self.c.execute(self._query().where(t.customers.c.account_no == account_no)).first()
        return _customer(row) if row else None


def _customer(row: Any) -> Customer:
    return Customer(
        account_no=row.account_no,
        name=row.name,
        address=row.address,
        community=row.community,
        grid=row.grid,
        phone=row.phone,
        customer_class=CustomerClass(row.customer_class),
        meter=Meter(serial=row.serial, kind=MeterKind(row.kind), status=MeterStatus(row.status)),
        created_at=row.created_at,
        location=(row.latitude, row.longitude) if row.latitude is not None and row.longitude is not None else None,
    )


class ChannelCache:
    """Channels and their keys as one process last read them, for at most `ttl_s` seconds.

    Every notification needs its channel's keys, and keys change rarely (a rollover a year). A
    change made through this process (add a channel, add or retire a key) forgets the channel at
    once and again after its commit; another process sees it when its copy is `ttl_s` old. `ttl_s`
    0 reads the database every time."""

    ENTRIES_MAX = 1_000  # channels are configured by operators: far fewer than this

    def __init__(self, ttl_s: float, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._monotonic = monotonic
        self._entries: dict[str, tuple[float, Channel]] = {}
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self._monotonic()

    def get(self, channel_id: str) -> Channel | None:
        with self._lock:
            entry = self._entries.get(channel_id)
        if entry is None or self._monotonic() - entry[0] >= self.ttl_s:
            return None
        return entry[1]

    def put(self, channel: Channel, read_at: float) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.ENTRIES_MAX:
                self._entries.clear()
            self._entries[channel.id] = (read_at, channel)

    def forget(self, channel_id: str) -> None:
        with self._lock:
            self._entries.pop(channel_id, None)


SEALED_TEXT_PREFIX = "sealed:v1:"  # then the site key's id, ":", base64(nonce + AES-256-GCM ciphertext)


class TextSealer(Protocol):
    def seal_text(self, text: str, aad: str) -> str: ...
    def open_text(self, stored: str, aad: str) -> str: ...


class Channels:
    """Channels and their keys. Secret material (HMAC secrets, APIv3 keys, our private keys) is
    stored sealed under the site key, as meter keys are (adapters/db/meter_keys.py); a channel's
    public keys are stored as they are."""

    def __init__(self, c: Connection, cache: ChannelCache | None = None, *, sealer: TextSealer) -> None:
        self.c = c
        self.cache = cache or ChannelCache(0)
        self.sealer = sealer
        self.changed: set[str] = set()  # forgotten again once the unit of work commits

    def _changing(self, channel_id: str) -> None:
        self.changed.add(channel_id)
        self.cache.forget(channel_id)

    def get_recent(self, channel_id: str) -> Channel | None:
        """The channel and its keys, from this process's copy if it is younger than the cache's ttl."""
        channel = self.cache.get(channel_id)
        if channel is not None:
            return channel
        read_at = self.cache.clock()  # before the read: a change committed during it ages it out no later
        channel = self.get(channel_id)
        if channel is not None and channel_id not in self.changed:
            self.cache.put(channel, read_at)
        return channel

    def add(self, channel: Channel, at: datetime) -> None:
        self._changing(channel.id)
        self.c.execute(
            insert(t.channels).values(
                id=channel.id,
                kind=channel.kind.value,
                name=channel.name,
                merchant_id=channel.merchant_id,
                fee_ppm=channel.fee_ppm,
                created_at=at,
            )
        )
        for key in channel.keys:
            self.add_key(key)

    def add_key(self, key: ChannelKey) -> None:
        self._changing(key.channel_id)
        self.c.execute(
            insert(t.channel_keys).values(
                channel_id=key.channel_id,
                key_id=key.key_id,
                purpose=key.purpose.value,
                material=self._stored(key.channel_id, key.key_id, key.purpose, key.material),
                status=key.status.value,
                added_at=key.added_at,
            )
        )

    def retire_key(self, channel_id: str, key_id: str, at: datetime) -> int:
        self._changing(channel_id)
        result = self.c.execute(
            update(t.channel_keys)
            .where(
                t.channel_keys.c.channel_id == channel_id,
                t.channel_keys.c.key_id == key_id,
                t.channel_keys.c.status == KeyStatus.ACTIVE.value,
            )
            .values(status=KeyStatus.RETIRED.value, retired_at=at)
        )
        return result.rowcount

    def get(self, channel_id: str) -> Channel | None:
        row = self.c.execute(select(t.channels).where(t.channels.c.id == channel_id)).first()
        if row is None:
            return None
        keys = self.c.execute(select(t.channel_keys).where(t.channel_keys.c.channel_id == channel_id).order_by(t.channel_keys.c.added_at.desc()))
        return Channel(
            id=row.id,
            kind=ChannelKind(row.kind),
            name=row.name,
            merchant_id=row.merchant_id,
            fee_ppm=row.fee_ppm,
            keys=tuple(
                ChannelKey(
                    channel_id=k.channel_id,
                    key_id=k.key_id,
                    purpose=KeyPurpose(k.purpose),
                    material=self._material(k.channel_id, k.key_id, KeyPurpose(k.purpose), k.material),
                    status=KeyStatus(k.status),
                    added_at=k.added_at,
                )
                for k in keys
            ),
        )

    def seal_plain_keys(self) -> int:
        """Seal every secret key stored before keys were sealed; how many there were."""
        rows = self.c.execute(select(t.channel_keys).where(t.channel_keys.c.purpose != KeyPurpose.VERIFY_PUBLIC_KEY.value, t.channel_keys.c.material.not_like(f"{SEALED_TEXT_PREFIX}%"))).all()
        for k in rows:
            self._changing(k.channel_id)
            where = (t.channel_keys.c.channel_id == k.channel_id, t.channel_keys.c.key_id == k.key_id, t.channel_keys.c.purpose == k.purpose)
            self.c.execute(update(t.channel_keys).where(*where).values(material=self._stored(k.channel_id, k.key_id, KeyPurpose(k.purpose), k.material)))
        return len(rows)

    def _stored(self, channel_id: str, key_id: str, purpose: KeyPurpose, material: str) -> str:
        return material if purpose == KeyPurpose.VERIFY_PUBLIC_KEY else self.sealer.seal_text(material, _key_aad(channel_id, key_id, purpose))

    def _material(self, channel_id: str, key_id: str, purpose: KeyPurpose, stored: str) -> str:
        return stored if purpose == KeyPurpose.VERIFY_PUBLIC_KEY else self.sealer.open_text(stored, _key_aad(channel_id, key_id, purpose))

    def list(self) -> list[Channel]:
        ids = self.c.execute(select(t.channels.c.id).order_by(t.channels.c.id)).scalars().all()
        return [channel for channel_id in ids if (channel := self.get(channel_id)) is not None]


def _key_aad(channel_id: str, key_id: str, purpose: KeyPurpose) -> str:
    return f"gasworks channel key {channel_id} {key_id} {purpose.value}"


# The booking path's statements, built once (each execution binds its values).
_INSERT_LEDGER_TRANSACTIONS = insert(t.ledger_transactions).returning(t.ledger_transactions.c.id, sort_by_parameter_order=True)
_INSERT_LEDGER_ENTRIES = insert(t.ledger_entries)
_ADD_TO_CACHED_BALANCE = update(t.ledger_accounts).where(t.ledger_accounts.c.code == bindparam("account_code")).values(entries_sum_fen=t.ledger_accounts.c.entries_sum_fen + bindparam("net_fen"))
_INSERT_PAYMENT_EVENTS = insert(t.payment_events)


class Ledger:
    def __init__(self, c: Connection) -> None:
        self.c = c

    def open_account(self, code: str, kind: LedgerAccountKind) -> None:
        self.c.execute(insert(t.ledger_accounts).values(code=code, kind=kind.value, entries_sum_fen=0))

    def post(self, txn: LedgerTransaction) -> int:
        return self.post_many([txn])[0]

    def post_many(self, txns: Sequence[LedgerTransaction]) -> list[int]:
        """Post balanced transactions together: one INSERT of the transactions, one of all their
        entries, one UPDATE per cached balance they touch (by the net of their entries)."""
        if not txns:
            return []
        ids = list(self.c.execute(_INSERT_LEDGER_TRANSACTIONS, [{"kind": txn.kind.value, "payment_id": txn.payment_id, "at": txn.at, "memo": txn.memo} for txn in txns]).scalars())
        self.c.execute(
            _INSERT_LEDGER_ENTRIES,
            [{"transaction_id": txn_id, "account_code": e.account_code, "amount_fen": e.amount_fen} for txn_id, txn in zip(ids, txns, strict=True) for e in txn.entries],
        )
        # Only per-customer balances are cached: a channel's clearing account or suspense is touched
        # by every payment, and a cached sum there would be one hot row serialising all intake.
        net_fen: dict[str, int] = {}
        for txn in txns:
            for entry in txn.entries:
                if kind_of(entry.account_code) in CACHED_BALANCE_KINDS:
                    net_fen[entry.account_code] = net_fen.get(entry.account_code, 0) + entry.amount_fen
        # Sorted, so concurrent postings lock cached balances in one order and cannot deadlock.
        for code in sorted(net_fen):
            updated = self.c.execute(_ADD_TO_CACHED_BALANCE, {"account_code": code, "net_fen": net_fen[code]}).rowcount
            if updated != 1:
                raise LookupError(f"ledger account {code!r} is not open")
        return ids

    def post_once(self, txn: LedgerTransaction) -> int | None:
        """Post a payment's life-cycle transaction unless the payment already owns one of its kind
        (the unique index decides, also against a concurrent transaction): None then, and nothing
        of this one is written."""
        try:
            with self.c.begin_nested():
                return self.post(txn)
        except IntegrityError as error:
            message = str(error.orig)  # PostgreSQL names the index; SQLite names its columns
            if "uq_ledger_transactions_payment_kind" in message or "ledger_transactions.payment_id, ledger_transactions.kind" in message:
                return None
            raise

    def balance_fen(self, account_no: str) -> int:
        """A customer's prepaid balance as people read it (negative: arrears)."""
        code = prepaid_account(account_no)
        return presented_balance_fen(code, self.entries_sum_fen(code))

    def payment_net_fen(self, payment_id: str) -> int:
        """What a payment's own life-cycle transactions brought in from its channel and still hold."""
        e, lt = t.ledger_entries, t.ledger_transactions
        total = self.c.execute(
            select(func.coalesce(func.sum(e.c.amount_fen), 0)).join(lt, lt.c.id == e.c.transaction_id).where(lt.c.payment_id == payment_id, lt.c.kind.in_(_LIFE_CYCLE_KINDS), e.c.account_code.like("clearing:%"))
        ).scalar_one()
        return int(total)

    def entries_sum_fen(self, code: str) -> int:
        """Cached for customer balances (`check` proves it equals the entries), summed otherwise."""
        if kind_of(code) in CACHED_BALANCE_KINDS:
            cached = self.c.execute(select(t.ledger_accounts.c.entries_sum_fen).where(t.ledger_accounts.c.code == code)).scalar_one_or_none()
            if cached is None:
                raise LookupError(f"ledger account {code!r} is not open")
            return int(cached)
        total = self.c.execute(select(func.coalesce(func.sum(t.ledger_entries.c.amount_fen), 0)).where(t.ledger_entries.c.account_code == code)).scalar_one()
        return int(total)

    def purchases_fen(self, account_no: str) -> int:
        """Money of this account turned into gas, from its entries."""
        total = self.c.execute(
            select(func.coalesce(func.sum(t.ledger_entries.c.amount_fen), 0))
            .join(t.ledger_transactions, t.ledger_transactions.c.id == t.ledger_entries.c.transaction_id)
            .where(
                t.ledger_entries.c.account_code == prepaid_account(account_no),
                t.ledger_transactions.c.kind == TransactionKind.PURCHASE.value,
            )
        ).scalar_one()
        return int(total)

    def totals_by_kind(self) -> dict[str, int]:
        rows = self.c.execute(select(t.ledger_accounts.c.kind, func.sum(t.ledger_entries.c.amount_fen)).join(t.ledger_entries, t.ledger_entries.c.account_code == t.ledger_accounts.c.code).group_by(t.ledger_accounts.c.kind))
        return {kind: int(total or 0) for kind, total in rows}

    def find_violations(self, limit: int) -> list[LedgerCheckFinding]:
        """Every way the ledger could be wrong, each as a finding; empty means it holds."""
        findings: list[LedgerCheckFinding] = []
        entry_sums = select(t.ledger_entries.c.transaction_id, func.sum(t.ledger_entries.c.amount_fen).label("total")).group_by(t.ledger_entries.c.transaction_id).having(func.sum(t.ledger_entries.c.amount_fen) != 0).limit(limit)
        for row in self.c.execute(entry_sums):
            findings.append(LedgerCheckFinding("UNBALANCED_TRANSACTION", f"transaction {row.transaction_id}", f"sum {row.total} fen"))
        lonely = select(t.ledger_transactions.c.id).outerjoin(t.ledger_entries, t.ledger_entries.c.transaction_id == t.ledger_transactions.c.id).group_by(t.ledger_transactions.c.id).having(func.count(t.ledger_entries.c.id) < 2).limit(limit)
        for row in self.c.execute(lonely):
            findings.append(LedgerCheckFinding("TOO_FEW_ENTRIES", f"transaction {row.id}", "fewer than two entries"))
        actual = select(t.ledger_entries.c.account_code, func.sum(t.ledger_entries.c.amount_fen).label("total")).group_by(t.ledger_entries.c.account_code).subquery()
        cached_vs_entries = (
            select(t.ledger_accounts.c.code, t.ledger_accounts.c.entries_sum_fen, actual.c.total)
            .outerjoin(actual, actual.c.account_code == t.ledger_accounts.c.code)
            .where(
                t.ledger_accounts.c.kind.in_([k.value for k in CACHED_BALANCE_KINDS]),
                t.ledger_accounts.c.entries_sum_fen != func.coalesce(actual.c.total, 0),
            )
            .limit(limit)
        )
        for row in self.c.execute(cached_vs_entries):
            findings.append(
                LedgerCheckFinding(
                    "BALANCE_DIFFERS_FROM_ENTRIES",
                    row.code,
                    f"cached {row.entries_sum_fen} fen, entries sum {row.total or 0} fen",
                )
            )
        wrong_amount = (
            select(t.payments.c.id, t.payments.c.amount_fen, t.ledger_entries.c.amount_fen.label("booked_fen"))
            .join(t.ledger_transactions, t.ledger_transactions.c.payment_id == t.payments.c.id)
            .join(t.ledger_entries, t.ledger_entries.c.transaction_id == t.ledger_transactions.c.id)
            .where(
                t.ledger_transactions.c.kind.in_([TransactionKind.PAYMENT_BOOKED.value, TransactionKind.PAYMENT_HELD.value]),
                t.ledger_entries.c.account_code.like("clearing:%"),
                t.ledger_entries.c.amount_fen != t.payments.c.amount_fen,
            )
            .limit(limit)
        )
        for row in self.c.execute(wrong_amount):
            findings.append(
                LedgerCheckFinding(
                    "PAYMENT_AMOUNT_DIFFERS_FROM_LEDGER",
                    f"payment {row.id}",
                    f"payment {row.amount_fen} fen, clearing debit {row.booked_fen} fen",
                )
            )
        lt = t.ledger_transactions
        nameless = select(lt.c.id, lt.c.kind, lt.c.payment_id).outerjoin(t.payments, t.payments.c.id == lt.c.payment_id).where(lt.c.kind.in_(_LIFE_CYCLE_KINDS + [TransactionKind.PURCHASE.value]), t.payments.c.id.is_(None)).limit(limit)
        for row in self.c.execute(nameless):
            named = f"names payment {row.payment_id}, which does not exist" if row.payment_id else "names no payment"
            findings.append(LedgerCheckFinding("MONEY_MOVED_FOR_NO_PAYMENT", f"transaction {row.id}", f"{row.kind} {named}"))
        findings.extend(self._money_not_where_state_says(limit))
        return findings

    def payment_trails(self) -> list[tuple[str, str, str, int, str]]:
        """Payments grouped by (state, timeline path, life-cycle transactions owned): a handful of
        groups however many payments, each with a count and one payment to name. The caller checks
        each group against the life cycle."""
        postgres = self.c.dialect.name == "postgresql"
        kinds = ", ".join(f"'{k}'" for k in _LIFE_CYCLE_KINDS)  # our own enum values, not input
        if postgres:
            paths = "SELECT payment_id, string_agg(state, '>' ORDER BY seq) AS path FROM payment_events GROUP BY payment_id"
            owned = f"SELECT payment_id, string_agg(kind, ',' ORDER BY kind) AS kinds FROM ledger_transactions WHERE payment_id IS NOT NULL AND kind IN ({kinds}) GROUP BY payment_id"
        else:  # SQLite before 3.44 has no ORDER BY inside an aggregate; as a window function it has
            paths = "SELECT DISTINCT payment_id, group_concat(state, '>') OVER (PARTITION BY payment_id ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) AS path FROM payment_events"
            owned = f"SELECT payment_id, group_concat(kind, ',') AS kinds FROM (SELECT payment_id, kind FROM ledger_transactions WHERE payment_id IS NOT NULL AND kind IN ({kinds}) ORDER BY payment_id, kind) GROUP BY payment_id"
        rows = self.c.exec_driver_sql(
            f"WITH paths AS ({paths}), owned AS ({owned}) "
            "SELECT p.state, coalesce(paths.path, ''), coalesce(owned.kinds, ''), count(*), min(p.id) FROM payments p "
            "LEFT JOIN paths ON paths.payment_id = p.id LEFT JOIN owned ON owned.payment_id = p.id GROUP BY 1, 2, 3"
        )
        return [(state, path, kinds_, int(n), example) for state, path, kinds_, n, example in rows]

    def _money_not_where_state_says(self, limit: int) -> list[LedgerCheckFinding]:
        """Each payment's own transactions leave its money where its state says: all of it on the
        customer's balance when booked, in suspense when held, in refunds in flight when a refund is
        requested, none anywhere once reversed or refunded (an adjusted one: what the channel said)."""
        e, lt, a, p = t.ledger_entries, t.ledger_transactions, t.ledger_accounts, t.payments

        def net(kind: LedgerAccountKind):  # noqa: ANN202
            return func.coalesce(func.sum(case((a.c.kind == kind.value, e.c.amount_fen), else_=0)), 0)

        clearing, prepaid, suspense, refunds = (net(k) for k in (LedgerAccountKind.CLEARING, LedgerAccountKind.PREPAID, LedgerAccountKind.SUSPENSE, LedgerAccountKind.REFUNDS))
        # Money on a balance is on the payment's own account's balance, its clearing on its own channel's.
        elsewhere = func.coalesce(func.sum(case(
            (and_(a.c.kind == LedgerAccountKind.PREPAID.value, e.c.account_code != literal("prepaid:") + p.c.account_no), 1),
            (and_(a.c.kind == LedgerAccountKind.CLEARING.value, e.c.account_code != literal("clearing:") + p.c.channel_id), 1),
            else_=0,
        )), 0)  # fmt: skip
        nets = {LedgerAccountKind.PREPAID: prepaid, LedgerAccountKind.SUSPENSE: suspense, LedgerAccountKind.REFUNDS: refunds}
        expected = []
        for state, holder in MONEY_SITS_IN.items():
            amount = p.c.amount_fen if state != PaymentState.ADJUSTED else clearing
            in_clearing = clearing == (0 if holder is None else amount)
            rest = [n == (0 if k != holder else -amount) for k, n in nets.items()]
            expected.append(and_(p.c.state == state.value, in_clearing, elsewhere == 0, *rest, *([clearing > 0] if state == PaymentState.ADJUSTED else [])))
        query = (
            select(p.c.id, p.c.state, p.c.amount_fen, clearing.label("clearing"), prepaid.label("prepaid"), suspense.label("suspense"), refunds.label("refunds"))
            .select_from(p.join(lt, and_(lt.c.payment_id == p.c.id, lt.c.kind.in_(_LIFE_CYCLE_KINDS))).join(e, e.c.transaction_id == lt.c.id).join(a, a.c.code == e.c.account_code))
            .group_by(p.c.id, p.c.state, p.c.amount_fen)
            .having(not_(or_(*expected)))
            .limit(limit)
        )
        return [
            LedgerCheckFinding(
                "PAYMENT_MONEY_NOT_WHERE_STATE_SAYS",
                f"payment {row.id}",
                f"{row.state} {row.amount_fen} fen, its transactions net: clearing {row.clearing}, balance {-row.prepaid}, suspense {-row.suspense}, refunds in flight {-row.refunds} fen",
            )  # fmt: skip
            for row in self.c.execute(query)
        ]

    def accounts_in_arrears(self) -> tuple[int, int]:
        """Customers whose balance is below zero (a reversal after the gas was bought): count, fen owed."""
        la = t.ledger_accounts
        row = self.c.execute(select(func.count(), func.coalesce(func.sum(la.c.entries_sum_fen), 0)).where(la.c.kind == LedgerAccountKind.PREPAID.value, la.c.entries_sum_fen > 0)).one()
        return int(row[0]), int(row[1])


class Orders:
    def __init__(self, c: Connection) -> None:
        self.c = c

    def add(self, order: PaymentOrder) -> None:
        self.c.execute(
            insert(t.payment_orders).values(
                out_trade_no=order.out_trade_no,
                channel_id=order.channel_id,
                account_no=order.account_no,
                amount_fen=order.amount_fen,
                state=order.state.value,
                created_at=order.created_at,
                payment_id=order.payment_id,
            )
        )

    def get(self, out_trade_no: str) -> PaymentOrder | None:
        row = self.c.execute(select(t.payment_orders).where(t.payment_orders.c.out_trade_no == out_trade_no)).first()
        return _order(row) if row else None

    def count_created_since(self, account_no: str, since: datetime) -> int:
        o = t.payment_orders
        return self.c.execute(select(func.count()).select_from(o).where(o.c.account_no == account_no, o.c.created_at > since)).scalar_one()

    def mark_paid(self, out_trade_no: str, payment_id: str) -> bool:
        """True if this payment paid the order; False if another payment already had."""
        result = self.c.execute(
            update(t.payment_orders)
            .where(
                t.payment_orders.c.out_trade_no == out_trade_no,
                t.payment_orders.c.state == OrderState.OPEN.value,
            )
            .values(state=OrderState.PAID.value, payment_id=payment_id)
        )
        return result.rowcount == 1


def _order(row: Any) -> PaymentOrder:
    return PaymentOrder(
        out_trade_no=row.out_trade_no,
        channel_id=row.channel_id,
        account_no=row.account_no,
        amount_fen=row.amount_fen,
        state=OrderState(row.state),
        created_at=row.created_at,
        payment_id=row.payment_id,
    )


_LIFE_CYCLE_KINDS = sorted(k.value for k in ONCE_PER_PAYMENT)


def insert_unless_taken(c: Connection, table: Table) -> Insert:
    """INSERT ... ON CONFLICT DO NOTHING: no row returned means the key was taken, also by a concurrent
    transaction that committed while this one waited on the unique index. The transaction stays
    usable, so the caller can read the first answer in it."""
    return _unless_taken(c.dialect.name, table)


@functools.cache
def _unless_taken(dialect: str, table: Table) -> Insert:
    dialect_insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    return dialect_insert(table).on_conflict_do_nothing()  # generative: callers' .values() make copies


@functools.cache
def _claim_statement(dialect: str, table: Table, key: str) -> Insert:
    """`insert_unless_taken(...).returning(key)` built once per dialect and table, its values bound at
    execution: on the booking path, building a statement costs more CPU than sending it."""
    return _unless_taken(dialect, table).returning(table.c[key])


def claim_row(c: Connection, table: Table, key: str, values: dict[str, Any]) -> bool:
    """Insert the row unless its unique key is taken (see insert_unless_taken); True if it was inserted."""
    return c.execute(_claim_statement(c.dialect.name, table, key), values).first() is not None


class Payments:
    def __init__(self, c: Connection) -> None:
        self.c = c

    def claim(self, payment: Payment) -> None:
        """Insert the payment, in the state it was decided in, under its natural key (channel, channel transaction id).

        Raises DuplicateKey, with the transaction still usable, when the key is taken, also by a
        concurrent transaction that commits while we wait on the unique index.
        """
        inserted = claim_row(
            self.c,
            t.payments,
            "id",
            {
                "id": payment.id,
                "channel_id": payment.channel_id,
                "channel_txn_id": payment.channel_txn_id,
                "amount_fen": payment.amount_fen,
                "account_no": payment.account_no,
                "out_trade_no": payment.out_trade_no,
                "method": payment.method,
                "paid_at": payment.paid_at,
                "state": payment.state.value,
                "hold_reason": payment.hold_reason.value if payment.hold_reason else None,
                "received_at": payment.events[0].at,
            },
        )
        if not inserted:
            raise DuplicateKey(f"payment {payment.channel_id}/{payment.channel_txn_id} already taken")

    def save_progress(self, payment: Payment, events_already_saved: int) -> None:
        self.c.execute(
            update(t.payments)
            .where(t.payments.c.id == payment.id)
            .values(
                state=payment.state.value,
                hold_reason=payment.hold_reason.value if payment.hold_reason else None,
                account_no=payment.account_no,
            )
        )
        self.save_events(payment, events_already_saved)

    def save_events(self, payment: Payment, events_already_saved: int) -> None:
        new_events = payment.events[events_already_saved:]
        if new_events:
            self.c.execute(
                _INSERT_PAYMENT_EVENTS,
                [{"payment_id": payment.id, "seq": events_already_saved + i, "state": e.state.value, "at": e.at, "note": e.note} for i, e in enumerate(new_events, start=1)],
            )

    def transition(self, payment_id: str, from_state: PaymentState, to_state: PaymentState) -> bool:
        """Move one payment on only if it is still in `from_state`: two operators cannot both decide it."""
        return self.c.execute(update(t.payments).where(t.payments.c.id == payment_id, t.payments.c.state == from_state.value).values(state=to_state.value)).rowcount == 1

    def get(self, payment_id: str) -> Payment | None:
        row = self.c.execute(select(t.payments).where(t.payments.c.id == payment_id)).first()
        return self._with_events(row) if row else None

    def get_by_channel_txn(self, channel_id: str, channel_txn_id: str) -> Payment | None:
        row = self.c.execute(select(t.payments).where(t.payments.c.channel_id == channel_id, t.payments.c.channel_txn_id == channel_txn_id)).first()
        return self._with_events(row) if row else None

    def list_for_account(self, account_no: str, limit: int) -> list[Payment]:
        rows = self.c.execute(select(t.payments).where(t.payments.c.account_no == account_no).order_by(t.payments.c.received_at.desc(), t.payments.c.id).limit(limit))
        return [self._with_events(r) for r in rows]

    def list_in_state(self, state: PaymentState, limit: int) -> list[Payment]:
        rows = self.c.execute(select(t.payments).where(t.payments.c.state == state.value).order_by(t.payments.c.received_at, t.payments.c.id).limit(limit))
        return [self._with_events(r) for r in rows]

    def every_claim(self, limit: int) -> list[tuple[str, str, int, str, str]]:
        p = t.payments
        rows = self.c.execute(select(p.c.channel_id, p.c.channel_txn_id, p.c.amount_fen, p.c.state, p.c.id).order_by(p.c.id).limit(limit))
        return [(r.channel_id, r.channel_txn_id, int(r.amount_fen), r.state, r.id) for r in rows]

    def totals_by_state(self, received_since: datetime | None = None, received_until: datetime | None = None) -> dict[str, tuple[int, int]]:
        query = select(t.payments.c.state, func.count(), func.sum(t.payments.c.amount_fen)).group_by(t.payments.c.state)
        if received_since is not None:
            query = query.where(t.payments.c.received_at >= received_since)
        if received_until is not None:
            query = query.where(t.payments.c.received_at < received_until)
        rows = self.c.execute(query)
        return {state: (int(n), int(total or 0)) for state, n, total in rows}

    def _with_events(self, row: Any) -> Payment:
        events = self.c.execute(select(t.payment_events).where(t.payment_events.c.payment_id == row.id).order_by(t.payment_events.c.seq))
        return Payment(
            id=row.id,
            channel_id=row.channel_id,
            channel_txn_id=row.channel_txn_id,
            amount_fen=row.amount_fen,
            account_no=row.account_no,
            out_trade_no=row.out_trade_no,
            method=row.method,
            paid_at=row.paid_at,
            state=PaymentState(row.state),
            hold_reason=HoldReason(row.hold_reason) if row.hold_reason else None,
            events=[PaymentEvent(PaymentState(e.state), e.at, e.note) for e in events],
        )


class Nonces:
    def __init__(self, c: Connection) -> None:
        self.c = c

    def claim(self, channel_id: str, nonce: str, at: datetime) -> None:
        if not claim_row(self.c, t.used_nonces, "nonce", {"channel_id": channel_id, "nonce": nonce, "seen_at": at}):
            raise DuplicateKey(f"nonce {nonce!r} already used on channel {channel_id}")

    def forget_older_than(self, cutoff: datetime) -> int:
        """Nonces older than the timestamp tolerance can go: their timestamps are refused anyway."""
        return self.c.execute(t.used_nonces.delete().where(t.used_nonces.c.seen_at < cutoff)).rowcount


class Rejections:
    def __init__(self, c: Connection) -> None:
        self.c = c

    def add(
        self, *, at: datetime, channel_id: str, code: str, message: str, remote_addr: str, request_summary: dict,
        caller: str | None = None, body_bytes: int | None = None, body_sha256: str | None = None,
    ) -> None:  # fmt: skip
        self.c.execute(
            insert(t.intake_rejections).values(
                at=at,
                channel_id=channel_id[:40],
                code=code[:40],
                message=message[:500],
                remote_addr=remote_addr[:64],
                request_summary=request_summary,
                caller=caller[:140] if caller else None,
                body_bytes=body_bytes,
                body_sha256=body_sha256,
            )
        )

    def list(self, *, limit: int, channel_id: str | None = None, code: str | None = None) -> list[dict]:
        query = select(t.intake_rejections).order_by(t.intake_rejections.c.id.desc()).limit(limit)
        if channel_id:
            query = query.where(t.intake_rejections.c.channel_id == channel_id)
        if code:
            query = query.where(t.intake_rejections.c.code == code)
        return [dict(r._mapping) for r in self.c.execute(query)]


class ApiKeys:
    def __init__(self, c: Connection) -> None:
        self.c = c

    def add(self, record: ApiKeyRecord, secret_sha256: str) -> None:
        self.c.execute(
            insert(t.api_keys).values(
                id=record.id,
                name=record.name,
                role=record.role,
                channel_id=record.channel_id,
                secret_sha256=secret_sha256,
                created_at=record.created_at,
            )
        )

    def find_by_secret_sha256(self, secret_sha256: str) -> ApiKeyRecord | None:
        row = self.c.execute(select(t.api_keys).where(t.api_keys.c.secret_sha256 == secret_sha256)).first()
        return _api_key(row) if row else None

    def list(self) -> list[ApiKeyRecord]:
        return [_api_key(r) for r in self.c.execute(select(t.api_keys).order_by(t.api_keys.c.created_at))]

    def revoke(self, key_id: str, at: datetime) -> int:
        return self.c.execute(update(t.api_keys).where(t.api_keys.c.id == key_id, t.api_keys.c.revoked_at.is_(None)).values(revoked_at=at)).rowcount


def _api_key(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(row.id, row.name, row.role, row.channel_id, row.created_at, row.revoked_at)


class AuditLog:
    def __init__(self, c: Connection) -> None:
        self.c = c

    def append(self, *, at: datetime, actor: str, action: str, subject: str, detail: dict) -> None:
        self.c.execute(insert(t.audit_log).values(at=at, actor=actor, action=action, subject=subject, detail=detail))

    def count_actions(self, action: str) -> int:
        return int(self.c.execute(select(func.count()).where(t.audit_log.c.action == action)).scalar_one())

    def list(self, *, limit: int, subject: str | None = None) -> list[dict]:
        query = select(t.audit_log).order_by(t.audit_log.c.id.desc()).limit(limit)
        if subject:
            query = query.where(t.audit_log.c.subject == subject)
        return [dict(r._mapping) for r in self.c.execute(query)]
