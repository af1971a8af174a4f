"""The suspense queue: money we hold but could not credit, linked by hand under maker-checker.

Support proposes a link (payment -> account) with a reason; a finance user who is not the
proposer approves it, which credits the account then, or rejects it. Every step is audited.
"""

from __future__ import annotations

import logging
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from control.ledger import accounts as ledger
from control.ledger.accounts import Actor
from control.ledger.models import Account, Payment, SuspenseLink
from control.payments import posting
from control.payments.posting import Receipt
from control.runtime import Runtime

log = logging.getLogger(__name__)


class SuspenseError(ValueError):
    """A refused step; ``status`` is the HTTP answer it maps to."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


def same_person(a_name: str, a_key: int | None, b: Actor) -> bool:
    """Maker-checker: the same API key, or the same named holder, is the same person."""
    return (a_key is not None and a_key == b.key_id) or a_name == b.name


class Proposed(Protocol):
    """A row one person proposes and a second one decides (links, statement proposals)."""

    status: str
    proposed_by: str
    proposed_key_id: int | None
    decided_by: str | None
    decided_at: float | None


def decide(row: Proposed, *, what: str, maker: str, approve: bool, actor: Actor,
           now: float) -> None:
    """Maker-checker, one rule for every two-person decision: only a proposed ``row`` is
    decided, and never by the person who proposed it (the ``maker``)."""
    if row.status != "proposed":
        raise SuspenseError(f"{what} is already {row.status}")
    if same_person(row.proposed_by, row.proposed_key_id, actor):
        raise SuspenseError(f"maker-checker: the {maker} cannot decide their own "
                            f"{what.split()[0]}", 403)
    row.status = "approved" if approve else "rejected"
    row.decided_by = actor.name
    row.decided_at = now


def list_suspense(s: Session, *, desco_id: str | None, limit: int = 100,
                  offset: int = 0) -> list[Payment]:
    q = select(Payment).where(Payment.status == "suspense").order_by(Payment.id)
    if desco_id is not None:
        q = q.where(Payment.desco_id == desco_id)
    return list(s.scalars(q.limit(limit).offset(offset)))


def links(s: Session, *, desco_id: str | None, payment_ids: list[int] | None = None,
          status: str | None = None, limit: int = 100) -> list[tuple[SuspenseLink, str | None]]:
    """Links with their account's kit, newest first: of these payments, or the latest
    decisions of a DESCO (who proposed, who decided)."""
    q = (select(SuspenseLink, Account.kit_id)
         .join(Account, SuspenseLink.account_id == Account.id)
         .join(Payment, SuspenseLink.payment_id == Payment.id)
         .order_by(SuspenseLink.id.desc()).limit(limit))
    if desco_id is not None:
        q = q.where(Payment.desco_id == desco_id)
    if payment_ids is not None:
        q = q.where(SuspenseLink.payment_id.in_(payment_ids))
    if status is not None:
        q = q.where(SuspenseLink.status == status)
    return [(link, kit) for link, kit in s.execute(q)]


def _account(s: Session, account: str, desco_id: str | None) -> Account:
    q = select(Account).where((Account.account_number == account) | (Account.kit_id == account))
    acct = s.scalars(q).first()
    if acct is None or (desco_id is not None and acct.desco_id != desco_id):
        raise SuspenseError(f"account {account} not found", 404)
    return acct


def propose_link(rt: Runtime, *, payment_id: int, account: str, reason: str,
                 actor: Actor) -> SuspenseLink:
    """Support's proposal; moves no money."""
    now = rt.clock.now()
    with rt.db.session() as s:
        pay = s.get(Payment, payment_id)
        if pay is None or (actor.desco_id is not None and pay.desco_id != actor.desco_id):
            raise SuspenseError(f"payment {payment_id} not found", 404)
        if pay.status != "suspense" or pay.kind != "payment":
            raise SuspenseError(f"payment {payment_id} is {pay.status}, not in suspense")
        acct = _account(s, account, actor.desco_id)
        link = SuspenseLink(payment_id=pay.id, account_id=acct.id, status="proposed",
                            reason=reason, proposed_by=actor.name, proposed_key_id=actor.key_id,
                            proposed_at=now)
        s.add(link)
        s.flush()
        ledger.audit(s, actor=actor, action="suspense.propose", now=now, kit_id=acct.kit_id,
                     desco_id=pay.desco_id, reason=reason,
                     after={"link_id": link.id, "payment_id": pay.id,
                            "amount_fcfa": pay.amount_fcfa})
        s.expunge(link)
    log.info("suspense link proposed", extra={"payment_id": payment_id})
    return link


def decide_link(rt: Runtime, *, link_id: int, approve: bool, actor: Actor,
                reason: str | None = None) -> tuple[SuspenseLink, Receipt | None]:
    """Finance approves (credits now) or rejects; never the proposer."""
    now = rt.clock.now()
    with rt.db.session() as s:
        link = s.scalars(select(SuspenseLink).where(SuspenseLink.id == link_id)
                         .with_for_update()).one_or_none()
        pay = s.get(Payment, link.payment_id) if link is not None else None
        if link is None or pay is None or (
            actor.desco_id is not None and pay.desco_id != actor.desco_id
        ):
            raise SuspenseError(f"link {link_id} not found", 404)
        decide(link, what=f"link {link_id}", maker="proposer", approve=approve, actor=actor,
               now=now)
        ledger.audit(s, actor=actor, action="suspense." + link.status, now=now,
                     desco_id=pay.desco_id, reason=reason,
                     after={"link_id": link.id, "payment_id": pay.id,
                            "proposed_by": link.proposed_by})
        s.flush()
        s.expunge(link)
    receipt = None
    if approve:
        receipt = posting.credit_parked(rt, link.payment_id, link.account_id, actor=actor,
                                       audit_detail={"link_id": link.id,
                                                     "proposed_by": link.proposed_by})
        if not receipt.credited:
            log.warning("approved link %d credited nothing: %s", link.id, receipt.detail,
                        extra={"payment_id": link.payment_id})
    return link, receipt
