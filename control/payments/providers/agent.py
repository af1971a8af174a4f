"""A DESCO's own agents (cash collection, shops) report payments through a signed webhook.

The request is proven to come from the DESCO by ``X-Cizo-Signature`` (HMAC-SHA256 over
the timestamp and the raw body, control.payments.providers.webhook_signature) with the
secret stored for that DESCO. A payment is then money that arrived without an intent of
ours (control.payments.receive: matched by reference, then phone); a reversal names the
transaction it takes back (control.payments.reversals). The provider reference is
``<desco>:<transaction id>``, so two DESCOs' agents never collide.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from control.gateways.paygate import normalise_datetime
from control.ledger import money
from control.ledger.accounts import Actor
from control.ledger.phone import PhoneError, normalise_phone
from control.payments.posting import Receipt
from control.payments.providers import webhook_secrets, webhook_signature
from control.payments.receive import Incoming, receive
from control.payments.reversals import reverse
from control.runtime import Runtime

log = logging.getLogger(__name__)

PROVIDER = "agent"


class AgentRefused(ValueError):
    """The webhook is refused; ``status`` is the HTTP answer (401 unproven, 422 invalid)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class AgentPayment:
    """The webhook's body, as the API validated it (control.api.schemas.AgentPaymentIn)."""

    transaction_id: str
    type: str  # payment|reversal
    amount: int | str | float
    currency: str
    reference: str | None = None
    phone: str | None = None
    paid_at: str | int | None = None
    reverses: str | None = None
    agent: str | None = None
    note: str | None = None


def authenticate(rt: Runtime, desco_id: str, header: str | None, raw_body: bytes) -> None:
    """Raise ``AgentRefused`` (401) unless the body is signed with the DESCO's secret."""
    secret = webhook_secrets.secret_for(rt, desco_id)
    if secret is None:
        raise AgentRefused("no webhook secret is configured for this DESCO", 401)
    try:
        webhook_signature.verify(secret, header, raw_body, now=rt.clock.now(),
                                 tolerance_s=rt.settings.webhook_tolerance_s)
    except webhook_signature.SignatureError as exc:
        log.warning("agent webhook refused for DESCO %s: %s", desco_id, exc)
        raise AgentRefused(str(exc), 401) from exc


def record(rt: Runtime, desco_id: str, msg: AgentPayment) -> Receipt:
    """Record an authenticated agent payment or reversal, exactly once.

    Raises ``AgentRefused`` (422) for an amount, currency or phone that must not be
    credited, and ``ReversalConflict`` for a reversal that cannot apply."""
    try:
        amount = money.parse_amount(msg.amount)
        currency = money.check_currency(msg.currency)
        phone = normalise_phone(msg.phone) if msg.phone else None
    except (money.AmountError, PhoneError) as exc:
        raise AgentRefused(str(exc), 422) from exc
    actor = Actor(name=f"webhook:{desco_id}", role="system", desco_id=desco_id)
    ref = f"{desco_id}:{msg.transaction_id}"
    if msg.type == "reversal":
        if not msg.reverses:
            raise AgentRefused("a reversal names the transaction it reverses in 'reverses'",
                               422)
        return reverse(rt, provider=PROVIDER, provider_ref=ref,
                       original_ref=f"{desco_id}:{msg.reverses}", desco_id=desco_id,
                       amount_fcfa=amount, actor=actor, reason=msg.note or "reversal")
    return receive(rt, Incoming(
        provider=PROVIDER, provider_ref=ref, desco_id=desco_id, amount_fcfa=amount,
        currency=currency, phone_e164=phone, reference=msg.reference,
        paid_at=normalise_datetime(msg.paid_at),
        detail={"transaction_id": msg.transaction_id, "agent": msg.agent}), actor=actor)
