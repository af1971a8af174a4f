"""Statement reconciliation against the ledger database, under maker-checker.

Importing a statement only reports and proposes: lines the provider has and we never
received become proposals; a second finance user (not the importer) approves each one,
which records the payment then (matched and credited, or parked in suspense). Audited.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control.ledger import accounts as ledger
from control.ledger.accounts import Actor
from control.ledger.models import Payment, ReconImport, ReconProposal
from control.payments import statements
from control.payments.callbacks import OPEN
from control.payments.posting import Receipt
from control.payments.receive import Incoming, receive
from control.payments.suspense import SuspenseError, decide
from control.runtime import Runtime

log = logging.getLogger(__name__)

HELD = ("credited", "suspense", "reversed")  # statuses of money we received


def received_at(p: Payment) -> float:
    return p.paid_at or p.credited_at or p.updated_at


def day_start(day: str) -> float:
    return datetime.combine(date.fromisoformat(day), datetime.min.time(), UTC).timestamp()


def ours_between(s: Session, *, provider: str, desco_id: str, first_day: str,
                 last_day: str) -> list[statements.OurPayment]:
    """Our received payments of that provider and DESCO, by UTC day of receipt."""
    start, end = day_start(first_day), day_start(last_day) + 86_400
    when = func.coalesce(Payment.paid_at, Payment.credited_at, Payment.updated_at)
    rows = s.scalars(select(Payment).where(
        Payment.provider == provider, Payment.desco_id == desco_id, Payment.kind == "payment",
        Payment.status.in_(HELD), when >= start, when < end))
    out = []
    for p in rows:
        ids = {p.provider_ref}
        if p.provider_ref.startswith(f"{desco_id}:"):
            ids.add(p.provider_ref.split(":", 1)[1])
        ids |= {x for x in (p.tx_reference, p.payment_reference) if x}
        out.append(statements.OurPayment(p.id, frozenset(ids), statements.day_of(received_at(p)),
                                         p.amount_fcfa or 0, p.status))
    return out


def import_statement(rt: Runtime, *, provider: str, desco_id: str, filename: str, text: str,
                     actor: Actor) -> ReconImport:
    """Report per day and record proposals for statement-only lines; moves no money."""
    lines, errors = statements.parse_statement(text)
    now = rt.clock.now()
    with rt.db.session() as s:
        days = sorted({ln.day for ln in lines})
        ours: list[statements.OurPayment] = []
        if days:
            # a day either side: payments near midnight may be dated differently
            first = (date.fromisoformat(days[0]) - timedelta(days=1)).isoformat()
            last = (date.fromisoformat(days[-1]) + timedelta(days=1)).isoformat()
            ours = ours_between(s, provider=provider, desco_id=desco_id, first_day=first,
                                last_day=last)
        per_day = statements.compare(lines, ours)
        by_tx = {ln.transaction_id: ln for ln in lines}
        imp = ReconImport(desco_id=desco_id, provider=provider, filename=filename[:255],
                          imported_by=actor.name, imported_key_id=actor.key_id,
                          imported_at=now, report={})
        s.add(imp)
        s.flush()
        proposed = 0
        for day in per_day.values():
            for item in day.missing_in_ours:
                tx = item["transaction_id"]
                known = s.scalar(select(func.count()).select_from(Payment).where(
                    Payment.provider == provider,
                    Payment.provider_ref.in_((tx, f"{desco_id}:{tx}"))))
                if known:  # we have it but not as received (pending/failed): re-check it
                    item["ours"] = "known but not received: re-checked with the provider"
                    _recheck(s, provider, tx, now)
                    continue
                open_ = s.scalar(select(func.count()).select_from(ReconProposal).where(
                    ReconProposal.provider == provider, ReconProposal.desco_id == desco_id,
                    ReconProposal.transaction_id == tx,
                    ReconProposal.status.in_(("proposed", "approved"))))
                if open_:
                    item["proposal"] = "already proposed"
                    continue
                ln = by_tx[tx]
                prop = ReconProposal(import_id=imp.id, desco_id=desco_id, provider=provider,
                                     transaction_id=tx, day=ln.day, amount_fcfa=ln.amount,
                                     phone=ln.phone, reference=ln.reference, status="proposed",
                                     proposed_by=actor.name, proposed_key_id=actor.key_id)
                s.add(prop)
                s.flush()
                item["proposal_id"] = prop.id
                proposed += 1
        report: dict[str, Any] = {
            "days": {d: dataclasses.asdict(r) for d, r in per_day.items()},
            "errors": errors, "lines": len(lines), "proposals": proposed,
        }
        imp.report = report
        ledger.audit(s, actor=actor, action="reconcile.import", now=now, desco_id=desco_id,
                     after={"import_id": imp.id, "provider": provider, "lines": len(lines),
                            "errors": len(errors), "proposals": proposed})
        s.flush()
        s.expunge(imp)
    log.info("statement imported", extra={"import_id": imp.id, "provider": provider,
                                          "proposals": proposed})
    return imp


def _recheck(s: Session, provider: str, tx: str, now: float) -> None:
    for p in s.scalars(select(Payment).where(Payment.provider == provider,
                                             Payment.provider_ref == tx,
                                             Payment.status.in_(OPEN))):
        p.next_check_at = now


def decide_proposal(rt: Runtime, *, proposal_id: int, approve: bool, actor: Actor,
                    reason: str | None = None) -> tuple[ReconProposal, Receipt | None]:
    """A second finance user approves (the payment is recorded and matched) or rejects."""
    now = rt.clock.now()
    with rt.db.session() as s:
        prop = s.scalars(select(ReconProposal).where(ReconProposal.id == proposal_id)
                         .with_for_update()).one_or_none()
        if prop is None or (actor.desco_id is not None and prop.desco_id != actor.desco_id):
            raise SuspenseError(f"proposal {proposal_id} not found", 404)
        decide(prop, what=f"proposal {proposal_id}", maker="importer", approve=approve,
               actor=actor, now=now)
        ledger.audit(s, actor=actor, action="reconcile." + prop.status, now=now,
                     desco_id=prop.desco_id, reason=reason,
                     after={"proposal_id": prop.id, "transaction_id": prop.transaction_id,
                            "amount_fcfa": prop.amount_fcfa, "proposed_by": prop.proposed_by})
        s.flush()
        s.expunge(prop)
    receipt = None
    if approve:
        ref = prop.transaction_id if prop.provider != "agent" \
            else f"{prop.desco_id}:{prop.transaction_id}"
        receipt = receive(rt, Incoming(
            provider=prop.provider, provider_ref=ref, desco_id=prop.desco_id,
            amount_fcfa=prop.amount_fcfa, phone_e164=prop.phone, reference=prop.reference,
            paid_at=day_start(prop.day) + 43_200,
            detail={"proposal_id": prop.id, "source": "statement"}), actor=actor)
        with rt.db.session() as s:
            row = s.get(ReconProposal, prop.id)
            assert row is not None
            row.payment_id = receipt.payment_id
        prop.payment_id = receipt.payment_id
    return prop, receipt
