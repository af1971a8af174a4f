"""Mobile-money payments through PayGate Global: intents, and callbacks confirmed before credit.

A callback carries no signature, so it is only a hint: the money is credited only when
PayGate's status API says the identifier is paid, and only the amount that API gives.
PayGate HTTP calls never run inside a database transaction (no row lock held across the
network). Crediting is exactly-once: the payment row is locked and re-checked inside the
transaction, and the ledger entry's unique ``payment_id`` is a second guard.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control.gateways.paygate import (
    NETWORKS,
    STATUS_CANCELLED,
    STATUS_EXPIRED,
    STATUS_PENDING,
    PayGateError,
    PayGateStatus,
    PayGateUnavailable,
)
from control.ledger import accounts as ledger
from control.ledger import money
from control.ledger.accounts import Actor
from control.ledger.models import Payment
from control.ledger.phone import PhoneError, local_digits, normalise_phone
from control.payments import callbacks, matching, posting
from control.payments.callbacks import CallbackOutcome
from control.payments.errors import (
    PaymentInvalid,
    PaymentNotFound,
    PaymentProviderUnavailable,
    PaymentRejected,
)
from control.payments.posting import Confirmed
from control.payments.receive import Incoming, receive
from control.runtime import Runtime

log = logging.getLogger(__name__)

PROVIDER = "paygate"
PAYGATE_ACTOR = Actor(name="paygate-callback", role="system")
MAX_AMOUNT_FCFA = money.MAX_AMOUNT_FCFA


def new_identifier(kit_id: str) -> str:
    """Unique, readable in PayGate's back office, tied to the kit's account."""
    return f"CIZO-{kit_id}-{uuid.uuid4().hex[:12]}"


# --- intents ----------------------------------------------------------------------------


def create_intent(
    rt: Runtime, *, actor: Actor, kit_id: str, amount_fcfa: int, phone: str, network: str
) -> Payment:
    """Record an intent, then ask PayGate to collect it from the customer's phone."""
    if isinstance(amount_fcfa, bool) or not isinstance(amount_fcfa, int) or not (
        0 < amount_fcfa <= MAX_AMOUNT_FCFA
    ):
        raise PaymentInvalid(f"amount_fcfa must be a whole number of FCFA in 1..{MAX_AMOUNT_FCFA}")
    network = network.upper()
    if network not in NETWORKS:
        raise PaymentInvalid(f"network must be one of {', '.join(NETWORKS)}")
    try:
        phone_e164 = normalise_phone(phone)
    except PhoneError as exc:
        raise PaymentInvalid(str(exc)) from exc
    if not phone_e164.startswith("+228"):
        raise PaymentInvalid("PayGate collects from Togolese (+228) numbers only")

    identifier = new_identifier(kit_id)
    now = rt.clock.now()
    with rt.db.session() as s:
        acct = ledger.account_for_kit(s, kit_id)
        if acct is None or (actor.desco_id is not None and acct.desco_id != actor.desco_id):
            raise PaymentNotFound(f"kit {kit_id} not found")
        payment = Payment(
            desco_id=acct.desco_id, provider=PROVIDER, provider_ref=identifier,
            account_id=acct.id, requested_fcfa=amount_fcfa, phone=phone_e164, network=network,
            status="initiated", created_at=now, updated_at=now, currency="XOF",
            reference=acct.account_number, check_attempts=0,
            # polled if no callback comes (control.payments.poll)
            next_check_at=now + rt.settings.payment_poll_interval_s,
        )
        s.add(payment)
        s.flush()
        ledger.audit(s, actor=actor, action="payment.intent", now=now, kit_id=kit_id,
                     desco_id=acct.desco_id,
                     after={"identifier": identifier, "amount_fcfa": amount_fcfa,
                            "network": network})
    extra = {"kit_id": kit_id, "payment_id": payment.id}
    log.info("payment intent %s created", identifier, extra=extra)

    try:
        result = rt.paygate.pay(
            phone_local=local_digits(phone_e164), amount=amount_fcfa,
            description=f"CIZO kit {kit_id}", identifier=identifier, network=network,
        )
    except PayGateUnavailable as exc:
        _mark_failed(rt, payment.id, f"PayGate unavailable: {exc}")
        log.warning("payment intent %s: PayGate unavailable", identifier, extra=extra)
        raise PaymentProviderUnavailable(
            f"PayGate could not be reached; payment {identifier} was not started"
        ) from exc
    except PayGateError as exc:
        _mark_failed(rt, payment.id, str(exc))
        log.error("payment intent %s: PayGate error %s", identifier, exc, extra=extra)
        raise PaymentRejected(f"PayGate did not start payment {identifier}: {exc}") from exc

    if not result.registered:
        reason = f"PayGate /pay status {result.status}: {result.status_text}"
        _mark_failed(rt, payment.id, reason)
        log.warning("payment intent %s refused: %s", identifier, reason, extra=extra)
        raise PaymentRejected(f"PayGate refused payment {identifier}: {result.status_text}")

    with rt.db.session() as s:
        row = s.get(Payment, payment.id)
        assert row is not None
        if row.status == "initiated":  # a fast callback may already have moved it on
            row.status = "pending"
        row.tx_reference = result.tx_reference or row.tx_reference
        row.updated_at = rt.clock.now()
        s.flush()
        s.expunge(row)
    log.info("payment intent %s registered at PayGate", identifier, extra=extra)
    return row


def _mark_failed(rt: Runtime, payment_id: int, reason: str) -> None:
    callbacks.set_open_status(rt, payment_id, status="failed", reason=reason)


def get_payment(s: Session, identifier: str, *, desco_id: str | None) -> Payment | None:
    """A payment by its PayGate identifier, within the caller's DESCO (None: national)."""
    q = select(Payment).where(Payment.provider == PROVIDER, Payment.provider_ref == identifier)
    row = s.scalars(q).one_or_none()
    if row is None or (desco_id is not None and row.desco_id != desco_id):
        return None
    return row


# --- callbacks --------------------------------------------------------------------------


def _safe_callback(body: dict[str, Any]) -> dict[str, Any]:
    """The callback fields worth keeping for staff; nothing else a sender put in."""
    keep = ("identifier", "tx_reference", "payment_reference", "amount", "datetime",
            "payment_method", "status")
    return {k: body[k] for k in keep if k in body and isinstance(body[k], str | int | float)}


def handle_paygate_callback(rt: Runtime, body: dict[str, Any]) -> CallbackOutcome:
    """Confirm a callback with PayGate's status API and credit the confirmed amount once.

    Raises ``PaymentInvalid`` for a body without identifier and
    ``PaymentProviderUnavailable`` when PayGate cannot confirm (the provider retries).
    """
    raw_id = body.get("identifier")
    if not isinstance(raw_id, str | int) or isinstance(raw_id, bool) or not str(raw_id).strip():
        raw_id = _identifier_from_tx_reference(rt, body.get("tx_reference"))
        if raw_id is None:
            raise PaymentInvalid("callback has no identifier")
    identifier = str(raw_id).strip()

    state = callbacks.payment_state(rt, PROVIDER, identifier)
    known = state is not None
    payment_id = state.payment_id if state is not None else None
    status_now = state.status if state is not None else None
    kit_id = state.kit_id if state is not None else None
    extra = {"kit_id": kit_id, "payment_id": payment_id}

    if status_now == "credited":
        log.info("callback for %s: already credited", identifier, extra=extra)
        return CallbackOutcome("already_credited", identifier, payment_id)
    if status_now == "suspense":
        log.info("callback for %s: payment is in suspense", identifier, extra=extra)
        return CallbackOutcome("suspense", identifier, payment_id, detail="already in suspense")

    try:
        confirmed = rt.paygate.status_by_identifier(identifier)
    except PayGateError as exc:
        log.warning("callback for %s not confirmed, PayGate status API failed: %s",
                    identifier, exc, extra=extra)
        raise PaymentProviderUnavailable("PayGate status API unavailable; retry later") from exc

    if confirmed is None:
        _record_unconfirmed(rt, identifier, body, known=known, kit_id=kit_id)
        log.warning("callback for %s: PayGate does not know this identifier; nothing credited",
                    identifier, extra=extra)
        return CallbackOutcome("unknown", identifier, payment_id,
                               detail="PayGate does not know this identifier")

    if not known:
        return _park_unmatched(rt, identifier, body, confirmed)
    assert payment_id is not None
    if confirmed.status == STATUS_PENDING:
        _set_status(rt, payment_id, "pending", None, confirmed)
        log.info("callback for %s: still pending at PayGate", identifier, extra=extra)
        return CallbackOutcome("pending", identifier, payment_id)
    if confirmed.status in (STATUS_EXPIRED, STATUS_CANCELLED):
        _set_status(rt, payment_id, "failed", f"PayGate: {confirmed.status_text}", confirmed)
        log.info("callback for %s: %s at PayGate", identifier, confirmed.status_text,
                 extra=extra)
        return CallbackOutcome("failed", identifier, payment_id, detail=confirmed.status_text)
    if not confirmed.paid:
        log.warning("callback for %s: unexpected PayGate status %s; nothing credited",
                    identifier, confirmed.status, extra=extra)
        return CallbackOutcome("pending", identifier, payment_id, detail=confirmed.status_text)

    receipt = posting.credit_intent(rt, payment_id, amount=confirmed.amount, currency=None,
                                    checks=matching.INTENT, actor=PAYGATE_ACTOR,
                                    confirmed=_confirmed(confirmed, rt.clock.now()))
    return callbacks.outcome_of(identifier, receipt)


def _identifier_from_tx_reference(rt: Runtime, raw: object) -> str | None:
    """Format drift: a callback naming only PayGate's tx_reference (number or string)."""
    if raw is None or isinstance(raw, bool) or not str(raw).strip():
        return None
    ref = str(raw).strip()
    if ref.endswith(".0"):
        ref = ref[:-2]
    with rt.db.session() as s:
        found: str | None = s.scalars(select(Payment.provider_ref).where(
            Payment.provider == PROVIDER, Payment.tx_reference == ref)).first()
    return found


def _confirmed(status: PayGateStatus, now: float) -> Confirmed:
    """The payment columns PayGate's status API vouches for."""
    network = status.payment_method if status.payment_method in ("FLOOZ", "TMONEY") else None
    return Confirmed(paid_at=status.paid_at or now, tx_reference=status.tx_reference or None,
                     payment_reference=status.payment_reference or None, network=network)


def _set_status(rt: Runtime, payment_id: int, status: str, reason: str | None,
                confirmed: PayGateStatus) -> None:
    """A verdict that is not a payment (still pending, expired, cancelled)."""
    c = _confirmed(confirmed, rt.clock.now())
    fields: dict[str, Any] = {k: v for k, v in (("tx_reference", c.tx_reference),
                                ("payment_reference", c.payment_reference),
                                ("network", c.network)) if v is not None}
    callbacks.set_open_status(rt, payment_id, only_open=False, status=status, reason=reason,
                              **fields)


def _record_unconfirmed(
    rt: Runtime, identifier: str, body: dict[str, Any], *, known: bool, kit_id: str | None
) -> None:
    """A callback PayGate does not confirm (forged?): kept in the audit log, never credited."""
    with rt.db.session() as s:
        ledger.audit(s, actor=PAYGATE_ACTOR, action="payment.callback_unconfirmed",
                     now=rt.clock.now(), kit_id=kit_id,
                     reason="PayGate status API does not know this identifier"
                     + ("" if known else "; no intent of ours either"),
                     after=_safe_callback(body))


def _park_unmatched(
    rt: Runtime, identifier: str, body: dict[str, Any], confirmed: PayGateStatus
) -> CallbackOutcome:
    """PayGate knows it, we never created it (a payment started from the customer's phone):
    matched by the payer's registered phone, else parked in suspense for staff."""
    if not confirmed.paid or confirmed.amount is None:
        _record_unconfirmed(rt, identifier, body, known=False, kit_id=None)
        log.warning("callback for %s: not ours and not paid (%s); nothing recorded",
                    identifier, confirmed.status_text)
        return CallbackOutcome("unmatched", identifier, detail=confirmed.status_text)
    receipt = receive(rt, Incoming(
        provider=PROVIDER, provider_ref=identifier, desco_id=None,
        amount_fcfa=confirmed.amount, phone_e164=confirmed.phone_e164,
        paid_at=confirmed.paid_at, tx_reference=confirmed.tx_reference,
        payment_reference=confirmed.payment_reference, network=confirmed.payment_method,
        detail=_safe_callback(body)), actor=PAYGATE_ACTOR)
    if receipt.outcome == "credited":
        return CallbackOutcome("credited", identifier, receipt.payment_id, credited=True,
                               command_id=receipt.command_id)
    if receipt.outcome == "duplicate":
        return CallbackOutcome("already_credited" if receipt.detail == "already credited"
                               else "unmatched", identifier, receipt.payment_id,
                               detail=receipt.detail)
    return CallbackOutcome("unmatched", identifier, receipt.payment_id, detail=receipt.detail)
