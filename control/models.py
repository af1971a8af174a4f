"""Ledger tables (SQLAlchemy 2). Every kit, account and payment belongs to one DESCO.

Money is integer FCFA; times are UTC unix seconds (integers for contract times such as
``credit_until``, floats where sub-second order matters). Balances are derivable from
the append-only ``ledger_entries``; the ``accounts`` columns are its running totals,
updated in the same transaction as the entry that changes them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Desco(Base):
    __tablename__ = "descos"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Float)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the key
    role: Mapped[str] = mapped_column(String(32))
    desco_id: Mapped[str | None] = mapped_column(ForeignKey("descos.id"))  # None = national
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)


class Kit(Base):
    __tablename__ = "kits"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the kit serial
    desco_id: Mapped[str] = mapped_column(ForeignKey("descos.id"), index=True)
    mqtt_username: Mapped[str] = mapped_column(String(64), unique=True)
    mqtt_password_hash: Mapped[str] = mapped_column(String(255))
    secret_enc: Mapped[str] = mapped_column(Text)  # Fernet token of the 64-hex secret
    cmd_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    decommissioned_at: Mapped[float | None] = mapped_column(Float)
    # what the kit itself last reported (acks, status, telemetry)
    reported_locked: Mapped[bool | None] = mapped_column(Boolean)
    reported_credit_until: Mapped[int | None] = mapped_column(BigInteger)
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    last_seen: Mapped[float | None] = mapped_column(Float)
    fw: Mapped[str | None] = mapped_column(String(64))
    # what we last commanded: the sweep compares desired state with this
    commanded_action: Mapped[str | None] = mapped_column(String(16))
    commanded_credit_until: Mapped[int | None] = mapped_column(BigInteger)
    # set only while the kit is commanded unlocked: the sweep's index of kits coming due
    lock_due_at: Mapped[int | None] = mapped_column(BigInteger, index=True)


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    desco_id: Mapped[str] = mapped_column(ForeignKey("descos.id"), index=True)
    account_number: Mapped[str] = mapped_column(String(64), unique=True)
    kit_id: Mapped[str] = mapped_column(ForeignKey("kits.id"), unique=True)
    customer_phone: Mapped[str] = mapped_column(String(20), index=True)  # E.164
    deposit_fcfa: Mapped[int] = mapped_column(BigInteger)
    daily_rate_fcfa: Mapped[int] = mapped_column(BigInteger)
    total_price_fcfa: Mapped[int] = mapped_column(BigInteger)
    paid_total_fcfa: Mapped[int] = mapped_column(BigInteger, default=0)
    remainder_fcfa: Mapped[int] = mapped_column(BigInteger, default=0)
    credit_until: Mapped[int | None] = mapped_column(BigInteger)
    owned: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_accounts_credit_until", "credit_until"),)


class Payment(Base):
    """One provider transaction (or intent). ``(provider, provider_ref)`` is unique."""

    __tablename__ = "payments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    desco_id: Mapped[str] = mapped_column(ForeignKey("descos.id"), index=True)
    provider: Mapped[str] = mapped_column(String(32))
    provider_ref: Mapped[str] = mapped_column(String(128))  # PayGate identifier
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), index=True)
    requested_fcfa: Mapped[int | None] = mapped_column(BigInteger)
    amount_fcfa: Mapped[int | None] = mapped_column(BigInteger)  # as confirmed by the provider
    phone: Mapped[str | None] = mapped_column(String(20))
    network: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))  # initiated|pending|credited|suspense|failed
    reason: Mapped[str | None] = mapped_column(Text)
    tx_reference: Mapped[str | None] = mapped_column(String(64))
    payment_reference: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    credited_at: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        UniqueConstraint("provider", "provider_ref", name="uq_payments_provider_ref"),
    )


class LedgerEntry(Base):
    """Append-only: every change of money or credit on an account, never edited."""

    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    payment_id: Mapped[int | None] = mapped_column(ForeignKey("payments.id"), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # deposit|payment|free_days
    amount_fcfa: Mapped[int] = mapped_column(BigInteger)
    days: Mapped[int] = mapped_column(Integer)
    remainder_after_fcfa: Mapped[int] = mapped_column(BigInteger)
    credit_until_before: Mapped[int | None] = mapped_column(BigInteger)
    credit_until_after: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float)


class Command(Base):
    __tablename__ = "commands"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # uuid4
    kit_id: Mapped[str] = mapped_column(ForeignKey("kits.id"), index=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    action: Mapped[str] = mapped_column(String(16))
    credit_until: Mapped[int | None] = mapped_column(BigInteger)
    issued_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    # queued | sent | applied | rejected | expired | superseded
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    origin: Mapped[str] = mapped_column(String(32))  # sweep|payment|support
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    sent_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        UniqueConstraint("kit_id", "seq", name="uq_commands_kit_seq"),
        Index("ix_commands_status", "status"),
    )


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float)
    actor: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(64))
    desco_id: Mapped[str | None] = mapped_column(String(64), index=True)
    kit_id: Mapped[str | None] = mapped_column(String(64), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class IdempotentRequest(Base):
    """A POST already answered: a retry with the same key gets the same answer."""

    __tablename__ = "idempotent_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"))
    key: Mapped[str] = mapped_column(String(200))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("api_key_id", "key", name="uq_idempotency_key"),)
