"""Proof: ``check_ledger`` re-derives every account's balance from the append-only ledger
alone (reversals are negative entries, never edits: control.payments.reversals).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from control.ledger import credit
from control.ledger.accounts import plan_of, state_of
from control.ledger.models import Account, LedgerEntry, Payment


@dataclass(frozen=True, slots=True)
class LedgerProblem:
    account_id: int
    entry_id: int | None
    problem: str


def replay(plan: credit.Plan, entries: list[LedgerEntry]) -> tuple[credit.CreditState,
                                                                     list[tuple[int, str]]]:
    """Pure: the account state the entries imply, and each entry that disagrees with it."""
    state = credit.CreditState()
    problems: list[tuple[int, str]] = []
    for e in entries:
        now = int(e.created_at)
        try:
            if e.kind in ("deposit", "payment"):
                change = credit.apply_payment(plan, state, e.amount_fcfa, now)
                after, days = change.after, change.days_added
            elif e.kind == "reversal":
                change = credit.apply_reversal(plan, state, -e.amount_fcfa, now)
                after, days = change.after, change.days_added
            elif e.kind == "free_days":
                after, days = credit.grant_days(state, e.days, now), e.days
            else:
                problems.append((e.id, f"unknown entry kind {e.kind!r}"))
                continue
        except credit.CreditError as exc:
            problems.append((e.id, f"entry cannot be replayed: {exc}"))
            continue
        if state.credit_until != e.credit_until_before:
            problems.append((e.id, f"credit_until_before {e.credit_until_before} but the "
                                   f"ledger implies {state.credit_until}"))
        if (after.credit_until, after.remainder_fcfa, days) != (
            e.credit_until_after, e.remainder_after_fcfa, e.days
        ):
            problems.append((e.id, "entry disagrees with its replay: "
                                   f"({e.credit_until_after}, {e.remainder_after_fcfa}, {e.days})"
                                   f" != ({after.credit_until}, {after.remainder_fcfa}, {days})"))
        state = after
    return state, problems


def _check_account(s: Session, acct: Account) -> list[LedgerProblem]:
    entries = list(s.scalars(select(LedgerEntry).where(LedgerEntry.account_id == acct.id)
                             .order_by(LedgerEntry.id)))
    derived, bad = replay(plan_of(acct), entries)
    problems = [LedgerProblem(acct.id, eid, text) for eid, text in bad]
    stored = state_of(acct)
    if derived != stored:
        problems.append(LedgerProblem(acct.id, None,
                                      f"account holds {stored} but its ledger gives {derived}"))
    return problems


def check_ledger(s: Session, *, account_ids: list[int] | None = None) -> list[LedgerProblem]:
    """Re-derive each account from its entries; an empty list means every balance agrees.

    Also checks that each credited payment has exactly its amount in the ledger.
    """
    q = select(Account).order_by(Account.id)
    if account_ids is not None:
        q = q.where(Account.id.in_(account_ids))
    problems: list[LedgerProblem] = []
    for acct in list(s.scalars(q)):
        found = _check_account(s, acct)
        if found:
            # the account and its entries are read by two statements: a credit committed
            # in between (the service is live) looks like a mismatch; read both again
            s.refresh(acct)
            found = _check_account(s, acct)
        problems += found
    rows = s.execute(
        select(Payment.id, Payment.kind, Payment.amount_fcfa, LedgerEntry.amount_fcfa)
        .join(LedgerEntry, LedgerEntry.payment_id == Payment.id)
    )
    for pid, kind, amount, entry_amount in rows:
        want = amount if kind == "payment" else -(amount or 0)
        if entry_amount != want:
            problems.append(LedgerProblem(-1, None, f"payment {pid}: ledger has {entry_amount},"
                                                    f" payment says {want}"))
    return problems
