"""MTN MoMo collections: request-to-pay intents, callbacks and polling, confirmed by GET.

The callback URL carries the payment's own key (our X-Reference-Id, a UUID v4 we chose),
because MoMo's callback body has none. Whatever the callback says, the money is credited
only when ``GET /requesttopay/{referenceId}`` says SUCCESSFUL, in XOF, for the amount we
asked. FAILED is final (its reason kept); PENDING is polled (``control.payments.poll``).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from control.gateways.momo import FAILED, PENDING, SUCCESSFUL, MoMoClient, MoMoError
from control.ledger import accounts as ledger
from control.ledger import money
from control.ledger.accounts import Actor
from control.ledger.models import Payment
from control.ledger.phone import PhoneError, normalise_phone
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

PROVIDER = "momo"
MOMO_ACTOR = Actor(name="momo-callback", role="system")


def client(rt: Runtime) -> MoMoClient:
    if rt.momo is None:
        raise PaymentProviderUnavailable("MTN MoMo is not configured")
    return rt.momo


def callback_url(rt: Runtime, reference_id: str) -> str:
    return f"{rt.settings.callback_base_url()}/v1/payments/momo/callback/{reference_id}"


def next_check(rt: Runtime, attempts: int) -> float:
    """Exponential backoff from the poll interval, capped."""
    step = rt.settings.payment_poll_interval_s * float(2 ** min(attempts, 16))
    return float(rt.clock.now() + min(step, rt.settings.payment_poll_max_backoff_s))


def create_intent(rt: Runtime, *, actor: Actor, kit_id: str, amount_fcfa: int,
                  phone: str) -> Payment:
    """Record the intent, then ask MoMo to collect it; the callback URL carries our key."""
    try:
        amount = money.parse_amount(amount_fcfa)
        phone_e164 = normalise_phone(phone)
    except (money.AmountError, PhoneError) as exc:
        raise PaymentInvalid(str(exc)) from exc
    reference_id = str(uuid.uuid4())
    now = rt.clock.now()
    with rt.db.session() as s:
        acct = ledger.account_for_kit(s, kit_id)
        if acct is None or (actor.desco_id is not None and acct.desco_id != actor.desco_id):
            raise PaymentNotFound(f"kit {kit_id} not found")
        row = Payment(desco_id=acct.desco_id, provider=PROVIDER, provider_ref=reference_id,
                      account_id=acct.id, requested_fcfa=amount, phone=phone_e164,
                      network="MTN", currency=rt.settings.momo_currency, kind="payment",
                      reference=acct.account_number, status="initiated", created_at=now,
                      updated_at=now, check_attempts=0,
                      next_check_at=now + rt.settings.payment_poll_interval_s)
        s.add(row)
        s.flush()
        ledger.audit(s, actor=actor, action="payment.intent", now=now, kit_id=kit_id,
                     desco_id=acct.desco_id, after={"provider": PROVIDER,
                                                    "reference_id": reference_id,
                                                    "amount_fcfa": amount})
        account_number = acct.account_number
    extra = {"kit_id": kit_id, "payment_id": row.id}
    try:
        client(rt).request_to_pay(
            reference_id=reference_id, amount=amount, currency=rt.settings.momo_currency,
            external_id=account_number, phone_e164=phone_e164,
            callback_url=callback_url(rt, reference_id), message=f"CIZO kit {kit_id}")
    except MoMoError as exc:
        # unsure whether MoMo registered it: keep it pending, the poller asks MoMo later
        with rt.db.session() as s:
            p = s.get(Payment, row.id)
            assert p is not None
            p.status, p.reason = "pending", f"requesttopay not confirmed: {exc}"
        log.warning("MoMo requesttopay failed: %s", exc, extra=extra)
        if "HTTP 4" in str(exc):
            raise PaymentRejected(f"MoMo refused payment {reference_id}: {exc}") from exc
        raise PaymentProviderUnavailable(f"MoMo could not be reached: payment {reference_id} "
                                         "will be checked again later") from exc
    with rt.db.session() as s:
        p = s.get(Payment, row.id)
        assert p is not None
        if p.status == "initiated":
            p.status = "pending"
        s.flush()
        s.expunge(p)
    log.info("MoMo request-to-pay %s registered", reference_id, extra=extra)
    return p


def safe_body(body: dict[str, Any]) -> dict[str, Any]:
    keep = ("financialTransactionId", "externalId", "amount", "currency", "status")
    return {k: body[k] for k in keep if isinstance(body.get(k), str | int | float)}


def confirm(rt: Runtime, reference_id: str, body: dict[str, Any] | None = None
            ) -> CallbackOutcome:
    """Ask MoMo for the verdict on ``reference_id`` and act on it (callback or poll)."""
    state = callbacks.payment_state(rt, PROVIDER, reference_id)
    payment_id = state.payment_id if state else None
    status_now = state.status if state else None
    attempts = state.check_attempts if state else 0
    extra = {"kit_id": state.kit_id if state else None, "payment_id": payment_id}
    if status_now in ("credited", "suspense", "failed"):
        return CallbackOutcome("already_credited" if status_now == "credited" else status_now,
                               reference_id, payment_id)
    try:
        verdict = client(rt).status(reference_id)
    except MoMoError as exc:
        if payment_id is not None:
            _schedule(rt, payment_id, attempts + 1, f"status check failed: {exc}")
        log.warning("MoMo status for %s unavailable: %s", reference_id, exc, extra=extra)
        raise PaymentProviderUnavailable("MoMo status API unavailable; retry later") from exc
    if verdict is None:
        with rt.db.session() as s:
            ledger.audit(s, actor=MOMO_ACTOR, action="payment.callback_unconfirmed",
                         now=rt.clock.now(), reason="MoMo does not know this referenceId",
                         after={"reference_id": reference_id, **safe_body(body or {})})
        log.warning("MoMo does not know %s; nothing credited", reference_id, extra=extra)
        return CallbackOutcome("unknown", reference_id, payment_id)
    if payment_id is None:
        if verdict.status != SUCCESSFUL or verdict.amount is None:
            return CallbackOutcome("unmatched", reference_id, detail=verdict.status)
        receipt = receive(rt, Incoming(
            provider=PROVIDER, provider_ref=reference_id, desco_id=None,
            amount_fcfa=verdict.amount, currency=verdict.currency or "",
            phone_e164=verdict.payer_e164, reference=verdict.external_id,
            payment_reference=verdict.financial_transaction_id, network="MTN",
            detail={"reference_id": reference_id}), actor=MOMO_ACTOR)
        return callbacks.outcome_of(reference_id, receipt)
    if verdict.status == PENDING or verdict.status not in (SUCCESSFUL, FAILED):
        _schedule(rt, payment_id, attempts + 1, None)
        return CallbackOutcome("pending", reference_id, payment_id, detail=verdict.status)
    if verdict.status == FAILED:
        reason = f"MoMo FAILED: {verdict.reason or 'no reason given'}"
        callbacks.set_open_status(rt, payment_id, status="failed", reason=reason,
                                  next_check_at=None,
                                  audit=(MOMO_ACTOR, "payment.failed",
                                         {"reference_id": reference_id}))
        log.info("MoMo payment %s failed: %s", reference_id, verdict.reason, extra=extra)
        return CallbackOutcome("failed", reference_id, payment_id, detail=reason)
    # a currency other than XOF is kept as sent: posting parks it in suspense
    receipt = posting.credit_intent(
        rt, payment_id, amount=verdict.amount, currency=verdict.currency,
        checks=matching.INTENT_WITHIN_OWED, actor=MOMO_ACTOR,
        confirmed=Confirmed(paid_at=rt.clock.now(),
                            payment_reference=verdict.financial_transaction_id))
    return callbacks.outcome_of(reference_id, receipt)


def _schedule(rt: Runtime, payment_id: int, attempts: int, reason: str | None) -> None:
    values: dict[str, Any] = {"status": "pending", "check_attempts": attempts,
                              "next_check_at": next_check(rt, attempts)}
    if reason:
        values["reason"] = reason
    callbacks.set_open_status(rt, payment_id, **values)
