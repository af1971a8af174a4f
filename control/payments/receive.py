"""Money that arrived without an intent of ours: record it, match it to an account, post it.

A payment started from the customer's phone (PayGate, MoMo), a DESCO agent's signed webhook
and a statement line approved by finance all arrive as an ``Incoming``: a provider
transaction whose money is confirmed. It is recorded, matched by reference (account number
or kit serial, any case or spacing) then by the payer's registered phone, and posted
(control.payments.posting) — or parked in suspense, never dropped. The payment's unique
``(provider, provider_ref)`` makes every delivery after the first a duplicate, also under
concurrent deliveries.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, Connection, insert, literal_column, select
from sqlalchemy.exc import IntegrityError

from control.ledger import money
from control.ledger.accounts import Actor
from control.ledger.models import Account, Payment
from control.ledger.writes import inserted_id
from control.payments import matching, posting
from control.payments.posting import Confirmed, PaymentRow, Posted, Receipt
from control.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Incoming:
    """A provider transaction whose money is confirmed (by status API, signature or approval)."""

    provider: str
    provider_ref: str
    desco_id: str | None  # None: any DESCO (a platform-wide merchant account)
    amount_fcfa: int
    currency: str = money.CURRENCY
    phone_e164: str | None = None
    reference: str | None = None
    paid_at: float | None = None
    tx_reference: str | None = None
    payment_reference: str | None = None
    network: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)  # safe fields for the audit log


def find_match(conn: Connection, *, desco_id: str | None, reference: str | None,
               phone_e164: str | None) -> matching.Match:
    """Reference (account number or kit serial, any case/spacing), then registered phone."""
    by_ref: list[int] = []
    key = matching.normalise_reference(reference)
    if key is not None:
        number: ColumnElement[str] = literal_column(
            matching.sql_normalised("accounts.account_number"))
        serial: ColumnElement[str] = literal_column(matching.sql_normalised("accounts.kit_id"))
        q = select(Account.id).where((number == key) | (serial == key))
        if desco_id is not None:
            q = q.where(Account.desco_id == desco_id)
        by_ref = list(conn.scalars(q))
    by_phone: list[int] = []
    if phone_e164 is not None:
        q3 = select(Account.id).where(Account.customer_phone == phone_e164)
        if desco_id is not None:
            q3 = q3.where(Account.desco_id == desco_id)
        by_phone = list(conn.scalars(q3))
    return matching.decide(by_ref, by_phone)


def receive(rt: Runtime, inc: Incoming, *, actor: Actor) -> Receipt:
    """Record, match and credit (or park) a confirmed payment, exactly once."""
    now = rt.clock.now()
    posted: Posted | None = None
    try:
        with rt.db.writing() as conn:
            desco = inc.desco_id or rt.settings.default_desco_id
            # the unique (provider, provider_ref) fails here for a duplicate
            pid = inserted_id(conn.execute(insert(Payment).values(
                desco_id=desco, provider=inc.provider, provider_ref=inc.provider_ref,
                kind="payment", amount_fcfa=inc.amount_fcfa, currency=inc.currency,
                phone=inc.phone_e164, reference=inc.reference, network=inc.network,
                tx_reference=inc.tx_reference, payment_reference=inc.payment_reference,
                paid_at=inc.paid_at or now, status="received", created_at=now,
                updated_at=now, check_attempts=0)))
            payment = PaymentRow(pid, "received", inc.provider, inc.provider_ref, desco,
                                 None, None, inc.amount_fcfa, None)
            match = find_match(conn, desco_id=inc.desco_id, reference=inc.reference,
                               phone_e164=inc.phone_e164)
            acct = posting.lock_account(conn, match.account_id) \
                if match.account_id is not None else None
            receipt, posted = posting.settle(
                rt, conn, payment=payment, acct=acct, amount=inc.amount_fcfa,
                currency=inc.currency, checks=matching.MATCHED, actor=actor,
                matched_by=match.matched_by, unmatched=match.reason or "no account matches",
                detail=inc.detail, confirmed=Confirmed())
    except IntegrityError as exc:
        log.info("%s transaction already recorded", inc.provider)
        return existing(rt, inc.provider, inc.provider_ref, inc.amount_fcfa, exc)
    posting.deliver(rt, posted)
    return receipt


def existing(rt: Runtime, provider: str, provider_ref: str, amount_fcfa: int,
             error: IntegrityError) -> Receipt:
    """The payment a unique-key violation says is already recorded; any other integrity
    error (no such row) is not a duplicate and is raised again, never answered 'done'."""
    with rt.db.engine.connect() as conn:
        row = conn.execute(select(Payment.id, Payment.amount_fcfa, Payment.status,
                                  Payment.account_id, Account.kit_id)
                           .outerjoin(Account, Account.id == Payment.account_id)
                           .where(Payment.provider == provider,
                                  Payment.provider_ref == provider_ref)).first()
    if row is None:
        raise error
    if row.amount_fcfa != amount_fcfa:
        return Receipt("conflict", row.id, detail=f"transaction already recorded with "
                       f"amount {row.amount_fcfa}, not {amount_fcfa}")
    return Receipt("duplicate", row.id, account_id=row.account_id, kit_id=row.kit_id,
                   amount_fcfa=row.amount_fcfa, detail=f"already {row.status}")
