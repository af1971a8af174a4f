"""Money as the ledger counts it: whole XOF (FCFA), no minor unit. Pure.

Anything that is not a whole, positive, plausible number of francs is refused rather than
rounded, because a rounded franc is a lost franc.
"""

from __future__ import annotations

import re

MAX_AMOUNT_FCFA = 10_000_000  # no PAYG payment is this large: a typo or a x100 error
CURRENCY = "XOF"


class AmountError(ValueError):
    """An amount that must not be credited (zero, negative, fractional, huge, not a number)."""


def parse_amount(raw: object) -> int:
    """700, "700", 700.0 and " 700 " are 700 XOF; 0, -5, 700.5, "7e2", True, 10**9 are refused."""
    if isinstance(raw, bool) or raw is None:
        raise AmountError("amount is missing")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, float):
        if not raw.is_integer():
            raise AmountError(f"amount must be whole XOF (no minor unit), got {raw!r}")
        value = int(raw)
    elif isinstance(raw, str):
        text = raw.strip()
        if re.fullmatch(r"-?\d+(\.0+)?", text) is None:
            raise AmountError(f"amount must be whole XOF digits, got {raw!r}")
        value = int(text.split(".", 1)[0])
    else:
        raise AmountError(f"amount must be a number, got {type(raw).__name__}")
    if value <= 0:
        raise AmountError(f"amount must be positive, got {value}")
    if value > MAX_AMOUNT_FCFA:
        raise AmountError(f"amount {value} exceeds the {MAX_AMOUNT_FCFA} XOF limit")
    return value


def check_currency(raw: object) -> str:
    """Only XOF is credited; a missing currency means XOF (PayGate sends none)."""
    if raw is None:
        return CURRENCY
    text = str(raw).strip().upper()
    if text != CURRENCY:
        raise AmountError(f"currency must be {CURRENCY}, got {raw!r}")
    return text
