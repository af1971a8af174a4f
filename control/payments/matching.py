"""Pure rules for incoming money: references, what a match means, and which amounts may be
credited without a human (control.ledger.money says what an amount is).

Kept apart from I/O so every rule is tested alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from control.ledger.money import CURRENCY

_SEPARATORS = re.compile(r"[\s\-_.]+")
SQL_SEPARATORS = (" ", "-", "_", ".")  # what the SQL index expression removes


def normalise_reference(raw: object) -> str | None:
    """'kit 0042', 'KIT-0042 ', 'Kit_0042' -> 'KIT0042' (what customers type varies)."""
    if raw is None or isinstance(raw, bool):
        return None
    text = _SEPARATORS.sub("", str(raw)).upper()
    return text or None


def sql_normalised(column: str) -> str:
    """The SQL expression of ``normalise_reference`` over ``column`` (also the index's)."""
    expr = column
    for sep in SQL_SEPARATORS:
        expr = f"replace({expr}, '{sep}', '')"
    return f"upper({expr})"


@dataclass(frozen=True, slots=True)
class Match:
    """How a payment found its account, or why it did not (then it goes to suspense)."""

    account_id: int | None
    matched_by: str | None  # intent|reference|phone|link
    reason: str | None = None


def decide(by_reference: list[int], by_phone: list[int]) -> Match:
    """Reference first; the registered phone only when no reference matched at all."""
    refs = sorted(set(by_reference))
    if len(refs) == 1:
        return Match(refs[0], "reference")
    if len(refs) > 1:
        return Match(None, None, f"reference matches {len(refs)} accounts")
    phones = sorted(set(by_phone))
    if len(phones) == 1:
        return Match(phones[0], "phone")
    if len(phones) > 1:
        return Match(None, None, f"no reference match; phone matches {len(phones)} accounts")
    return Match(None, None, "no account matches the reference or the phone")


def suspicious_amount(amount: int, *, owed_fcfa: int, requested_fcfa: int | None) -> str | None:
    """Why a matched amount must wait for a human: a x100 slip or more than is owed."""
    if requested_fcfa is not None and amount != requested_fcfa:
        hint = " (x100 error?)" if amount in (requested_fcfa * 100, requested_fcfa // 100) \
            else ""
        return f"amount {amount} differs from the {requested_fcfa} requested{hint}"
    if owed_fcfa <= 0:
        return "the account is already paid in full"
    if amount > owed_fcfa:
        hint = " (x100 error?)" if amount % 100 == 0 and amount // 100 <= owed_fcfa else ""
        return f"amount {amount} exceeds the {owed_fcfa} still owed{hint}"
    return None


@dataclass(frozen=True, slots=True)
class Checks:
    """What a confirmed amount must pass before it is credited; anything else waits for a
    human in suspense. What differs between feeds is this, not a copy of the credit."""

    requested: bool  # equal to what our intent asked the payer for
    owed: bool  # not above what is still owed on the kit (amounts the payer chose)


INTENT = Checks(requested=True, owed=False)  # PayGate: the amount we asked for, confirmed
INTENT_WITHIN_OWED = Checks(requested=True, owed=True)  # MoMo
MATCHED = Checks(requested=False, owed=True)  # found by reference or phone
VOUCHED = Checks(requested=False, owed=False)  # a staff member linked it (maker-checker)


def verdict(amount: int | None, currency: str | None, *, checks: Checks,
            requested_fcfa: int | None, owed_fcfa: int) -> str | None:
    """Why a confirmed amount must wait for a human, or None: it may be credited."""
    if amount is None or isinstance(amount, bool) or amount <= 0:
        return f"provider confirmed no usable amount ({amount!r})"
    if currency not in (None, CURRENCY):
        return f"currency {currency} is not {CURRENCY}"
    if not checks.owed:
        if checks.requested and requested_fcfa is not None and amount != requested_fcfa:
            return suspicious_amount(amount, owed_fcfa=0, requested_fcfa=requested_fcfa)
        return None
    return suspicious_amount(amount, owed_fcfa=owed_fcfa,
                             requested_fcfa=requested_fcfa if checks.requested else None)
