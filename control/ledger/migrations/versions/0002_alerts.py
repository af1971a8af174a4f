"""alerts, kit regions, per-kit analytics and the pre-aggregated fleet summary

Revision ID: 0002_alerts
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_alerts"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("kits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("region", sa.String(length=32), nullable=False,
                                      server_default="Maritime"))
        batch_op.create_index("ix_kits_region", ["region"], unique=False)

    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kit_id", sa.String(length=64), nullable=False),
        sa.Column("desco_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("evidence", sa.JSON(), nullable=True),
        sa.Column("opened_at", sa.Float(), nullable=False),
        sa.Column("last_seen_at", sa.Float(), nullable=False),
        sa.Column("acknowledged_at", sa.Float(), nullable=True),
        sa.Column("acknowledged_by", sa.String(length=200), nullable=True),
        sa.Column("closed_at", sa.Float(), nullable=True),
        sa.Column("closed_by", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(["kit_id"], ["kits.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.create_index("ix_alerts_kit_id", ["kit_id"], unique=False)
        batch_op.create_index("ix_alerts_state", ["state"], unique=False)
        batch_op.create_index("ix_alerts_desco_id", ["desco_id"], unique=False)

    op.create_table(
        "kit_metrics",
        sa.Column("kit_id", sa.String(length=64), nullable=False),
        sa.Column("computed_at", sa.Float(), nullable=False),
        sa.Column("energy_wh_30d", sa.Float(), nullable=True),
        sa.Column("battery_health_pct", sa.Float(), nullable=True),
        sa.Column("load_pattern", sa.String(length=32), nullable=True),
        sa.Column("sizing", sa.String(length=16), nullable=True),
        sa.Column("solvency_score", sa.Float(), nullable=True),
        sa.Column("solvency_inputs", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["kit_id"], ["kits.id"]),
        sa.PrimaryKeyConstraint("kit_id"),
    )

    op.create_table(
        "fleet_summary",
        sa.Column("desco_id", sa.String(length=64), nullable=False),
        sa.Column("region", sa.String(length=32), nullable=False),
        sa.Column("computed_at", sa.Float(), nullable=False),
        sa.Column("figures", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("desco_id", "region"),
    )


def downgrade() -> None:
    op.drop_table("fleet_summary")
    op.drop_table("kit_metrics")
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_alerts_desco_id")
        batch_op.drop_index("ix_alerts_state")
        batch_op.drop_index("ix_alerts_kit_id")
    op.drop_table("alerts")
    with op.batch_alter_table("kits", schema=None) as batch_op:
        batch_op.drop_index("ix_kits_region")
        batch_op.drop_column("region")
