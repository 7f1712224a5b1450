"""The system of record, as SQLAlchemy Core tables. Alembic migrations in `migrations/` mirror it."""

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.types import TypeDecorator

from gasworks.domain.payments import ONCE_PER_PAYMENT

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


_ONCE_PER_PAYMENT_SQL = "kind IN (" + ", ".join(f"'{k.value}'" for k in sorted(ONCE_PER_PAYMENT)) + ")"


class UtcDateTime(TypeDecorator):
    """Aware UTC datetimes in, aware UTC datetimes out, on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):  # noqa: ANN001
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use aware UTC datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect):  # noqa: ANN001
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Fen = BigInteger  # money columns hold integer fen

customers = Table(
    "customers",
    metadata,
    Column("account_no", String(12), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("address", String(300), nullable=False),
    Column("community", String(100), nullable=False),
    Column("grid", String(50), nullable=False),
    Column("phone", String(20), nullable=False),
    Column("customer_class", String(20), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("latitude", Double),  # the home's position, for "nearest kiosk"
    Column("longitude", Double),
)

meters = Table(
    "meters",
    metadata,
    Column("serial", String(14), primary_key=True),
    Column("account_no", ForeignKey("customers.account_no"), nullable=False, unique=True),
    Column("kind", String(10), nullable=False),
    Column("status", String(10), nullable=False),
    # Purchases: the last purchase serial issued, and the volume bought in the current tier year.
    Column("purchase_seq_issued", Integer, nullable=False, server_default="0"),
    Column("tier_year", Integer),
    Column("litres_bought_tier_year", BigInteger, nullable=False, server_default="0"),
    # What the meter last told us (IoT report, or a card read for card meters).
    Column("applied_seq", Integer, nullable=False, server_default="0"),
    Column("last_report_at", UtcDateTime),
    Column("awake_until", UtcDateTime),
    Column("link_state", String(10), nullable=False, server_default="unknown"),
    Column("credit_litres", BigInteger),
    Column("cumulative_litres", BigInteger),
    Column("valve_open", Boolean),
    Column("battery_mv", Integer),
    Column("alarms", Integer, nullable=False, server_default="0"),
    Column("reopen_needs_button", Boolean, nullable=False, server_default=false()),
    # Card meters: the card in use and the last purchase serial written to it.
    Column("card_no", String(20), unique=True),
    Column("card_purchase_seq", Integer, nullable=False, server_default="0"),
    # Its model (serial width, valve reopening); the meter clock of the newest report taken (naive,
    # as the meter keeps it); why gasworks wants its valve closed (ValveReason bits).
    Column("model", String(40)),
    Column("last_report_clock", DateTime),
    Column("last_report_counter", BigInteger),  # the uplink frame counter of that report (sealed frames)
    Column("valve_reasons", Integer, nullable=False, server_default="0"),
    Column("credit_fen", BigInteger),  # a money meter's balance as it last reported it
)

# One profile per meter model (domain/meter_models.py): serial width, valve reopening, MAC scheme,
# data-identifier byte order, credit unit, report interval. meters.model names one of these.
meter_models = Table(
    "meter_models",
    metadata,
    Column("name", String(40), primary_key=True),
    Column("purchase_seq_bytes", Integer, nullable=False, server_default="4"),
    Column("reopen_needs_button", Boolean, nullable=False, server_default=false()),
    Column("created_at", UtcDateTime, nullable=False),
    Column("mac_scheme", String(16), nullable=False, server_default="sm4-cmac"),
    Column("di_byte_order", String(12), nullable=False, server_default="low-first"),
    Column("credit_unit", String(8), nullable=False, server_default="litres"),
    Column("report_interval_s", Integer, nullable=False, server_default="86400"),
    Column("description", String(200), nullable=False, server_default=""),
)

channels = Table(
    "channels",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("kind", String(20), nullable=False),
    Column("name", String(100), nullable=False),
    Column("merchant_id", String(64), nullable=False, server_default=""),
    Column("created_at", UtcDateTime, nullable=False),
    Column("fee_ppm", Integer, nullable=False, server_default="0"),  # the channel's fee, parts per million
)

channel_keys = Table(
    "channel_keys",
    metadata,
    Column("channel_id", ForeignKey("channels.id"), primary_key=True),
    Column("key_id", String(80), primary_key=True),
    Column("purpose", String(10), primary_key=True),
    Column("material", Text, nullable=False),
    Column("status", String(10), nullable=False),
    Column("added_at", UtcDateTime, nullable=False),
    Column("retired_at", UtcDateTime),
)

ledger_accounts = Table(
    "ledger_accounts",
    metadata,
    Column("code", String(60), primary_key=True),
    Column("kind", String(20), nullable=False),
    # Cached sum of this account's entries for customer (prepaid) accounts, updated in the
    # transaction that posts them; `gasworks check` proves it equals the entries. Always 0 for
    # the other kinds, whose sums are read from the entries.
    Column("entries_sum_fen", Fen, nullable=False, server_default="0"),
)

ledger_transactions = Table(
    "ledger_transactions",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("kind", String(30), nullable=False),
    Column("payment_id", String(40), index=True),
    Column("at", UtcDateTime, nullable=False),
    Column("memo", String(300), nullable=False, server_default=""),
    # A payment's life-cycle transactions (booked, held, reversed, refunded ...) exist at most once
    # each: two operators deciding at the same moment still move the money once.
    Index(
        "uq_ledger_transactions_payment_kind",
        "payment_id",
        "kind",
        unique=True,
        postgresql_where=text(_ONCE_PER_PAYMENT_SQL),
        sqlite_where=text(_ONCE_PER_PAYMENT_SQL),
    ),
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("transaction_id", ForeignKey("ledger_transactions.id"), nullable=False, index=True),
    Column("account_code", ForeignKey("ledger_accounts.code"), nullable=False, index=True),
    Column("amount_fen", Fen, nullable=False),
)

payment_orders = Table(
    "payment_orders",
    metadata,
    Column("out_trade_no", String(32), primary_key=True),
    Column("channel_id", ForeignKey("channels.id"), nullable=False),
    Column("account_no", ForeignKey("customers.account_no"), nullable=False),
    Column("amount_fen", Fen, nullable=False),
    Column("state", String(10), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("payment_id", String(40)),
)
Index("ix_payment_orders_account_created", payment_orders.c.account_no, payment_orders.c.created_at)  # orders per account per window

payments = Table(
    "payments",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("channel_id", ForeignKey("channels.id"), nullable=False),
    Column("channel_txn_id", String(64), nullable=False),
    Column("amount_fen", Fen, nullable=False),
    Column("account_no", String(12)),
    Column("out_trade_no", String(32)),
    Column("method", String(20), nullable=False, server_default=""),
    Column("paid_at", UtcDateTime),
    Column("state", String(20), nullable=False),
    Column("hold_reason", String(30)),
    Column("received_at", UtcDateTime, nullable=False),
    # Exactly once: a channel's transaction id books at most one payment.
    UniqueConstraint("channel_id", "channel_txn_id", name="uq_payments_channel_txn"),
)

payment_events = Table(
    "payment_events",
    metadata,
    Column("payment_id", ForeignKey("payments.id"), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("state", String(20), nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Column("note", String(300), nullable=False, server_default=""),
)

used_nonces = Table(
    "used_nonces",
    metadata,
    Column("channel_id", String(40), primary_key=True),
    Column("nonce", String(64), primary_key=True),
    Column("seen_at", UtcDateTime, nullable=False, index=True),
)

intake_rejections = Table(
    "intake_rejections",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", UtcDateTime, nullable=False, index=True),
    Column("channel_id", String(40), nullable=False),
    Column("code", String(40), nullable=False),
    Column("message", String(500), nullable=False),
    Column("remote_addr", String(64), nullable=False, server_default=""),
    Column("request_summary", JSON, nullable=False),
    Column("caller", String(140)),  # the API key that was refused or refused for (device, operator), when known
    Column("body_bytes", BigInteger),  # the request body's size as received (or as declared when refused unread)
    Column("body_sha256", String(64)),  # hex SHA-256 of the whole body; none when it was refused unread
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(20), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("role", String(20), nullable=False),
    Column("channel_id", ForeignKey("channels.id")),  # devices act for one kiosk/counter channel
    Column("secret_sha256", String(64), nullable=False, unique=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("revoked_at", UtcDateTime),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", UtcDateTime, nullable=False, index=True),
    Column("actor", String(120), nullable=False),
    Column("action", String(60), nullable=False),
    Column("subject", String(120), nullable=False),
    Column("detail", JSON, nullable=False),
)

Index("ix_payments_account_received", payments.c.account_no, payments.c.received_at)

tariffs = Table(
    "tariffs",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("customer_class", String(20), nullable=False),
    Column("effective_from", Date, nullable=False),
    Column("tiers", JSON, nullable=False),  # [[upto_litres or null, price_milli_fen_per_m3], ...]
    Column("year_start_month", Integer, nullable=False),
    Column("year_start_day", Integer, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("created_by", String(120), nullable=False),
    UniqueConstraint("customer_class", "effective_from", name="uq_tariffs_class_effective_from"),
)

meter_commands = Table(
    "meter_commands",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("meter_serial", ForeignKey("meters.serial"), nullable=False),
    Column("account_no", String(12), nullable=False),
    Column("kind", String(12), nullable=False),
    Column("route", String(10), nullable=False),
    Column("state", String(16), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime),
    Column("payment_id", String(40), index=True),
    Column("purchase_seq", Integer),
    Column("volume_litres", BigInteger),
    Column("cost_fen", Fen),
    Column("tier_pieces", JSON),  # how the volume was priced, tier by tier
    Column("sends", Integer, nullable=False, server_default="0"),
    Column("window_sends", Integer, nullable=False, server_default="0"),
    Column("next_send_at", UtcDateTime),
    Column("note", String(300), nullable=False, server_default=""),
    Column("events_count", Integer, nullable=False, server_default="0"),
    # A purchase serial is issued once per meter: a second credit order for it cannot exist.
    UniqueConstraint("meter_serial", "purchase_seq", name="uq_meter_commands_meter_purchase_seq"),
)
Index("ix_meter_commands_state_meter", meter_commands.c.state, meter_commands.c.meter_serial)

meter_command_events = Table(
    "meter_command_events",
    metadata,
    Column("command_id", ForeignKey("meter_commands.id"), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("state", String(16), nullable=False),
    Column("at", UtcDateTime, nullable=False),
    Column("note", String(300), nullable=False, server_default=""),
)

kiosks = Table(
    "kiosks",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("channel_id", ForeignKey("channels.id"), nullable=False),
    Column("community", String(100), nullable=False),
    Column("address", String(300), nullable=False, server_default=""),
    Column("latitude", Double, nullable=False),  # coordinates: floating point is right here
    Column("longitude", Double, nullable=False),
    Column("status", String(12), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("opening_hours", String(40), nullable=False, server_default=""),  # as people write them, e.g. "07:00-22:00"; "" unknown
)

alerts = Table(
    "alerts",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("kind", String(40), nullable=False),
    Column("subject", String(80), nullable=False),
    Column("reason", String(500), nullable=False),
    Column("raised_at", UtcDateTime, nullable=False),
    Column("cleared_at", UtcDateTime),
    # kind:subject while the alert is open, NULL once cleared: one open alert per thing at a time.
    Column("open_key", String(130), unique=True),
    # A person's recorded resolution, when a person cleared it (also in the audit log).
    Column("resolved_by", String(120)),
    Column("resolution", String(300)),
)

site_secrets = Table(
    "site_secrets",
    metadata,
    Column("name", String(40), primary_key=True),
    Column("value", String(200), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
)

# Meter frame security: each meter's model, key versions and per-direction frame counters (the
# counters are what refuse a replayed frame, also after a worker restarts).
meter_frame_security = Table(
    "meter_frame_security",
    metadata,
    Column("serial", ForeignKey("meters.serial"), primary_key=True),  # its model (and MAC scheme) is meters.model
    Column("active_key_version", Integer),  # NULL for a model without MAC
    Column("pending_key_version", Integer),  # a rotation in progress
    Column("uplink_counter_seen", BigInteger, nullable=False, server_default="0"),
    Column("downlink_counter_sent", BigInteger, nullable=False, server_default="0"),
    Column("rotated_at", UtcDateTime),
)

# Each meter key, AES-256-GCM under the site key (nonce 12 bytes + ciphertext + tag 16 bytes).
meter_keys = Table(
    "meter_keys",
    metadata,
    Column("serial", ForeignKey("meters.serial"), primary_key=True),
    Column("key_version", Integer, primary_key=True),
    Column("key_sealed", LargeBinary(64), nullable=False),
    Column("site_key_id", String(16), nullable=False),  # which site key sealed it (SHA-256 prefix)
    Column("created_at", UtcDateTime, nullable=False),
    Column("retired_at", UtcDateTime),  # refused from then on
)


statement_files = Table(
    "statement_files",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("channel_id", ForeignKey("channels.id"), nullable=False),
    Column("statement_date", Date, nullable=False),
    Column("format", String(30), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("filename", String(200), nullable=False),
    Column("lines", Integer, nullable=False),
    Column("paid_total_fen", Fen, nullable=False),
    Column("fee_total_fen", Fen, nullable=False),
    Column("imported_at", UtcDateTime, nullable=False),
    Column("imported_by", String(120), nullable=False),
    # The same file imported twice for the same day is the same import: re-importing is a no-op.
    # (Two days can have identical files, an empty day's for instance: the day is part of the key.)
    UniqueConstraint("channel_id", "statement_date", "sha256", name="uq_statement_files_channel_date_sha256"),
)

statement_lines = Table(
    "statement_lines",
    metadata,
    Column("file_id", ForeignKey("statement_files.id"), primary_key=True),
    Column("line_no", Integer, primary_key=True),
    Column("channel_txn_id", String(64), nullable=False),  # matched in DuckDB, not by index lookups
    Column("out_trade_no", String(64)),
    Column("account_no", String(20)),
    Column("amount_fen", Fen, nullable=False),
    Column("fee_fen", Fen, nullable=False),
    Column("status", String(10), nullable=False),
    Column("paid_at", UtcDateTime),
)

reconciliation_runs = Table(
    "reconciliation_runs",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("channel_id", ForeignKey("channels.id"), nullable=False),
    Column("statement_date", Date, nullable=False),
    Column("file_id", ForeignKey("statement_files.id"), nullable=False, unique=True),
    Column("started_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime, nullable=False),
    Column("actor", String(120), nullable=False),
    Column("verdict", String(12), nullable=False),
    Column("totals", JSON, nullable=False),  # {class: {"count": n, "amount_fen": fen}}
    Column("matched", Integer, nullable=False),
)

discrepancies = Table(
    "discrepancies",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("run_id", ForeignKey("reconciliation_runs.id"), nullable=False, index=True),
    Column("class", String(24), nullable=False),
    Column("state", String(14), nullable=False),
    Column("channel_id", String(40), nullable=False),
    Column("channel_txn_id", String(64)),
    Column("payment_id", String(40), index=True),
    Column("statement_amount_fen", Fen),
    Column("gasworks_amount_fen", Fen),
    Column("detail", String(500), nullable=False),
    Column("proposed_action", String(300), nullable=False),
    Column("resolved_at", UtcDateTime),
    Column("resolved_by", String(120)),
    Column("resolution", String(300)),
)
Index("ix_discrepancies_state_class", discrepancies.c.state, discrepancies.c["class"])

# ---- meters behind a carrier platform (adapters/db/carriers.py, domain/carriers.py) -----------------

carrier_devices = Table(
    "carrier_devices",
    metadata,
    Column("serial", ForeignKey("meters.serial"), primary_key=True),  # a meter is on one platform at most
    Column("platform", String(12), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("product_id", String(32), nullable=False),
    Column("imei", String(20), nullable=False),
    Column("report_interval_s", Integer, nullable=False),
    Column("registered_at", UtcDateTime, nullable=False),
    Column("online", Boolean),
    Column("online_changed_at", UtcDateTime),
    # A platform's device is bound to one meter: a push from it speaks for that meter only.
    UniqueConstraint("platform", "device_id", name="uq_carrier_devices_platform_device_id"),
)

carrier_pushes = Table(
    "carrier_pushes",
    metadata,
    Column("platform", String(12), primary_key=True),
    Column("dedup_key", String(64), primary_key=True),  # a platform's retry of a push has the same key
    Column("received_at", UtcDateTime, nullable=False, index=True),
    Column("kind", String(40), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("outcome", String(40)),  # None while being taken; then TAKEN or the refusal's code
)

carrier_commands = Table(
    "carrier_commands",
    metadata,
    Column("platform", String(12), primary_key=True),
    Column("command_id", String(64), primary_key=True),
    Column("serial", ForeignKey("meters.serial"), nullable=False),
    Column("frame_seq", Integer, nullable=False),
    Column("ttl_s", Integer, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("status", String(12), nullable=False),
    Column("status_at", UtcDateTime, nullable=False),
)
Index("ix_carrier_commands_serial_frame_seq", carrier_commands.c.serial, carrier_commands.c.frame_seq)

# ---- calling the channels (services/outbound.py) ----------------------------------------------

channel_gateways = Table(
    "channel_gateways",
    metadata,
    Column("channel_id", ForeignKey("channels.id"), primary_key=True),
    Column("base_url", String(300), nullable=False),  # e.g. https://api.mch.weixin.qq.com, or a local stub
    Column("updated_at", UtcDateTime, nullable=False),
)

outbound_jobs = Table(
    "outbound_jobs",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("subject", String(80), primary_key=True),
    Column("channel_id", ForeignKey("channels.id"), nullable=False),
    Column("state", String(10), nullable=False),
    Column("tries", Integer, nullable=False),
    Column("next_try_at", UtcDateTime, nullable=False),
    Column("last_outcome", String(300), nullable=False, server_default=""),
    Column("step", String(20), nullable=False, server_default=""),
    Column("updated_at", UtcDateTime, nullable=False),
)
Index("ix_outbound_jobs_due", outbound_jobs.c.state, outbound_jobs.c.next_try_at)
