"""kit kinds (MQTT kits, OpenPAYGO Metrics devices), a Metrics device's replay guard,
OpenPAYGO tokens delivered over Metrics

Revision ID: 0003_kit_kind
Revises: 0002_commands
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_kit_kind"
down_revision = "0002_commands"  # kit_tokens is created there
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("kits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(length=24), nullable=False,
                                      server_default="mqtt"))
        batch_op.add_column(sa.Column("metrics_request_count", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("metrics_request_ts", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("kit_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("delivered_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("kit_tokens", schema=None) as batch_op:
        batch_op.drop_column("delivered_at")
    with op.batch_alter_table("kits", schema=None) as batch_op:
        for col in ("metrics_request_ts", "metrics_request_count", "kind"):
            batch_op.drop_column(col)
