"""Personal data: phone numbers (and any name typed into free text) of customers.

Retention (docs/security.md): while an account is open its phone is needed to match
payments and reach the customer. Once it is closed (kit returned, repossessed or
written off) the phone is kept ``personal_data_retention_days`` (default 365) for
disputes and refunds, then erased: the account's phone, the phones on its payments and
on statement lines matched to them, and any occurrence of the number in its audit
reasons. Ledger amounts, days, dates and every aggregate stay: they are not personal
once no phone or name points to a person.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from control.ledger.accounts import Actor, audit
from control.ledger.db import Database
from control.ledger.models import Account, AuditEntry, Payment, ReconProposal

log = logging.getLogger(__name__)

ERASED = ""  # what an erased phone becomes (the column is NOT NULL)
REDACTED = "[erased]"


class PrivacyError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Erasure:
    account_number: str
    payments: int
    audit_entries: int


def _patterns(phone: str) -> list[re.Pattern[str]]:
    """The number as staff may have typed it: +228 90 12 34 56, 90123456, 22890123456."""
    digits = re.sub(r"\D", "", phone)
    forms = {digits}
    if digits.startswith("228") and len(digits) == 11:
        forms.add(digits[3:])
    sep = r"[\s.\-]*"
    return [re.compile(r"\+?" + sep.join(f)) for f in sorted(forms, key=len, reverse=True)]


def scrub(text: str | None, phone: str) -> str | None:
    if not text or not phone:
        return text
    for pat in _patterns(phone):
        text = pat.sub(REDACTED, text)
    return text


def _scrub_json(value: Any, phone: str) -> Any:
    if isinstance(value, str):
        return scrub(value, phone)
    if isinstance(value, dict):
        return {k: _scrub_json(v, phone) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_json(v, phone) for v in value]
    return value


def close_account(db: Database, account_number: str, *, now: float, actor: Actor,
                  reason: str) -> None:
    """Mark an account closed: its retention clock starts now."""
    with db.session() as s:
        acct = s.scalars(select(Account).where(Account.account_number == account_number)
                         ).one_or_none()
        if acct is None:
            raise PrivacyError(f"account {account_number} not found")
        if acct.closed_at is None:
            acct.closed_at = now
            audit(s, actor=actor, action="account.close", now=now, kit_id=acct.kit_id,
                  desco_id=acct.desco_id, reason=reason)
    log.info("account closed", extra={"kit_id": account_number})


def _erase(s: Session, acct: Account, *, now: float, actor: Actor) -> Erasure:
    phone = acct.customer_phone
    pay_ids = list(s.scalars(select(Payment.id).where(Payment.account_id == acct.id)))
    if pay_ids:
        s.execute(update(Payment).where(Payment.id.in_(pay_ids)).values(phone=None))
        s.execute(update(ReconProposal).where(ReconProposal.payment_id.in_(pay_ids))
                  .values(phone=None))
    conds = [Payment.phone == phone] if phone else []
    if conds:  # unmatched payments from the same number (e.g. parked, later refunded)
        s.execute(update(Payment).where(or_(*conds), Payment.desco_id == acct.desco_id)
                  .values(phone=None))
    changed = 0
    for entry in s.scalars(select(AuditEntry).where(AuditEntry.kit_id == acct.kit_id)):
        reason = scrub(entry.reason, phone)
        before, after = _scrub_json(entry.before, phone), _scrub_json(entry.after, phone)
        if (reason, before, after) != (entry.reason, entry.before, entry.after):
            entry.reason, entry.before, entry.after = reason, before, after
            changed += 1
    acct.customer_phone = ERASED
    acct.personal_data_erased_at = now
    audit(s, actor=actor, action="account.erase_personal_data", now=now, kit_id=acct.kit_id,
          desco_id=acct.desco_id, reason="retention period over or erasure requested")
    return Erasure(acct.account_number, len(pay_ids), changed)


def erase_account(db: Database, account_number: str, *, now: float, actor: Actor) -> Erasure:
    """Erase one closed account's personal data now (an erasure request)."""
    with db.session() as s:
        acct = s.scalars(select(Account).where(Account.account_number == account_number)
                         .with_for_update()).one_or_none()
        if acct is None:
            raise PrivacyError(f"account {account_number} not found")
        if acct.closed_at is None:
            raise PrivacyError(f"account {account_number} is open: close it first "
                               "(its phone is needed to match payments)")
        result = _erase(s, acct, now=now, actor=actor)
    log.info("personal data erased", extra={"kit_id": acct.kit_id})
    return result


def erase_due(db: Database, *, now: float, retention_days: int, actor: Actor) -> list[Erasure]:
    """Erase every account closed more than ``retention_days`` ago and not yet erased."""
    cutoff = now - retention_days * 86_400
    with db.session() as s:
        due = list(s.scalars(select(Account).where(
            Account.closed_at.is_not(None), Account.closed_at <= cutoff,
            Account.personal_data_erased_at.is_(None)).with_for_update()))
        done = [_erase(s, a, now=now, actor=actor) for a in due]
    log.info("personal data erased for %d closed accounts", len(done))
    return done
