"""Request and response models of the HTTP API: the OpenAPI document is built from these."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cizo import protocol
from control.ledger import money

Network = Literal["FLOOZ", "TMONEY"]
Role = Literal["admin", "operator", "support", "finance", "regulator"]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(BaseModel):
    """Every error answer (control.api.errors): ``detail`` in English (or the validation
    errors' list), a stable ``code`` and the ``message`` in the caller's language."""

    detail: Any
    code: str | None = Field(default=None, description="machine-readable, stable")
    message: str | None = Field(
        default=None, description="for people, in the language Accept-Language asks for "
                                  "(fr or en; fr by default)")


class Health(BaseModel):
    status: str


class PlanIn(_In):
    deposit_fcfa: int = Field(ge=0, le=100_000_000)
    daily_rate_fcfa: int = Field(gt=0, le=10_000_000)
    total_price_fcfa: int = Field(gt=0, le=100_000_000)


class PlanOut(BaseModel):
    deposit_fcfa: int
    daily_rate_fcfa: int
    total_price_fcfa: int


class KitCreate(_In):
    kit_id: protocol.KitId
    desco_id: str | None = Field(default=None, min_length=1, max_length=64)
    phone: str = Field(min_length=8, max_length=32, description="customer phone, any Togo form")
    plan: PlanIn
    deposit_paid: bool = Field(default=True, description="deposit taken in cash at the sale")
    region: str | None = Field(default=None, max_length=32, description="Togo region")
    kind: Literal["mqtt", "openpaygo_metrics"] = Field(
        default="mqtt", description="mqtt: a CIZO kit; openpaygo_metrics: a device posting "
        "OpenPAYGO Metrics to /dd, served by OpenPAYGO tokens")


class KitCredentials(BaseModel):
    """Shown once, at provisioning: only hashes and ciphertext are stored."""

    kit_id: str
    account_number: str
    desco_id: str
    mqtt_username: str
    mqtt_password: str
    command_secret: str
    kind: str = "mqtt"
    openpaygo_key: str | None = Field(
        default=None,
        description="OpenPAYGO Metrics devices: the 32-hex key that signs their requests "
        "and decodes their tokens")


class CommandOut(BaseModel):
    id: str
    kit_id: str
    seq: int
    action: str
    credit_until: int | None
    status: str = Field(description="queued|sent|applied|rejected|expired|superseded")
    reason: str | None
    origin: str
    attempts: int
    issued_at: int
    expires_at: int
    created_at: float
    sent_at: float | None
    finished_at: float | None


class KitSummary(BaseModel):
    kit_id: str
    desco_id: str
    region: str
    account_number: str | None
    locked: bool | None = Field(description="as last reported by the kit")
    credit_until: int | None
    online: bool
    last_seen: float | None
    owned: bool
    commanded_action: str | None
    kind: str = Field(description="mqtt | openpaygo_metrics")


class KitPage(BaseModel):
    items: list[KitSummary]
    limit: int
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; "
                                    "null on the last page")


class ImportRowError(BaseModel):
    row: int = Field(description="line of the file (the header is line 1)")
    kit_id: str
    code: str
    message: str


class KitImportOut(BaseModel):
    """The import's report; ``credentials`` of the kits created are shown only here."""

    import_id: int = Field(description="GET /v1/kits/imports/{import_id}/errors.csv")
    rows: int
    created: int
    unchanged: int
    rejected: int
    credentials: list[KitCredentials]
    errors: list[ImportRowError]


class KitDetail(BaseModel):
    kit_id: str
    desco_id: str
    account_number: str | None
    customer_phone: str | None
    locked: bool | None = Field(description="as last reported by the kit")
    reported_credit_until: int | None
    credit_until: int | None = Field(description="from the ledger: when credit ends")
    online: bool
    last_seen: float | None
    fw: str | None
    protocol_version: int = Field(description="the kit contract version it speaks (1, 2)")
    last_telemetry: dict[str, Any] | None = Field(
        description="latest reading from InfluxDB; null if none or InfluxDB is unreachable"
    )
    paid_total_fcfa: int
    balance_fcfa: int
    remainder_fcfa: int
    owned: bool
    plan: PlanOut | None
    desired_action: str | None
    commanded_action: str | None
    commanded_credit_until: int | None
    decommissioned_at: float | None
    latest_commands: list[CommandOut]


class ReasonIn(_In):
    """A support action's body: every write by staff says why (audited)."""

    reason: str = Field(min_length=1, max_length=1000)

    @field_validator("reason")
    @classmethod
    def _reason_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("reason must not be blank")
        return value.strip()


class UnlockIn(ReasonIn):
    days: int = Field(ge=1, le=3650)


class UnlockOut(BaseModel):
    kit_id: str
    days: int
    command_id: str | None = Field(description="null when the kit needs no new command")
    credit_until: int | None
    before: dict[str, Any]
    after: dict[str, Any]


class AuditOut(BaseModel):
    id: int
    at: float
    actor: str
    role: str
    action: str
    desco_id: str | None
    kit_id: str | None
    reason: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class AuditPage(BaseModel):
    items: list[AuditOut]
    limit: int
    offset: int


class IntentIn(_In):
    kit_id: str = Field(min_length=1, max_length=64)
    amount_fcfa: int = Field(gt=0, le=10_000_000)
    phone: str = Field(min_length=8, max_length=32)
    network: Network


class IntentOut(BaseModel):
    identifier: str
    kit_id: str
    amount_fcfa: int
    status: str
    tx_reference: str | None


class PaymentOut(BaseModel):
    identifier: str
    payment_id: int | None = None
    provider: str
    kit_id: str | None
    desco_id: str
    status: str = Field(description="initiated|pending|credited|suspense|failed")
    requested_fcfa: int | None
    amount_fcfa: int | None = Field(description="as confirmed by the provider")
    network: str | None
    phone: str | None
    reason: str | None
    tx_reference: str | None
    payment_reference: str | None
    created_at: float
    updated_at: float
    credited_at: float | None


class PaymentPage(BaseModel):
    items: list[PaymentOut]
    next_before: int | None = Field(description="pass as ?before= for the next page; null on "
                                                "the last one")


class PayGateCallbackIn(BaseModel):
    """What PayGate posts; only ``identifier`` is used, the rest is confirmed via status API."""

    model_config = ConfigDict(extra="allow")

    identifier: str
    tx_reference: str | int | None = None
    payment_reference: str | int | None = None
    amount: int | str | None = None
    datetime: str | None = None
    payment_method: str | None = None
    phone_number: str | int | None = None


class CallbackAck(BaseModel):
    outcome: str = Field(
        description="credited|already_credited|pending|failed|suspense|unknown|unmatched"
    )
    identifier: str
    credited: bool


# --- payments -------------------------------------------------------------------------


class MoMoIntentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kit_id: str = Field(min_length=1, max_length=64)
    amount_fcfa: int = Field(gt=0, le=money.MAX_AMOUNT_FCFA)
    phone: str = Field(min_length=8, max_length=32)


class MoMoIntentOut(BaseModel):
    reference_id: str
    kit_id: str
    amount_fcfa: int
    status: str


class FeedAck(BaseModel):
    outcome: str = Field(description="credited|already_credited|duplicate|pending|failed|"
                                     "suspense|unknown|unmatched|reversed|void|"
                                     "unknown_original")
    reference: str
    credited: bool
    payment_id: int | None = None


class AgentPaymentIn(BaseModel):
    """The signed generic webhook's body (DESCO agents, cash collection). Strict: a field we
    do not know is refused, so a typo cannot silently drop information."""

    model_config = ConfigDict(extra="forbid")

    transaction_id: str = Field(min_length=1, max_length=100)
    type: Literal["payment", "reversal"] = "payment"
    amount: int | str | float
    currency: str
    reference: str | None = Field(default=None, max_length=128)
    phone: str | None = Field(default=None, max_length=32)
    paid_at: str | int | None = None
    reverses: str | None = Field(default=None, max_length=100)
    agent: str | None = Field(default=None, max_length=100)
    note: str | None = Field(default=None, max_length=500)


class RefundIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount_fcfa: int = Field(gt=0, le=money.MAX_AMOUNT_FCFA)
    reason: str = Field(min_length=3, max_length=500)
    refund_id: str = Field(min_length=1, max_length=64,
                           description="your unique id for this refund (a retry is a no-op)")


# --- finance --------------------------------------------------------------------------


class SecretOut(BaseModel):
    desco_id: str
    secret: str = Field(description="shown once: sign with HMAC-SHA256 over '<t>.<raw body>'")


class LinkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account: str = Field(min_length=1, max_length=64, description="account number or kit")
    reason: str = Field(min_length=3, max_length=500)


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=500)


class LinkOut(BaseModel):
    link_id: int
    payment_id: int
    account_id: int
    status: str
    proposed_by: str
    decided_by: str | None
    credited: bool = False
    kit_id: str | None = None
    reason: str | None = None
    proposed_at: float | None = None
    decided_at: float | None = None


class SuspenseOut(BaseModel):
    payment_id: int
    desco_id: str
    provider: str
    provider_ref: str
    kind: str
    amount_fcfa: int | None
    currency: str | None
    reference: str | None
    phone: str | None
    reason: str | None
    hint_account_id: int | None
    received_at: float
    links: list[LinkOut] = Field(default_factory=list,
                                 description="proposals, oldest first: who proposed, who decided")


class ImportOut(BaseModel):
    import_id: int
    provider: str
    desco_id: str
    imported_by: str
    report: dict[str, Any]


class ProposalOut(BaseModel):
    proposal_id: int
    import_id: int
    provider: str
    transaction_id: str
    day: str
    amount_fcfa: int
    status: str
    proposed_by: str
    decided_by: str | None
    payment_id: int | None
    outcome: str | None = None


# --- support --------------------------------------------------------------------------


class CreditUntilIn(ReasonIn):
    credit_until: int = Field(ge=0, le=4_102_444_800, description="unix seconds (UTC)")


class SwapIn(ReasonIn):
    new_kit_id: protocol.KitId


class KeypadIn(ReasonIn):
    keypad_only: bool


class ProtocolIn(BaseModel):
    version: Literal[1, 2]


class TokenIn(ReasonIn):
    send_sms: bool = True


class ActionOut(BaseModel):
    kit_id: str
    action: str
    command_id: str | None = Field(description="the command it issued (see /v1/commands)")
    before: dict[str, Any]
    after: dict[str, Any]


class SwapOut(BaseModel):
    old_kit_id: str
    command_id: str | None
    credentials: KitCredentials


class TokenOut(BaseModel):
    id: int
    kit_id: str
    count: int
    token: str
    token_type: str
    value_days: int | None
    credit_until: int | None
    chain_until: int | None
    payment_id: int | None
    reason: str | None
    created_by: str
    created_at: float


class TokenPage(BaseModel):
    items: list[TokenOut]


class CommandPage(BaseModel):
    kit_id: str
    anomaly_count: int
    last_anomaly_at: float | None
    items: list[CommandOut]


class ControlStatus(BaseModel):
    commands_by_status: dict[str, int]
    anomalies_total: int
    kits_with_anomalies: int
    process_counters: dict[str, Any]


# --- keys -----------------------------------------------------------------------------


class KeyCreate(BaseModel):
    model_config = {"extra": "forbid"}

    name: str = Field(min_length=1, max_length=200, pattern=r"\S",
                      description="who holds the key (person or system)")
    role: Role
    desco_id: str | None = Field(default=None, min_length=1, max_length=64,
                                 description="null: national (admin of the platform only)")


class KeyOut(BaseModel):
    id: int
    name: str
    role: str
    desco_id: str | None
    created_at: float
    revoked_at: float | None


class KeyCreated(KeyOut):
    key: str = Field(description="the key itself: shown once, only its hash is stored")


class KeyPage(BaseModel):
    items: list[KeyOut]
