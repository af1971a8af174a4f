"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25 05:10:34.051621
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    _audit_log()
    _descos_and_api_keys()
    _kits_and_accounts()
    _commands()
    _idempotent_requests()
    _payments_and_ledger_entries()
    _default_desco()


def _audit_log() -> None:
    """Who did what to which kit, and why: staff actions and every change of money."""
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("desco_id", sa.String(length=64), nullable=True),
        sa.Column("kit_id", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_log_desco_id"), ["desco_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_log_kit_id"), ["kit_id"], unique=False)


def _descos_and_api_keys() -> None:
    """The operators (DESCOs) and the staff API keys, each scoped to one or to all."""
    op.create_table(
        "descos",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("desco_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["desco_id"],
            ["descos.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )


def _kits_and_accounts() -> None:
    """Kits with their broker credentials and commanded state; one customer account each."""
    op.create_table(
        "kits",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("desco_id", sa.String(length=64), nullable=False),
        sa.Column("mqtt_username", sa.String(length=64), nullable=False),
        sa.Column("mqtt_password_hash", sa.String(length=255), nullable=False),
        sa.Column("secret_enc", sa.Text(), nullable=False),
        sa.Column("cmd_seq", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("decommissioned_at", sa.Float(), nullable=True),
        sa.Column("reported_locked", sa.Boolean(), nullable=True),
        sa.Column("reported_credit_until", sa.BigInteger(), nullable=True),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=True),
        sa.Column("fw", sa.String(length=64), nullable=True),
        sa.Column("commanded_action", sa.String(length=16), nullable=True),
        sa.Column("commanded_credit_until", sa.BigInteger(), nullable=True),
        sa.Column("lock_due_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["desco_id"],
            ["descos.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("mqtt_username"),
    )
    with op.batch_alter_table("kits", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_kits_desco_id"), ["desco_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_kits_lock_due_at"), ["lock_due_at"], unique=False)

    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("desco_id", sa.String(length=64), nullable=False),
        sa.Column("account_number", sa.String(length=64), nullable=False),
        sa.Column("kit_id", sa.String(length=64), nullable=False),
        sa.Column("customer_phone", sa.String(length=20), nullable=False),
        sa.Column("deposit_fcfa", sa.BigInteger(), nullable=False),
        sa.Column("daily_rate_fcfa", sa.BigInteger(), nullable=False),
        sa.Column("total_price_fcfa", sa.BigInteger(), nullable=False),
        sa.Column("paid_total_fcfa", sa.BigInteger(), nullable=False),
        sa.Column("remainder_fcfa", sa.BigInteger(), nullable=False),
        sa.Column("credit_until", sa.BigInteger(), nullable=True),
        sa.Column("owned", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["desco_id"],
            ["descos.id"],
        ),
        sa.ForeignKeyConstraint(
            ["kit_id"],
            ["kits.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_number"),
        sa.UniqueConstraint("kit_id"),
    )
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.create_index("ix_accounts_credit_until", ["credit_until"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_accounts_customer_phone"), ["customer_phone"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_accounts_desco_id"), ["desco_id"], unique=False)


def _commands() -> None:
    """Signed commands per kit, numbered by ``seq`` (unique per kit) and tracked to an ack."""
    op.create_table(
        "commands",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("kit_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("credit_until", sa.BigInteger(), nullable=True),
        sa.Column("issued_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("origin", sa.String(length=32), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("sent_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["kit_id"],
            ["kits.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kit_id", "seq", name="uq_commands_kit_seq"),
    )
    with op.batch_alter_table("commands", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_commands_kit_id"), ["kit_id"], unique=False)
        batch_op.create_index("ix_commands_status", ["status"], unique=False)


def _idempotent_requests() -> None:
    """Answers kept per API key and Idempotency-Key, so a retried request acts once."""
    op.create_table(
        "idempotent_requests",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("api_key_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("api_key_id", "key", name="uq_idempotency_key"),
    )


def _payments_and_ledger_entries() -> None:
    """Payments, unique per provider reference, and at most one ledger entry each."""
    op.create_table(
        "payments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("desco_id", sa.String(length=64), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("provider_ref", sa.String(length=128), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=True),
        sa.Column("requested_fcfa", sa.BigInteger(), nullable=True),
        sa.Column("amount_fcfa", sa.BigInteger(), nullable=True),
        sa.Column("phone", sa.String(length=20), nullable=True),
        sa.Column("network", sa.String(length=16), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("tx_reference", sa.String(length=64), nullable=True),
        sa.Column("payment_reference", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("credited_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
        ),
        sa.ForeignKeyConstraint(
            ["desco_id"],
            ["descos.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("provider", "provider_ref", name="uq_payments_provider_ref"),
    )
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_payments_account_id"), ["account_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_payments_desco_id"), ["desco_id"], unique=False)

    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("payment_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("amount_fcfa", sa.BigInteger(), nullable=False),
        sa.Column("days", sa.Integer(), nullable=False),
        sa.Column("remainder_after_fcfa", sa.BigInteger(), nullable=False),
        sa.Column("credit_until_before", sa.BigInteger(), nullable=True),
        sa.Column("credit_until_after", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
        ),
        sa.ForeignKeyConstraint(
            ["payment_id"],
            ["payments.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("payment_id"),
    )
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_ledger_entries_account_id"), ["account_id"], unique=False
        )


def _default_desco() -> None:
    descos = sa.table(
        "descos",
        sa.column("id", sa.String),
        sa.column("name", sa.String),
        sa.column("created_at", sa.Float),
    )
    # every kit, account and payment belongs to a DESCO; this one exists from day one
    op.bulk_insert(descos, [{"id": "default", "name": "Default DESCO", "created_at": 0.0}])


def downgrade() -> None:
    with op.batch_alter_table("ledger_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ledger_entries_account_id"))

    op.drop_table("ledger_entries")
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_payments_desco_id"))
        batch_op.drop_index(batch_op.f("ix_payments_account_id"))

    op.drop_table("payments")
    op.drop_table("idempotent_requests")
    with op.batch_alter_table("commands", schema=None) as batch_op:
        batch_op.drop_index("ix_commands_status")
        batch_op.drop_index(batch_op.f("ix_commands_kit_id"))

    op.drop_table("commands")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_accounts_desco_id"))
        batch_op.drop_index(batch_op.f("ix_accounts_customer_phone"))
        batch_op.drop_index("ix_accounts_credit_until")

    op.drop_table("accounts")
    with op.batch_alter_table("kits", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_kits_lock_due_at"))
        batch_op.drop_index(batch_op.f("ix_kits_desco_id"))

    op.drop_table("kits")
    op.drop_table("api_keys")
    op.drop_table("descos")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_kit_id"))
        batch_op.drop_index(batch_op.f("ix_audit_log_desco_id"))

    op.drop_table("audit_log")
