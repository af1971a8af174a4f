"""the kit list's indexes (each filter and order at national size) and the kit imports

Revision ID: 0003_kit_list
Revises: 0001

Keyset pages walk an index in the list's order and stop after a page; a selective filter
gets an index that starts with it, so a page never scans the fleet: a DESCO's kits in id
order (every DESCO key's list and search), owned kits, and the order by credit end on the
same expression control/fleet/kit_list.py sorts by (nulls as 0). Regions and open alerts
already have theirs (0002_alerts). bench/dashboard.py shows the plan PostgreSQL picks for
each filter (EXPLAIN) and times them at 300,000 kits; an index it never picked is not
here.

kit_imports: one row per CSV of kits imported, with its refused rows (the report a DESCO
downloads as CSV).

No index on kits.online or kits.last_seen, on purpose: every status and telemetry message
updates them, and an indexed column makes each of those updates write every index of the
table (no HOT update). So the list has no order by last seen (measured without the index:
447 ms a page at 300,000 kits), and filters on online with the primary key's order.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_kit_list"
down_revision = "0001"
branch_labels = None
depends_on = None

_ZERO_I = sa.text("coalesce(credit_until, 0)")


def upgrade() -> None:
    op.create_table(
        "kit_imports",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("desco_id", sa.String(length=64), nullable=True),
        sa.Column("imported_by", sa.String(length=200), nullable=False),
        sa.Column("imported_key_id", sa.Integer(), nullable=True),
        sa.Column("imported_at", sa.Float(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("created", sa.Integer(), nullable=False),
        sa.Column("unchanged", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("errors", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_kit_imports_desco_id", "kit_imports", ["desco_id"])
    op.create_index("ix_kits_desco_id_id", "kits", ["desco_id", "id"])
    if op.get_bind().dialect.name == "postgresql":
        # an expression index on PostgreSQL only: SQLite's batch migrations re-create a
        # table from its reflection, which cannot carry it (a development ledger is small)
        op.create_index("ix_accounts_credit_key", "accounts", [_ZERO_I, "kit_id"])
    op.create_index("ix_accounts_owned_kit", "accounts", ["owned", "kit_id"])


def downgrade() -> None:
    op.drop_index("ix_kit_imports_desco_id", "kit_imports")
    op.drop_table("kit_imports")
    op.drop_index("ix_accounts_owned_kit", "accounts")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_accounts_credit_key", "accounts")
    op.drop_index("ix_kits_desco_id_id", "kits")
