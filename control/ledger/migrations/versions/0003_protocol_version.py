"""the kit contract version each kit speaks (v1 JSON or v2 CBOR, docs/protocol.md)

Revision ID: 0003_protocol_version
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_protocol_version"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("kits", schema=None) as batch_op:
        batch_op.add_column(sa.Column("protocol_version", sa.Integer(), nullable=False,
                                      server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("kits", schema=None) as batch_op:
        batch_op.drop_column("protocol_version")
