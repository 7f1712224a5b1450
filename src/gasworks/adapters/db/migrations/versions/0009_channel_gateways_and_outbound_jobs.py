"""channel gateways (base URL per channel) and outbound jobs (order queries, refunds, statement fetches)

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "channel_gateways",
        sa.Column("channel_id", sa.String(40), sa.ForeignKey("channels.id"), primary_key=True),
        sa.Column("base_url", sa.String(300), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "outbound_jobs",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("subject", sa.String(80), primary_key=True),
        sa.Column("channel_id", sa.String(40), sa.ForeignKey("channels.id"), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("next_try_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_outcome", sa.String(300), nullable=False, server_default=""),
        sa.Column("step", sa.String(20), nullable=False, server_default=""),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_outbound_jobs_due", "outbound_jobs", ["state", "next_try_at"])


def downgrade() -> None:
    op.drop_index("ix_outbound_jobs_due", table_name="outbound_jobs")
    op.drop_table("outbound_jobs")
    op.drop_table("channel_gateways")
