"""Daily settlement per DESCO and provider, added up from the ledger to the franc.

Per (DESCO, provider, UTC day of receipt): ``collected`` is the money received;
it is ``credited`` (ledger entries of those payments) + ``suspense`` (held, not yet
credited) + ``voided`` (held in suspense, then reversed by the provider). ``reversed`` is
what reversals and refunds received that day took back (ledger entries, negative).
``check`` proves it: each row's identity holds, and the report's net equals the ledger's
own sum over the same payments, computed by a separate SQL aggregate.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control.ledger.models import LedgerEntry, Payment
from control.payments.reconcile import day_start
from control.payments.statements import day_of


@dataclass
class SettlementRow:
    desco_id: str
    provider: str
    day: str
    payments: int = 0
    collected_fcfa: int = 0
    credited_fcfa: int = 0
    suspense_fcfa: int = 0
    voided_fcfa: int = 0
    reversals: int = 0
    reversed_fcfa: int = 0

    @property
    def net_fcfa(self) -> int:
        return self.credited_fcfa - self.reversed_fcfa

    @property
    def balanced(self) -> bool:
        return self.collected_fcfa == self.credited_fcfa + self.suspense_fcfa + self.voided_fcfa


def report(s: Session, *, first_day: str, last_day: str, desco_id: str | None = None,
           provider: str | None = None) -> dict[str, Any]:
    start, end = day_start(first_day), day_start(last_day) + 86_400
    when = func.coalesce(Payment.paid_at, Payment.credited_at, Payment.updated_at)
    q = select(Payment, LedgerEntry.amount_fcfa).outerjoin(
        LedgerEntry, LedgerEntry.payment_id == Payment.id).where(
        when >= start, when < end,
        Payment.status.in_(("credited", "suspense", "reversed", "applied")))
    if desco_id is not None:
        q = q.where(Payment.desco_id == desco_id)
    if provider is not None:
        q = q.where(Payment.provider == provider)
    rows: dict[tuple[str, str, str], SettlementRow] = {}
    for p, entry in s.execute(q):
        day = day_of(p.paid_at or p.credited_at or p.updated_at)
        key = (p.desco_id, p.provider, day)
        r = rows.setdefault(key, SettlementRow(*key))
        amount = p.amount_fcfa or 0
        if p.kind == "reversal":
            if p.status == "applied":
                r.reversals += 1
                r.reversed_fcfa += -(entry or 0)
            continue
        r.payments += 1
        r.collected_fcfa += amount
        if p.status == "credited":
            r.credited_fcfa += entry or 0
        elif p.status == "suspense":
            r.suspense_fcfa += amount
        else:
            r.voided_fcfa += amount
    # the ledger's own figure for the same payments, by a separate aggregate
    lq = select(Payment.desco_id, Payment.provider, func.sum(LedgerEntry.amount_fcfa)).join(
        LedgerEntry, LedgerEntry.payment_id == Payment.id).where(when >= start, when < end)
    if desco_id is not None:
        lq = lq.where(Payment.desco_id == desco_id)
    if provider is not None:
        lq = lq.where(Payment.provider == provider)
    ledger_net = {(d, pr): int(total or 0)
                  for d, pr, total in s.execute(lq.group_by(Payment.desco_id, Payment.provider))}
    net: dict[tuple[str, str], int] = defaultdict(int)
    for r in rows.values():
        net[(r.desco_id, r.provider)] += r.net_fcfa
    mismatched = {f"{d}/{pr}": {"report": net.get((d, pr), 0), "ledger": v}
                  for (d, pr), v in ledger_net.items() if net.get((d, pr), 0) != v}
    mismatched.update({f"{d}/{pr}": {"report": v, "ledger": 0}
                       for (d, pr), v in net.items() if (d, pr) not in ledger_net and v})
    ordered = sorted(rows.values(), key=lambda r: (r.desco_id, r.provider, r.day))
    return {
        "first_day": first_day, "last_day": last_day,
        "rows": [{**asdict(r), "net_fcfa": r.net_fcfa, "balanced": r.balanced}
                 for r in ordered],
        "totals": {
            "collected_fcfa": sum(r.collected_fcfa for r in ordered),
            "credited_fcfa": sum(r.credited_fcfa for r in ordered),
            "suspense_fcfa": sum(r.suspense_fcfa for r in ordered),
            "voided_fcfa": sum(r.voided_fcfa for r in ordered),
            "reversed_fcfa": sum(r.reversed_fcfa for r in ordered),
            "net_fcfa": sum(r.net_fcfa for r in ordered),
            "ledger_net_fcfa": sum(ledger_net.values()),
        },
        "agrees_with_ledger": not mismatched and all(r.balanced for r in ordered),
        "mismatches": mismatched,
    }
