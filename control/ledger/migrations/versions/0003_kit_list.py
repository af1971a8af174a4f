"""indexes of the kit list: each filter and order at national size

Revision ID: 0003_kit_list
Revises: 0002_alerts (the region column and the alerts table)

Keyset pages walk an index in the list's order and stop after a page; a selective filter
(one DESCO, one region, owned kits, open alerts) gets an index that starts with it, so a
page never scans the fleet. The orders by last seen and by credit end are on the same
expressions control/fleet/kit_list.py sorts by (nulls as 0). bench/dashboard.py checks
them with EXPLAIN and times them at 300,000 kits.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_kit_list"
down_revision = "0002_alerts"
branch_labels = None
depends_on = None

_ZERO_F = sa.text("coalesce(last_seen, 0.0)")
_ZERO_I = sa.text("coalesce(credit_until, 0)")


def upgrade() -> None:
    op.create_index("ix_kits_desco_id_id", "kits", ["desco_id", "id"])
    op.create_index("ix_kits_online_id", "kits", ["online", "id"])
    op.create_index("ix_kits_region_id", "kits", ["region", "id"])
    op.create_index("ix_alerts_state_kit", "alerts", ["state", "kit_id"])
    if op.get_bind().dialect.name == "postgresql":
        # expression indexes on PostgreSQL only: SQLite's batch migrations re-create a table
        # from its reflection, which cannot carry them (a development ledger is small)
        op.create_index("ix_kits_last_seen_key", "kits", [_ZERO_F, "id"])
        op.create_index("ix_accounts_credit_key", "accounts", [_ZERO_I, "kit_id"])
    op.create_index("ix_accounts_owned_kit", "accounts", ["owned", "kit_id"])


def downgrade() -> None:
    op.drop_index("ix_accounts_owned_kit", "accounts")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_accounts_credit_key", "accounts")
        op.drop_index("ix_kits_last_seen_key", "kits")
    op.drop_index("ix_alerts_state_kit", "alerts")
    op.drop_index("ix_kits_region_id", "kits")
    op.drop_index("ix_kits_online_id", "kits")
    op.drop_index("ix_kits_desco_id_id", "kits")
