"""Reversals and refunds: correcting entries on the append-only ledger, never edits.

A reversal is its own provider transaction (``kind`` reversal) naming the payment it takes
back. It is posted through the one posting path (control.payments.posting) as a negative
ledger entry; the kit converges to what is left. Unknown original: the reversal is parked
(nothing moves) for staff. Original still in suspense: it is voided (no ledger entry
existed). More than is left to reverse: refused, nothing recorded.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from control.ledger import accounts, money
from control.ledger.accounts import Actor
from control.ledger.models import Payment
from control.ledger.writes import inserted_id
from control.payments import posting
from control.payments.posting import PaymentRow, Posted, Receipt
from control.payments.receive import existing
from control.runtime import Runtime

log = logging.getLogger(__name__)


class ReversalConflict(ValueError):
    """The reversal cannot apply as sent; nothing was recorded (the transaction rolled back)."""


def reverse(rt: Runtime, *, provider: str, provider_ref: str, original_ref: str,
            desco_id: str | None, amount_fcfa: int, actor: Actor, reason: str) -> Receipt:
    """Record the reversal ``provider_ref`` of ``original_ref``, exactly once."""
    now = rt.clock.now()
    posted: Posted | None = None
    try:
        with rt.db.writing() as conn:
            q = select(Payment.id).where(Payment.provider == provider,
                                         Payment.provider_ref == original_ref,
                                         Payment.kind == "payment")
            if desco_id is not None:
                q = q.where(Payment.desco_id == desco_id)
            original_id = conn.scalar(q)
            found = posting.lock_payment(conn, original_id) if original_id is not None \
                else None
            original = found[0] if found is not None else None
            desco = (original.desco_id if original else desco_id) or rt.settings.default_desco_id
            pid = inserted_id(conn.execute(insert(Payment).values(
                desco_id=desco, provider=provider, provider_ref=provider_ref,
                kind="reversal", reverses_payment_id=original.id if original else None,
                amount_fcfa=amount_fcfa, currency=money.CURRENCY, reference=original_ref,
                status="received", created_at=now, updated_at=now, paid_at=now,
                check_attempts=0, reason=reason)))
            row = PaymentRow(pid, "received", provider, provider_ref, desco, None, None,
                             amount_fcfa, reason)
            receipt, posted = _apply(rt, conn, row, original, original_ref, actor=actor)
    except IntegrityError as exc:
        return existing(rt, provider, provider_ref, amount_fcfa, exc)
    posting.deliver(rt, posted)
    return receipt


def _apply(rt: Runtime, conn: Connection, row: PaymentRow, original: PaymentRow | None,
           original_ref: str, *, actor: Actor) -> tuple[Receipt, Posted | None]:
    now = rt.clock.now()
    amount = row.amount_fcfa
    assert amount is not None
    detail = {"provider": row.provider, "provider_ref": row.provider_ref,
              "reverses": original_ref, "amount_fcfa": amount}
    if original is None:
        why = "reversal of a payment we do not know"
        conn.execute(update(Payment).where(Payment.id == row.id)
                     .values(status="suspense", reason=why))
        accounts.audit(conn, actor=actor, action="payment.reversal_unknown", now=now,
                      desco_id=row.desco_id, reason=why, after=detail)
        log.warning("reversal for an unknown payment parked", extra={"payment_id": row.id})
        return Receipt("unknown_original", row.id, amount_fcfa=amount, detail=why), None
    if original.status == "suspense":
        if amount != original.amount_fcfa:
            raise ReversalConflict("a suspense payment can only be reversed whole")
        conn.execute(update(Payment).where(Payment.id == original.id)
                     .values(status="reversed", updated_at=now))
        conn.execute(update(Payment).where(Payment.id == row.id).values(status="void"))
        accounts.audit(conn, actor=actor, action="payment.reversal_void", now=now,
                      desco_id=row.desco_id, reason="original was in suspense", after=detail)
        return Receipt("void", row.id, amount_fcfa=amount,
                       detail="original was in suspense: nothing had been credited"), None
    if original.status != "credited" or original.account_id is None:
        raise ReversalConflict(f"original payment is {original.status}")
    already = conn.scalar(select(func.coalesce(func.sum(Payment.amount_fcfa), 0)).where(
        Payment.reverses_payment_id == original.id, Payment.status == "applied")) or 0
    left = (original.amount_fcfa or 0) - int(already)
    if amount > left:
        raise ReversalConflict(f"only {left} of payment {original.provider_ref} is left to reverse")
    acct = posting.lock_account(conn, original.account_id)
    assert acct is not None
    posted = posting.post(rt, conn, payment=row, acct=acct, amount=amount, kind="reversal",
                          staff=(actor, "payment.reversal", detail), reason=row.reason)
    receipt = Receipt("reversed", row.id, account_id=acct.id, kit_id=acct.kit_id,
                      command_id=posted.issued.id if posted.issued is not None else None,
                      amount_fcfa=amount)
    return receipt, posted


def refund(rt: Runtime, *, identifier: str, refund_id: str, amount_fcfa: int, reason: str,
           actor: Actor) -> Receipt | None:
    """Finance records a refund of the payment ``identifier`` (any provider); ``refund_id``
    is the caller's own id, so a retry is a no-op. None: no such payment in the actor's
    DESCO."""
    with rt.db.engine.connect() as conn:
        found = conn.execute(select(Payment.provider, Payment.desco_id).where(
            Payment.provider_ref == identifier, Payment.kind == "payment")).first()
    if found is None or (actor.desco_id is not None and found.desco_id != actor.desco_id):
        return None
    return reverse(rt, provider=found.provider, provider_ref=f"refund:{identifier}:{refund_id}",
                   original_ref=identifier, desco_id=found.desco_id, amount_fcfa=amount_fcfa,
                   actor=actor, reason=reason)
