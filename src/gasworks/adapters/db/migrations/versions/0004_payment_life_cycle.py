"""payment life cycle: each life-cycle transaction at most once per payment; longer state names

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The kinds domain/payments.py ONCE_PER_PAYMENT names, frozen here as this migration saw them.
ONCE_PER_PAYMENT = (
    "hold_released",
    "payment_adjusted",
    "payment_booked",
    "payment_held",
    "payment_reversed",
    "refund_confirmed",
    "refund_external",
    "refund_requested",
)
WHERE = sa.text("kind IN (" + ", ".join(f"'{k}'" for k in ONCE_PER_PAYMENT) + ")")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":  # SQLite does not enforce VARCHAR lengths
        op.alter_column("payments", "state", type_=sa.String(20), existing_nullable=False)
    op.create_index(
        "uq_ledger_transactions_payment_kind",
        "ledger_transactions",
        ["payment_id", "kind"],
        unique=True,
        postgresql_where=WHERE,
        sqlite_where=WHERE,
    )


def downgrade() -> None:
    op.drop_index("uq_ledger_transactions_payment_kind", table_name="ledger_transactions")
