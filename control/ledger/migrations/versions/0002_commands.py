"""command retries with backoff, secret rotation, anomalies, keypad tokens, reminders

Revision ID: 0002_commands
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_commands"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("kits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("secret_next_enc", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("keypad_only", sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column("opaygo_count", sa.Integer(), nullable=False,
                                      server_default="0"))
        batch_op.add_column(sa.Column("opaygo_until", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("anomaly_count", sa.Integer(), nullable=False,
                                      server_default="0"))
        batch_op.add_column(sa.Column("last_anomaly_at", sa.Float(), nullable=True))
    with op.batch_alter_table("commands", schema=None) as batch_op:
        batch_op.add_column(sa.Column("next_attempt_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("nonce", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_commands_next_attempt_at", ["next_attempt_at"], unique=False)
        batch_op.create_index("ix_commands_status_expires", ["status", "expires_at"],
                              unique=False)
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_reminder_at", sa.Float(), nullable=True))
    op.create_table(
        "kit_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kit_id", sa.String(length=64), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("token", sa.String(length=20), nullable=False),
        sa.Column("token_type", sa.String(length=16), nullable=False),
        sa.Column("value_days", sa.Integer(), nullable=True),
        sa.Column("credit_until", sa.BigInteger(), nullable=True),
        sa.Column("chain_until", sa.BigInteger(), nullable=True),
        sa.Column("payment_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["kit_id"], ["kits.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kit_id", "count", name="uq_kit_tokens_kit_count"),
    )
    with op.batch_alter_table("kit_tokens", schema=None) as batch_op:
        batch_op.create_index("ix_kit_tokens_kit_id", ["kit_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("kit_tokens", schema=None) as batch_op:
        batch_op.drop_index("ix_kit_tokens_kit_id")
    op.drop_table("kit_tokens")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("last_reminder_at")
    with op.batch_alter_table("commands", schema=None) as batch_op:
        batch_op.drop_index("ix_commands_status_expires")
        batch_op.drop_index("ix_commands_next_attempt_at")
        batch_op.drop_column("nonce")
        batch_op.drop_column("next_attempt_at")
    with op.batch_alter_table("kits", schema=None) as batch_op:
        for col in ("last_anomaly_at", "anomaly_count", "opaygo_until", "opaygo_count",
                    "keypad_only", "secret_next_enc"):
            batch_op.drop_column(col)
