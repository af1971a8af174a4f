"""What a committed change of credit tells the rest of the process (receipts, tokens)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CreditNotice:
    """Handed to every after-credit hook once a credit or a reversal has committed. It
    carries what the credit's transaction read, so a receipt needs no database of its own."""

    payment_id: int
    kit_id: str
    account_id: int
    amount_fcfa: int  # negative for a reversal
    credit_until: int | None
    owned: bool
    provider: str
    kind: str  # payment|reversal
    days: int | None = None
    account_number: str | None = None
    phone: str | None = None
    desco_id: str | None = None
    daily_rate_fcfa: int | None = None
    erased: bool = False
    wants_token: bool | None = None  # None: not known, the hook reads the kit
