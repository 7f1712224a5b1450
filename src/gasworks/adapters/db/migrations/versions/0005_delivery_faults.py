"""delivery faults: meter models, the newest report's meter clock, valve reasons, alert resolutions

Revision ID: 0005
Revises: 0003
Create Date: 2026-11-24 12:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "meter_models",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("purchase_seq_bytes", sa.Integer(), server_default="4", nullable=False),
        sa.Column("reopen_needs_button", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_meter_models")),
    )
    with op.batch_alter_table("meters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("last_report_clock", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("valve_reasons", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("resolved_by", sa.String(length=120), nullable=True))
        batch_op.add_column(sa.Column("resolution", sa.String(length=300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_column("resolution")
        batch_op.drop_column("resolved_by")
    with op.batch_alter_table("meters", schema=None) as batch_op:
        batch_op.drop_column("valve_reasons")
        batch_op.drop_column("last_report_clock")
        batch_op.drop_column("model")
    op.drop_table("meter_models")
