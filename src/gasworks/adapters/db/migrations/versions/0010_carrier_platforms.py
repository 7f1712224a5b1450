"""meters behind carrier platforms: device registrations, pushes taken once, platform commands

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "carrier_devices",
        sa.Column("serial", sa.String(length=14), nullable=False),
        sa.Column("platform", sa.String(length=12), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("product_id", sa.String(length=32), nullable=False),
        sa.Column("imei", sa.String(length=20), nullable=False),
        sa.Column("report_interval_s", sa.Integer(), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("online", sa.Boolean(), nullable=True),
        sa.Column("online_changed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["serial"], ["meters.serial"], name=op.f("fk_carrier_devices_serial_meters")),
        sa.PrimaryKeyConstraint("serial", name=op.f("pk_carrier_devices")),
        sa.UniqueConstraint("platform", "device_id", name="uq_carrier_devices_platform_device_id"),
    )
    op.create_table(
        "carrier_pushes",
        sa.Column("platform", sa.String(length=12), nullable=False),
        sa.Column("dedup_key", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=40), nullable=True),
        sa.PrimaryKeyConstraint("platform", "dedup_key", name=op.f("pk_carrier_pushes")),
    )
    op.create_index(op.f("ix_carrier_pushes_received_at"), "carrier_pushes", ["received_at"], unique=False)
    op.create_table(
        "carrier_commands",
        sa.Column("platform", sa.String(length=12), nullable=False),
        sa.Column("command_id", sa.String(length=64), nullable=False),
        sa.Column("serial", sa.String(length=14), nullable=False),
        sa.Column("frame_seq", sa.Integer(), nullable=False),
        sa.Column("ttl_s", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("status_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["serial"], ["meters.serial"], name=op.f("fk_carrier_commands_serial_meters")),
        sa.PrimaryKeyConstraint("platform", "command_id", name=op.f("pk_carrier_commands")),
    )
    op.create_index("ix_carrier_commands_serial_frame_seq", "carrier_commands", ["serial", "frame_seq"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_carrier_commands_serial_frame_seq", table_name="carrier_commands")
    op.drop_table("carrier_commands")
    op.drop_index(op.f("ix_carrier_pushes_received_at"), table_name="carrier_pushes")
    op.drop_table("carrier_pushes")
    op.drop_table("carrier_devices")
