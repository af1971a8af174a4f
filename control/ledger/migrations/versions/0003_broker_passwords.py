"""kit broker passwords kept encrypted, so the broker can be converged from the ledger

Revision ID: 0003_broker_passwords
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_broker_passwords"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("kits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mqtt_password_enc", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("kits", schema=None) as batch_op:
        batch_op.drop_column("mqtt_password_enc")
