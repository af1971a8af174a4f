"""payments from every feed: MoMo/webhook columns, suspense links, reconciliation, append-only

Revision ID: 0002_payments
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_payments"
down_revision = "0001"
branch_labels = None
depends_on = None

_PG_APPEND_ONLY = """
CREATE OR REPLACE FUNCTION cizo_ledger_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only: post a correcting entry instead';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION cizo_ledger_append_only();
"""


def _norm(column: str) -> str:
    expr = column
    for sep in (" ", "-", "_", "."):
        expr = f"replace({expr}, '{sep}', '')"
    return f"upper({expr})"


def upgrade() -> None:
    with op.batch_alter_table("payments", schema=None) as b:
        b.add_column(sa.Column("kind", sa.String(16), nullable=False,
                               server_default="payment"))
        b.add_column(sa.Column("currency", sa.String(3), nullable=True))
        b.add_column(sa.Column("reverses_payment_id", sa.Integer(), nullable=True))
        b.add_column(sa.Column("reference", sa.String(128), nullable=True))
        b.add_column(sa.Column("matched_by", sa.String(16), nullable=True))
        b.add_column(sa.Column("paid_at", sa.Float(), nullable=True))
        b.add_column(sa.Column("next_check_at", sa.Float(), nullable=True))
        b.add_column(sa.Column("check_attempts", sa.Integer(), nullable=False,
                               server_default="0"))
        b.create_foreign_key("fk_payments_reverses", "payments", ["reverses_payment_id"], ["id"])
        b.create_index("ix_payments_next_check_at", ["next_check_at"])
        b.create_index("ix_payments_status", ["status"])
    # matching by reference tolerant of case and spaces, without a full scan
    # (the same expression as control.payments.matching.sql_normalised: keep them equal)
    op.create_index("ix_accounts_number_norm", "accounts", [sa.text(_norm("account_number"))])
    op.create_index("ix_accounts_kit_norm", "accounts", [sa.text(_norm("kit_id"))])

    op.create_table(
        "webhook_secrets",
        sa.Column("desco_id", sa.String(64), sa.ForeignKey("descos.id"), primary_key=True),
        sa.Column("secret_enc", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "suspense_links",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("payment_id", sa.Integer(), sa.ForeignKey("payments.id"), nullable=False,
                  index=True),
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("proposed_by", sa.String(200), nullable=False),
        sa.Column("proposed_key_id", sa.Integer(), nullable=True),
        sa.Column("proposed_at", sa.Float(), nullable=False),
        sa.Column("decided_by", sa.String(200), nullable=True),
        sa.Column("decided_at", sa.Float(), nullable=True),
    )
    op.create_table(
        "recon_imports",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("desco_id", sa.String(64), sa.ForeignKey("descos.id"), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("imported_by", sa.String(200), nullable=False),
        sa.Column("imported_key_id", sa.Integer(), nullable=True),
        sa.Column("imported_at", sa.Float(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
    )
    op.create_table(
        "recon_proposals",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("import_id", sa.Integer(), sa.ForeignKey("recon_imports.id"), nullable=False,
                  index=True),
        sa.Column("desco_id", sa.String(64), sa.ForeignKey("descos.id"), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("transaction_id", sa.String(128), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("amount_fcfa", sa.BigInteger(), nullable=False),
        sa.Column("phone", sa.String(20), nullable=True),
        sa.Column("reference", sa.String(128), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("proposed_by", sa.String(200), nullable=False),
        sa.Column("proposed_key_id", sa.Integer(), nullable=True),
        sa.Column("decided_by", sa.String(200), nullable=True),
        sa.Column("decided_at", sa.Float(), nullable=True),
        sa.Column("payment_id", sa.Integer(), sa.ForeignKey("payments.id"), nullable=True),
    )
    # the ledger is append-only in the database itself, not only by convention
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_APPEND_ONLY)
    else:
        for event in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER ledger_entries_no_{event.lower()} BEFORE {event} "
                "ON ledger_entries BEGIN SELECT RAISE(ABORT, "
                "'ledger_entries is append-only: post a correcting entry instead'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS ledger_entries_append_only ON ledger_entries")
        op.execute("DROP FUNCTION IF EXISTS cizo_ledger_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS ledger_entries_no_update")
        op.execute("DROP TRIGGER IF EXISTS ledger_entries_no_delete")
    op.drop_table("recon_proposals")
    op.drop_table("recon_imports")
    op.drop_table("suspense_links")
    op.drop_table("webhook_secrets")
    op.drop_index("ix_accounts_kit_norm", table_name="accounts")
    op.drop_index("ix_accounts_number_norm", table_name="accounts")
    with op.batch_alter_table("payments", schema=None) as b:
        b.drop_index("ix_payments_status")
        b.drop_index("ix_payments_next_check_at")
        b.drop_constraint("fk_payments_reverses", type_="foreignkey")
        for col in ("check_attempts", "next_check_at", "paid_at", "matched_by", "reference",
                    "reverses_payment_id", "currency", "kind"):
            b.drop_column(col)
