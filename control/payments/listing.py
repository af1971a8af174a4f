"""Payments as finance and support browse them: filtered, newest first, in keyset pages
(a page never shifts when new payments arrive)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from control.ledger.models import Account, Payment


@dataclass(frozen=True)
class PaymentFilter:
    desco_id: str | None = None  # the caller's DESCO scope, never widened by a filter
    status: str | None = None
    provider: str | None = None
    kit_id: str | None = None
    since: float | None = None  # created at or after
    until: float | None = None  # created before


def list_payments(s: Session, f: PaymentFilter, *, before_id: int | None = None,
                  limit: int = 50) -> tuple[list[tuple[Payment, str | None]], int | None]:
    """(payment, its kit) pairs with ids below ``before_id``, and the cursor of the next
    page (None on the last one)."""
    q = select(Payment, Account.kit_id).outerjoin(Account, Payment.account_id == Account.id)
    if f.desco_id is not None:
        q = q.where(Payment.desco_id == f.desco_id)
    if f.status is not None:
        q = q.where(Payment.status == f.status)
    if f.provider is not None:
        q = q.where(Payment.provider == f.provider)
    if f.kit_id is not None:
        q = q.where(Account.kit_id == f.kit_id)
    if f.since is not None:
        q = q.where(Payment.created_at >= f.since)
    if f.until is not None:
        q = q.where(Payment.created_at < f.until)
    if before_id is not None:
        q = q.where(Payment.id < before_id)
    rows: list[tuple[Payment, str | None]] = [
        (p, kit) for p, kit in s.execute(q.order_by(Payment.id.desc()).limit(limit + 1))]
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1][0].id if more and rows else None)
