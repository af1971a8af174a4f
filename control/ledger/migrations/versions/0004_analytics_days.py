"""analytics days: each final day's per-kit analytics numbers, read from InfluxDB once

Revision ID: 0004_analytics_days
Revises: 0003_analytics_state
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_analytics_days"
down_revision = "0003_analytics_state"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "analytics_days",
        sa.Column("day", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("kits", sa.Integer(), nullable=False),
        sa.Column("stored_at", sa.Float(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("day"),
    )


def downgrade() -> None:
    op.drop_table("analytics_days")
