"""What the providers' confirmation flows share: a cheap first look at a payment, the
not-yet-final statuses written under the row's lock, and the answer a callback gets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select, update

from control.ledger import accounts
from control.ledger.accounts import Actor
from control.ledger.models import Account, Payment
from control.payments.posting import SETTLED, Receipt
from control.runtime import Runtime

OPEN = ("initiated", "pending")


@dataclass(frozen=True, slots=True)
class CallbackOutcome:
    """What a callback led to; ``credited`` is True only for the one call that credited."""

    outcome: str  # credited|already_credited|pending|failed|suspense|unknown|unmatched
    identifier: str
    payment_id: int | None = None
    credited: bool = False
    command_id: str | None = None
    detail: str | None = None


def outcome_of(identifier: str, r: Receipt) -> CallbackOutcome:
    """A posting's receipt as the provider's callback is answered."""
    name = r.outcome
    if r.outcome == "duplicate":
        name = "suspense" if r.detail == "already suspense" else "already_credited"
    return CallbackOutcome(name, identifier, r.payment_id, credited=r.credited,
                           command_id=r.command_id, detail=r.detail)


@dataclass(frozen=True, slots=True)
class PaymentState:
    """What a callback needs to know before asking the provider: one cheap read."""

    payment_id: int
    status: str
    kit_id: str | None
    check_attempts: int


_STATE = (select(Payment.id, Payment.status, Account.kit_id, Payment.check_attempts)
          .outerjoin(Account, Account.id == Payment.account_id)
          .where(Payment.provider == bindparam("provider"),
                 Payment.provider_ref == bindparam("ref")))


def payment_state(rt: Runtime, provider: str, provider_ref: str) -> PaymentState | None:
    """One Core SELECT built once (no ORM objects, no flush): a callback's first look."""
    with rt.db.engine.connect() as conn:
        r = conn.execute(_STATE, {"provider": provider, "ref": provider_ref}).first()
    if r is None:
        return None
    return PaymentState(r[0], r[1], r[2], r[3] or 0)


def set_open_status(rt: Runtime, payment_id: int, *, only_open: bool = True,
                    audit: tuple[Actor, str, dict[str, Any]] | None = None,
                    **values: Any) -> bool:
    """Write ``values`` (a pending or failed verdict, the next check) on a payment that is
    still open (``only_open`` False: on any payment not yet credited or parked), in one
    transaction with its ``audit`` entry (actor, action, detail; the reason is
    ``values["reason"]``); False when the payment has moved on meanwhile."""
    still = Payment.status.in_(OPEN) if only_open else Payment.status.not_in(SETTLED)
    now = rt.clock.now()
    with rt.db.writing() as conn:
        desco = conn.execute(update(Payment).where(Payment.id == payment_id, still)
                             .values(updated_at=now, **values)
                             .returning(Payment.desco_id)).scalar()
        if desco is not None and audit is not None:
            actor, action, detail = audit
            accounts.audit(conn, actor=actor, action=action, now=now, desco_id=desco,
                          reason=values.get("reason"), after=detail)
    return desco is not None
