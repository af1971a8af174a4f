"""kit broker-credential revocation, account closing and personal-data erasure

Revision ID: 0002_security
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_security"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("kits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mqtt_revoked_at", sa.Float(), nullable=True))
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("closed_at", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("personal_data_erased_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("personal_data_erased_at")
        batch_op.drop_column("closed_at")
    with op.batch_alter_table("kits", schema=None) as batch_op:
        batch_op.drop_column("mqtt_revoked_at")
