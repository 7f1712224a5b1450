"""edge bounds: every refusal keeps its caller, body size and body hash; orders are counted per account

Revision ID: 0007
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (nullable, no default) works on SQLite and PostgreSQL without rebuilding the
    # table, so the append-only triggers on intake_rejections stay in place.
    op.add_column("intake_rejections", sa.Column("caller", sa.String(length=140), nullable=True))
    op.add_column("intake_rejections", sa.Column("body_bytes", sa.BigInteger(), nullable=True))
    op.add_column("intake_rejections", sa.Column("body_sha256", sa.String(length=64), nullable=True))
    op.create_index("ix_payment_orders_account_created", "payment_orders", ["account_no", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_payment_orders_account_created", table_name="payment_orders")
    with op.batch_alter_table("intake_rejections", schema=None) as batch_op:
        batch_op.drop_column("body_sha256")
        batch_op.drop_column("body_bytes")
        batch_op.drop_column("caller")
