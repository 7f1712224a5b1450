"""meter keys and frame counters

Revision ID: 0006
Revises: 0003
Create Date: 2026-11-24 12:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "meter_frame_security",
        sa.Column("serial", sa.String(length=14), nullable=False),
        sa.Column("model", sa.String(length=40), nullable=False),
        sa.Column("active_key_version", sa.Integer(), nullable=True),
        sa.Column("pending_key_version", sa.Integer(), nullable=True),
        sa.Column("uplink_counter_seen", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("downlink_counter_sent", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("rotated_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["serial"], ["meters.serial"], name=op.f("fk_meter_frame_security_serial_meters")),
        sa.PrimaryKeyConstraint("serial", name=op.f("pk_meter_frame_security")),
    )
    op.create_table(
        "meter_keys",
        sa.Column("serial", sa.String(length=14), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("key_sealed", sa.LargeBinary(length=64), nullable=False),
        sa.Column("site_key_id", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["serial"], ["meters.serial"], name=op.f("fk_meter_keys_serial_meters")),
        sa.PrimaryKeyConstraint("serial", "key_version", name=op.f("pk_meter_keys")),
    )


def downgrade() -> None:
    op.drop_table("meter_keys")
    op.drop_table("meter_frame_security")
