"""the database refuses what the domain already promises never to write

Revision ID: 0017
Revises: 0014

Positive amounts, known states, purchase serials from 1, volumes above zero: the domain's types and
transition tables already promise these, and a row typed by hand (or a future bug) must not slip past
them. PostgreSQL gets CHECK constraints. SQLite cannot add a CHECK to an existing table without
rebuilding it (which would drop the append-only triggers and trip the foreign keys of the rows
pointing at it), so there the same rules are triggers, as the append-only rules already are.
"""

import re

from alembic import op

revision = "0017"
down_revision = "0014"
branch_labels = None
depends_on = None

PAYMENT_STATES = ("received", "verified", "booked", "held", "adjusted", "reversed", "refund_requested", "refunded")
COMMAND_STATES = ("pending", "sent", "delivered", "written_to_card", "applied", "failed", "expired", "cancelled")


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


# (table, constraint name, the rule as SQL over the row's columns)
RULES = [
    ("payments", "ck_payments_amount_positive", "amount_fen > 0"),
    ("payments", "ck_payments_state_known", f"state IN {_in(PAYMENT_STATES)}"),
    ("payment_orders", "ck_payment_orders_amount_positive", "amount_fen > 0"),
    ("ledger_entries", "ck_ledger_entries_amount_not_zero", "amount_fen <> 0"),
    ("meter_commands", "ck_meter_commands_state_known", f"state IN {_in(COMMAND_STATES)}"),
    ("meter_commands", "ck_meter_commands_purchase_seq_from_one", "purchase_seq IS NULL OR purchase_seq >= 1"),
    ("meter_commands", "ck_meter_commands_volume_positive", "volume_litres IS NULL OR volume_litres > 0"),
    ("meter_commands", "ck_meter_commands_cost_not_negative", "cost_fen IS NULL OR cost_fen >= 0"),
    ("meters", "ck_meters_purchase_seq_issued_not_negative", "purchase_seq_issued >= 0"),
]


def upgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table, name, rule in RULES:
        if postgresql:
            op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({rule})")
            continue
        new_row_rule = _on_new_row(rule)
        for operation in ("INSERT", "UPDATE"):
            op.execute(f"CREATE TRIGGER {name}_{operation.lower()} BEFORE {operation} ON {table} WHEN NOT ({new_row_rule}) BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: {name}'); END")


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table, name, _rule in RULES:
        if postgresql:
            op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
        else:
            for operation in ("insert", "update"):
                op.execute(f"DROP TRIGGER {name}_{operation}")


def _on_new_row(rule: str) -> str:
    """The same rule over the row being written (`NEW.column`), for a SQLite trigger."""
    return re.sub(r"\b(amount_fen|state|purchase_seq_issued|purchase_seq|volume_litres|cost_fen)\b", r"NEW.\1", rule)
