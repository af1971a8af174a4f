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
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


DEFAULT_REGION = "Maritime"  # a kit provisioned without a region


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


KIT_MQTT = "mqtt"
KIT_METRICS = "openpaygo_metrics"
KIT_KINDS = (KIT_MQTT, KIT_METRICS)


class Kit(Base):
    __tablename__ = "kits"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the kit serial
    desco_id: Mapped[str] = mapped_column(ForeignKey("descos.id"), index=True)
    mqtt_username: Mapped[str] = mapped_column(String(64), unique=True)
    mqtt_password_hash: Mapped[str] = mapped_column(String(255))
    # the same password, Fernet-encrypted with CIZO_SECRET_KEY: the broker's
    # dynamic-security plugin only takes clear passwords, and must be re-convergeable
    # from the ledger (None: provisioned before; such a kit needs a rotation)
    mqtt_password_enc: Mapped[str | None] = mapped_column(Text)
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
    # the Togolese region the kit is installed in (dashboard filters, open data)
    region: Mapped[str] = mapped_column(String(32), default=DEFAULT_REGION,
                                        server_default=DEFAULT_REGION, index=True)
    # set when the kit's broker password is revoked (its broker client is deleted)
    mqtt_revoked_at: Mapped[float | None] = mapped_column(Float)
    # a pending secret rotation (the derived new secret, encrypted) until the kit
    # proves it holds it; keypad (OpenPAYGO) token chain; anomalies found by the control loop
    secret_next_enc: Mapped[str | None] = mapped_column(Text)
    keypad_only: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    opaygo_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    opaygo_until: Mapped[int | None] = mapped_column(BigInteger)  # token chain position
    # the kit contract version the kit speaks (provisioned; announced in its status;
    # changed by a "protocol" command): commands are signed and published in it
    protocol_version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    anomaly_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_anomaly_at: Mapped[float | None] = mapped_column(Float)
    # how the kit talks to us: "mqtt" (the kit contract) or "openpaygo_metrics" (POST /dd,
    # served by OpenPAYGO tokens); a Metrics device's last request count and timestamp,
    # which the next request must exceed (replays are refused)
    kind: Mapped[str] = mapped_column(String(24), default=KIT_MQTT, server_default=KIT_MQTT)
    metrics_request_count: Mapped[int | None] = mapped_column(BigInteger)
    metrics_request_ts: Mapped[int | None] = mapped_column(BigInteger)


# the kit list's orders and filters (migration 0003_kit_list, control/fleet/kit_list.py)
Index("ix_kits_desco_id_id", Kit.desco_id, Kit.id)
# none on online or last_seen: every kit message updates them (see the migration)


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
    # closing starts the personal-data retention clock; erasure blanks the phone
    closed_at: Mapped[float | None] = mapped_column(Float)
    personal_data_erased_at: Mapped[float | None] = mapped_column(Float)
    last_reminder_at: Mapped[float | None] = mapped_column(Float)  # at most one a day

    __table_args__ = (Index("ix_accounts_credit_until", "credit_until"),)


Index("ix_accounts_owned_kit", Account.owned, Account.kit_id)
# and on PostgreSQL only: ix_accounts_credit_key (coalesce(credit_until, 0), kit_id)


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
    # --- every feed: reversals, currency, matching (migration 0002_payments) ---
    kind: Mapped[str] = mapped_column(String(16), default="payment")  # payment|reversal
    currency: Mapped[str | None] = mapped_column(String(3))
    reverses_payment_id: Mapped[int | None] = mapped_column(ForeignKey("payments.id"))
    reference: Mapped[str | None] = mapped_column(String(128))  # what the payer typed
    matched_by: Mapped[str | None] = mapped_column(String(16))  # intent|reference|phone|link
    paid_at: Mapped[float | None] = mapped_column(Float)  # when the provider took the money
    next_check_at: Mapped[float | None] = mapped_column(Float, index=True)  # status poll due
    check_attempts: Mapped[int] = mapped_column(Integer, default=0)

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
    # when to (re)publish next (backoff with jitter); None once final
    next_attempt_at: Mapped[float | None] = mapped_column(Float, index=True)
    nonce: Mapped[str | None] = mapped_column(String(64))  # rotate commands only

    __table_args__ = (
        UniqueConstraint("kit_id", "seq", name="uq_commands_kit_seq"),
        Index("ix_commands_status", "status"),
        Index("ix_commands_status_expires", "status", "expires_at"),
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


class RateLimit(Base):
    """One rate-limited key's counters, shared by every control process
    (control/security/shared_limits.py): hits in the fixed window starting at
    ``window_start`` and in the window before it."""

    __tablename__ = "rate_limits"

    bucket: Mapped[str] = mapped_column(String(200), primary_key=True)  # "<limit>:<key>"
    window_start: Mapped[float] = mapped_column(Float)
    hits: Mapped[int] = mapped_column(Integer)
    prev_hits: Mapped[int] = mapped_column(Integer)


# --- Alerts, per-kit analytics, pre-aggregated fleet summary -----------------------------


class Alert(Base):
    """An anomaly found by the analytics job: open -> acknowledged -> closed."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kit_id: Mapped[str] = mapped_column(ForeignKey("kits.id"), index=True)
    desco_id: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), index=True)  # open|acknowledged|closed
    detail: Mapped[str | None] = mapped_column(Text)
    evidence: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    opened_at: Mapped[float] = mapped_column(Float)
    last_seen_at: Mapped[float] = mapped_column(Float)
    acknowledged_at: Mapped[float | None] = mapped_column(Float)
    acknowledged_by: Mapped[str | None] = mapped_column(String(200))
    closed_at: Mapped[float | None] = mapped_column(Float)
    closed_by: Mapped[str | None] = mapped_column(String(200))


class KitMetrics(Base):
    """The analytics job's latest findings for one kit (read by the pages and the summary)."""

    __tablename__ = "kit_metrics"

    kit_id: Mapped[str] = mapped_column(ForeignKey("kits.id"), primary_key=True)
    computed_at: Mapped[float] = mapped_column(Float)
    energy_wh_30d: Mapped[float | None] = mapped_column(Float)
    battery_health_pct: Mapped[float | None] = mapped_column(Float)
    load_pattern: Mapped[str | None] = mapped_column(String(32))
    sizing: Mapped[str | None] = mapped_column(String(16))  # ok|undersized|oversized
    solvency_score: Mapped[float | None] = mapped_column(Float)
    solvency_inputs: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class JobLease(Base):
    """Who runs a long job now, until when: one run at a time across control processes."""

    __tablename__ = "job_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[float] = mapped_column(Float)  # wall clock; renewed while it runs
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the holder's last step


class AnalyticsDay(Base):
    """One UTC day's per-kit analytics numbers (telemetry.day_state), kept once the day's
    hourly rollups are final, so the nightly job reads each day of telemetry once."""

    __tablename__ = "analytics_days"

    day: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kits: Mapped[int] = mapped_column(Integer)
    stored_at: Mapped[float] = mapped_column(Float)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class FleetSummary(Base):
    """Figures per (DESCO, region), recomputed every minute so the fleet page reads a few rows."""

    __tablename__ = "fleet_summary"

    desco_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    region: Mapped[str] = mapped_column(String(32), primary_key=True)
    computed_at: Mapped[float] = mapped_column(Float)
    figures: Mapped[dict[str, Any]] = mapped_column(JSON)


# --- Webhook secrets, suspense links, statement reconciliation ------------------------------


class WebhookSecret(Base):
    """A DESCO's signed-webhook secret, encrypted with CIZO_SECRET_KEY (SecretBox)."""

    __tablename__ = "webhook_secrets"

    desco_id: Mapped[str] = mapped_column(ForeignKey("descos.id"), primary_key=True)
    secret_enc: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)


class SuspenseLink(Base):
    """Support proposes linking a parked payment to an account; a finance user decides."""

    __tablename__ = "suspense_links"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    payment_id: Mapped[int] = mapped_column(ForeignKey("payments.id"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    status: Mapped[str] = mapped_column(String(16))  # proposed|approved|rejected
    reason: Mapped[str] = mapped_column(Text)
    proposed_by: Mapped[str] = mapped_column(String(200))
    proposed_key_id: Mapped[int | None] = mapped_column(Integer)
    proposed_at: Mapped[float] = mapped_column(Float)
    decided_by: Mapped[str | None] = mapped_column(String(200))
    decided_at: Mapped[float | None] = mapped_column(Float)


class ReconImport(Base):
    """One uploaded provider statement and the report it produced (moves no money)."""

    __tablename__ = "recon_imports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    desco_id: Mapped[str] = mapped_column(ForeignKey("descos.id"))
    provider: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(255))
    imported_by: Mapped[str] = mapped_column(String(200))
    imported_key_id: Mapped[int | None] = mapped_column(Integer)
    imported_at: Mapped[float] = mapped_column(Float)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)


class ReconProposal(Base):
    """A statement line we never received: credited only once a second finance user approves."""

    __tablename__ = "recon_proposals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    import_id: Mapped[int] = mapped_column(ForeignKey("recon_imports.id"), index=True)
    desco_id: Mapped[str] = mapped_column(ForeignKey("descos.id"))
    provider: Mapped[str] = mapped_column(String(32))
    transaction_id: Mapped[str] = mapped_column(String(128))
    day: Mapped[str] = mapped_column(String(10))
    amount_fcfa: Mapped[int] = mapped_column(BigInteger)
    phone: Mapped[str | None] = mapped_column(String(20))
    reference: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))  # proposed|approved|rejected|superseded
    proposed_by: Mapped[str] = mapped_column(String(200))
    proposed_key_id: Mapped[int | None] = mapped_column(Integer)
    decided_by: Mapped[str | None] = mapped_column(String(200))
    decided_at: Mapped[float | None] = mapped_column(Float)
    payment_id: Mapped[int | None] = mapped_column(ForeignKey("payments.id"))


class KitImport(Base):
    """One CSV of kits imported (a request): who, the counts and every refused row."""

    __tablename__ = "kit_imports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    desco_id: Mapped[str | None] = mapped_column(String(64), index=True)  # None: national
    imported_by: Mapped[str] = mapped_column(String(200))
    imported_key_id: Mapped[int | None] = mapped_column(Integer)
    imported_at: Mapped[float] = mapped_column(Float)
    rows: Mapped[int] = mapped_column(Integer)
    created: Mapped[int] = mapped_column(Integer)
    unchanged: Mapped[int] = mapped_column(Integer)
    rejected: Mapped[int] = mapped_column(Integer)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # row, kit_id, code, message


# --- OpenPAYGO keypad tokens -------------------------------------------------------------


class KitToken(Base):
    """An OpenPAYGO token issued to a kit; ``(kit_id, count)`` is unique: never reused."""

    __tablename__ = "kit_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kit_id: Mapped[str] = mapped_column(ForeignKey("kits.id"), index=True)
    count: Mapped[int] = mapped_column(Integer)
    token: Mapped[str] = mapped_column(String(20))
    token_type: Mapped[str] = mapped_column(String(16))  # add_time|set_time|disable_payg
    value_days: Mapped[int | None] = mapped_column(Integer)
    credit_until: Mapped[int | None] = mapped_column(BigInteger)  # the ledger's end it carries
    chain_until: Mapped[int | None] = mapped_column(BigInteger)  # the kit's end once entered
    payment_id: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[float] = mapped_column(Float)
    delivered_at: Mapped[float | None] = mapped_column(Float)  # sent in a Metrics answer

    __table_args__ = (UniqueConstraint("kit_id", "count", name="uq_kit_tokens_kit_count"),)
