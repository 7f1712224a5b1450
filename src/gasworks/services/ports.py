"""The ports the use cases talk through: one Protocol per repository, owned by the services layer.

The SQL adapters in `adapters/db` implement them for SQLite and PostgreSQL. A service sees only
these shapes, never a table or a connection.
"""

from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any, Protocol

from gasworks.domain.access import ApiKeyRecord
from gasworks.domain.accounts import Customer, CustomerClass, MeterKind
from gasworks.domain.channels import Channel, ChannelKey
from gasworks.domain.delivery import OPEN_STATES, Alert, AlertKind, CommandState, MeterCommand, MeterLink, MeterModel, PurchaseSite
from gasworks.domain.kiosks import Kiosk
from gasworks.domain.ledger import LedgerAccountKind, LedgerCheckFinding, LedgerTransaction
from gasworks.domain.meter_security import MeterFrameSecurity
from gasworks.domain.payments import Payment, PaymentOrder, PaymentState
from gasworks.domain.statements import Discrepancy, DiscrepancyClass, DiscrepancyState, StatementFile
from gasworks.domain.tariffs import Tariff
from gasworks.services.statement_matching import ReadStatement


class CustomersRepository(Protocol):
    def add(self, customer: Customer) -> None: ...

    def exists(self, account_no: str) -> bool: ...

    def meter_serial_taken(self, serial: str) -> bool: ...

    def get(self, account_no: str) -> Customer | None: ...

    def numbers_outside(self, prefix: str, limit: int) -> tuple[int, list[str]]:
        """Accounts whose number does not start with `prefix` (a province city's code): how many, and up to `limit` of them."""
        ...


class ChannelsRepository(Protocol):
    def get_recent(self, channel_id: str) -> Channel | None:
        """The channel and its keys, from this process's copy if it is younger than the cache's ttl."""
        ...

    def add(self, channel: Channel, at: datetime) -> None: ...

    def add_key(self, key: ChannelKey) -> None: ...

    def retire_key(self, channel_id: str, key_id: str, at: datetime) -> int: ...

    def seal_plain_keys(self) -> int:
        """Seal under the site key every secret key stored before keys were sealed; how many there were."""
        ...

    def get(self, channel_id: str) -> Channel | None: ...

    def list(self) -> list[Channel]: ...


class LedgerRepository(Protocol):
    def open_account(self, code: str, kind: LedgerAccountKind) -> None: ...

    def post(self, txn: LedgerTransaction) -> int: ...

    def post_many(self, txns: Sequence[LedgerTransaction]) -> list[int]:
        """Post balanced transactions together: one INSERT of the transactions, one of all their
        entries, one UPDATE per cached balance they touch (by the net of their entries)."""
        ...

    def post_once(self, txn: LedgerTransaction) -> int | None:
        """Post a payment's life-cycle transaction unless the payment already owns one of its kind
        (the unique index decides, also against a concurrent transaction): None then, and nothing
        of this one is written."""
        ...

    def balance_fen(self, account_no: str) -> int:
        """A customer's prepaid balance as people read it (negative: arrears)."""
        ...

    def payment_net_fen(self, payment_id: str) -> int:
        """What a payment's own life-cycle transactions brought in from its channel and still hold."""
        ...

    def entries_sum_fen(self, code: str) -> int:
        """Cached for customer balances (`check` proves it equals the entries), summed otherwise."""
        ...

    def purchases_fen(self, account_no: str) -> int:
        """Money of this account turned into gas, from its entries."""
        ...

    def totals_by_kind(self) -> dict[str, int]: ...

    def find_violations(self, limit: int) -> list[LedgerCheckFinding]:
        """Every way the ledger could be wrong, each as a finding; empty means it holds."""
        ...

    def payment_trails(self) -> list[tuple[str, str, str, int, str]]:
        """Payments grouped by (state, timeline path, life-cycle transactions owned): a handful of
        groups however many payments, each with a count and one payment to name. The caller checks
        each group against the life cycle."""
        ...

    def accounts_in_arrears(self) -> tuple[int, int]:
        """Customers whose balance is below zero (a reversal after the gas was bought): count, fen owed."""
        ...


class OrdersRepository(Protocol):
    def add(self, order: PaymentOrder) -> None: ...

    def get(self, out_trade_no: str) -> PaymentOrder | None: ...

    def count_created_since(self, account_no: str, since: datetime) -> int: ...

    def mark_paid(self, out_trade_no: str, payment_id: str) -> bool:
        """True if this payment paid the order; False if another payment already had."""
        ...


class PaymentsRepository(Protocol):
    def claim(self, payment: Payment) -> None:
        """Insert the payment, in the state it was decided in, under its natural key (channel, channel transaction id).

        Raises DuplicateKey, with the transaction still usable, when the key is taken, also by a
        concurrent transaction that commits while we wait on the unique index.
        """
        ...

    def save_progress(self, payment: Payment, events_already_saved: int) -> None: ...

    def save_events(self, payment: Payment, events_already_saved: int) -> None: ...

    def transition(self, payment_id: str, from_state: PaymentState, to_state: PaymentState) -> bool:
        """Move one payment on only if it is still in `from_state`: two operators cannot both decide it."""
        ...

    def get(self, payment_id: str) -> Payment | None: ...

    def get_by_channel_txn(self, channel_id: str, channel_txn_id: str) -> Payment | None: ...

    def list_for_account(self, account_no: str, limit: int) -> list[Payment]: ...

    def list_in_state(self, state: PaymentState, limit: int) -> list[Payment]: ...

    def every_claim(self, limit: int) -> list[tuple[str, str, int, str, str]]:
        """(channel id, channel transaction id, amount fen, state, payment id) of every payment: what an auditor's snapshot reads."""
        ...

    def totals_by_state(self, received_since: datetime | None = None, received_until: datetime | None = None) -> dict[str, tuple[int, int]]:
        """state → (count, fen), of every payment or of those received in [since, until)."""
        ...


class NoncesRepository(Protocol):
    def claim(self, channel_id: str, nonce: str, at: datetime) -> None: ...

    def forget_older_than(self, cutoff: datetime) -> int:
        """Nonces older than the timestamp tolerance can go: their timestamps are refused anyway."""
        ...


class RejectionsRepository(Protocol):
    def add(self, *, at: datetime, channel_id: str, code: str, message: str, remote_addr: str, request_summary: dict[str, Any], caller: str | None = None, body_bytes: int | None = None, body_sha256: str | None = None) -> None: ...

    def list(self, *, limit: int, channel_id: str | None = None, code: str | None = None) -> list[dict[str, Any]]: ...


class ApiKeysRepository(Protocol):
    def add(self, record: ApiKeyRecord, secret_sha256: str) -> None: ...

    def find_by_secret_sha256(self, secret_sha256: str) -> ApiKeyRecord | None: ...

    def list(self) -> list[ApiKeyRecord]: ...

    def revoke(self, key_id: str, at: datetime) -> int: ...


class AuditLogRepository(Protocol):
    def append(self, *, at: datetime, actor: str, action: str, subject: str, detail: dict[str, Any]) -> None: ...

    def count_actions(self, action: str) -> int: ...

    def list(self, *, limit: int, subject: str | None = None) -> list[dict[str, Any]]: ...


class MetersRepository(Protocol):
    def get(self, serial: str, *, lock: bool = False) -> MeterLink | None: ...

    def get_for_account(self, account_no: str, *, lock: bool = False) -> MeterLink | None: ...

    def get_for_purchase(self, account_no: str) -> PurchaseSite | None:
        """The account's meter, locked (the meter first, then the balance, everywhere), with its
        customer's class, cached balance and waiting commands in the same round trip."""
        ...

    def get_by_card(self, card_no: str, *, lock: bool = False) -> MeterLink | None: ...

    def last_reports(self, serials: list[str]) -> dict[str, datetime | None]:
        """When each of these meters last reported (None: never), in one read; unknown serials are left out."""
        ...

    def lock_if_free(self, serial: str) -> MeterLink | None:
        """The meter, locked for this transaction; None if another worker holds it (PostgreSQL)."""
        ...

    def claim_awake_with_work(self, now: datetime, limit: int) -> list[MeterLink]:
        """Up to `limit` awake IoT meters with a command to send or resend, locked for this
        transaction; on PostgreSQL a meter another worker holds is skipped (FOR UPDATE SKIP LOCKED),
        so concurrent dispatchers take disjoint batches instead of queueing behind each other."""
        ...

    def save(self, link: MeterLink) -> None: ...

    def silent_since(self, cutoff: datetime, limit: int, *, cutoff_by_model: Mapping[str, datetime] | None = None) -> list[str]:
        """Online IoT meters whose last report is before `cutoff`, or before their model's own cutoff where one is given."""
        ...

    def set_model(self, serial: str, model: MeterModel) -> None:
        """A meter takes a model, and the model's button setting with it."""
        ...

    def set_reopen_needs_button(self, *, serial: str | None = None, model: str | None = None, value: bool) -> int:
        """For one meter, or for every meter of a model; returns how many meters changed."""
        ...

    def claimed_beyond_issued(self, limit: int) -> list[tuple[str, int, int]]:
        """(serial, applied, issued) for meters whose applied serial is above what was ever issued."""
        ...

    def count_by_link_state(self) -> dict[str, int]: ...


class MeterModelsRepository(Protocol):
    def add(self, model: MeterModel, at: datetime) -> bool: ...

    def get(self, name: str) -> MeterModel | None: ...

    def set_reopen_needs_button(self, name: str, value: bool) -> None: ...

    def list(self) -> list[MeterModel]: ...

    def count_meters(self) -> dict[str, int]: ...


class TariffsRepository(Protocol):
    def add(self, tariff: Tariff, *, at: datetime, actor: str) -> int | None:
        """None if a version for this class and day exists already: versions are never edited."""
        ...

    def in_force(self, customer_class: CustomerClass, day: date) -> Tariff | None: ...

    def list(self) -> list[Tariff]: ...


class MeterCommandsRepository(Protocol):
    def add(self, command: MeterCommand) -> int: ...

    def save(self, command: MeterCommand, at: datetime) -> None: ...

    def save_many(self, commands: list[MeterCommand], at: datetime) -> None:
        """`save` for a batch, in two statements (one UPDATE and one INSERT of events, each executed many)."""
        ...

    def for_meter(self, serial: str, *, states: frozenset[CommandState] = OPEN_STATES, route: MeterKind | None = None) -> list[MeterCommand]:
        """Commands to change, in the order they must reach the meter: purchases by serial, then the rest."""
        ...

    def for_meters(self, serials: list[str], *, route: MeterKind) -> dict[str, list[MeterCommand]]:
        """`for_meter` (open states) for many meters in one query: serial -> its commands in order."""
        ...

    def credit_order(self, serial: str, purchase_seq: int) -> MeterCommand | None: ...

    def get(self, command_id: int, *, with_events: bool = True) -> MeterCommand | None: ...

    def for_payment(self, payment_id: str) -> list[MeterCommand]: ...

    def every_credit_order(self, limit: int) -> list[tuple[str, int, int, str]]:
        """(meter serial, purchase serial, litres, state) of every credit order: what an auditor's snapshot reads."""
        ...

    def purchase_waits_s(self, received_since: datetime, received_until: datetime, limit: int) -> list[int | None]:
        """For each purchase whose payment was received in [since, until): seconds from the payment
        received to the meter's first report of it applied, or None while it is not."""
        ...

    def recent(self, *, limit: int, states: list[CommandState] | None = None, serial: str | None = None) -> list[MeterCommand]: ...

    def applied_credits_since(self, since: datetime, limit: int) -> list[MeterCommand]:
        """Credit orders applied at or after `since` (applied is final, so its time is the last update)."""
        ...

    def applied_without_proof(self, limit: int) -> list[tuple[str, int, int, int]]:
        """Applied credit orders their meter's record does not cover: (serial, purchase serial,
        meter's applied serial, highest issued). Every applied purchase must be at or below both."""
        ...

    def meters_with_due_expiry(self, now: datetime, limit: int) -> list[str]: ...

    def open_iot_credits_older_than(self, cutoff: datetime, limit: int) -> list[MeterCommand]: ...

    def payment_deliveries(self) -> list[dict[str, Any]]:
        """Every payment with its purchase, if any, and when the purchase was written to a card and
        applied: the facts behind a delivery report (one row per payment)."""
        ...

    def announce(self, serial: str) -> None:
        """Tell listening workers, at commit, that this meter has work (PostgreSQL NOTIFY; they poll on SQLite)."""
        ...

    def count_open(self, serial: str) -> int: ...

    def undelivered_cost_fen(self) -> int:
        """What every credit order not yet applied (and not cancelled) cost: the delivery account's balance."""
        ...

    def counts_by_state(self) -> dict[tuple[str, str], int]: ...


class KiosksRepository(Protocol):
    def add(self, kiosk: Kiosk, at: datetime) -> bool: ...

    def set_status(self, kiosk_id: str, status: str) -> int: ...

    def list(self, *, status: str | None = None) -> list[Kiosk]: ...


class AlertsRepository(Protocol):
    def raise_once(self, *, kind: AlertKind | str, subject: str, reason: str, at: datetime) -> bool:
        """Open an alert unless one is open for the same kind and subject; True if it is new."""
        ...

    def clear(self, *, kind: AlertKind | str, subject: str, at: datetime, resolved_by: str | None = None, resolution: str | None = None) -> int: ...

    def get(self, alert_id: int) -> Alert | None: ...

    def open_of_kind(self, kind: AlertKind | str, limit: int) -> list[Alert]: ...

    def list(self, *, limit: int, open_only: bool = True, subject: str | None = None) -> list[Alert]: ...

    def count_open_by_kind(self) -> dict[str, int]: ...


class SiteSecretsRepository(Protocol):
    def get_or_create(self, name: str, at: datetime) -> str:
        """A random secret made once per installation (the first caller's wins, also under a race)."""
        ...


class MeterKeysRepository(Protocol):
    def site_key(self) -> bytes: ...

    def get_security(self, serial: str, *, lock: bool = False) -> MeterFrameSecurity | None:
        """The meter's security record with its model's profile (meters.model -> meter_models)."""
        ...

    def add_security(self, security: MeterFrameSecurity) -> None: ...

    def save_security(self, security: MeterFrameSecurity) -> None: ...

    def models_in_use(self) -> set[str]: ...

    def count_by_model(self) -> dict[str, int]: ...

    def add_key(self, serial: str, key_version: int, key: bytes, at: datetime) -> None: ...

    def key(self, serial: str, key_version: int) -> bytes | None:
        """The meter's key of this version, or None if there is none or it was retired.

        From the process's cache when it was opened before: callers decide from the meter's security
        row, read in their own transaction, which versions may be used (never a retired one)."""
        ...

    def reserve_downlink_counters(self, serials: Iterable[str]) -> dict[str, MeterFrameSecurity]:
        """The next downlink counter of each meter, taken for good in one UPDATE, with its security record.

        The caller holds these meters' rows locked (so the counters go out in the order they were
        taken). On PostgreSQL the UPDATE commits at once on a connection of its own: a counter once
        handed out is never handed out again, whatever becomes of the caller's transaction (rolled
        back after the frame was published, or the process killed before its commit). An unused
        counter is a gap, which meters accept: they refuse only counters not above the last one.
        On SQLite (one writer, which the caller's transaction already is) it is taken in the
        caller's transaction. A meter whose counter is exhausted is left out (see `counter_exhausted`).
        """
        ...

    def retire_other_keys(self, serial: str, keep_version: int, at: datetime) -> int: ...


class StatementsRepository(Protocol):
    def find(self, channel_id: str, statement_date: date, sha256: str) -> StatementFile | None: ...

    def get(self, file_id: int) -> StatementFile | None: ...

    def add(self, *, channel_id: str, statement_date: date, format_: str, sha256: str, filename: str, statement: ReadStatement, at: datetime, actor: str) -> int | None:
        """The file and all its lines in bulk (COPY on PostgreSQL), or None if this file (by content) was imported before."""
        ...

    def export_lines(self, file_id: int, path: Path) -> int:
        """The file's lines as CSV for the matcher: channel_txn_id,out_trade_no,account_no,amount_fen,fee_fen,status,line_no."""
        ...

    def export_neighbour_txns(self, channel_id: str, date_from: date, date_to: date, exclude_file_id: int, path: Path) -> int:
        """Transaction ids in the channel's other statements of nearby days: a payment dated one day
        by gasworks and the next by the channel is not unknown."""
        ...


class ReconciliationsRepository(Protocol):
    def run_for_file(self, file_id: int) -> dict[str, Any] | None: ...

    def get_run(self, run_id: int) -> dict[str, Any] | None: ...

    def add_run(self, *, channel_id: str, statement_date: date, file_id: int, started_at: datetime, finished_at: datetime, actor: str, verdict: str, totals: dict[str, Any], matched: int) -> int: ...

    def add_discrepancies(self, run_id: int, found: list[Discrepancy]) -> None: ...

    def discrepancies(self, *, run_id: int | None = None, state: DiscrepancyState | None = None, klass: DiscrepancyClass | None = None, channel_id: str | None = None, limit: int) -> list[Discrepancy]: ...

    def get_discrepancy(self, discrepancy_id: int) -> Discrepancy | None: ...

    def settle(self, discrepancy_id: int, *, state: DiscrepancyState, at: datetime, by: str, resolution: str, from_state: DiscrepancyState | None = None) -> bool:
        """False when `from_state` is given and the discrepancy was no longer in it (decided meanwhile)."""
        ...

    def carried_over(self, channel_id: str, before: date) -> list[Discrepancy]: ...

    def export_payments(self, channel_id: str, received_from: datetime, received_to: datetime, path: Path) -> int:
        """The channel's payments in the window, as CSV for the matcher, with their purchase's delivery."""
        ...
