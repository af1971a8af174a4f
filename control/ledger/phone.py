"""Togolese phone numbers to E.164 (+228 and 8 digits), whatever form a provider sends."""

from __future__ import annotations

import re

_DIGITS = re.compile(r"\d+")


class PhoneError(ValueError):
    pass


def normalise_phone(raw: str | int) -> str:
    """'90 12 34 56', '22890123456', '+228 90123456', '0022890123456' -> '+22890123456'."""
    digits = "".join(_DIGITS.findall(str(raw)))
    if digits.startswith("00"):
        digits = digits[2:]
    if len(digits) == 8:
        digits = "228" + digits
    if len(digits) == 11 and digits.startswith("228"):
        return "+" + digits
    if 8 <= len(digits) <= 15 and str(raw).strip().startswith("+"):
        return "+" + digits  # another country, already international
    raise PhoneError(f"not a Togolese or international phone number: {raw!r}")


def local_digits(e164: str) -> str:
    """PayGate wants the 8 local digits for Togolese numbers."""
    return e164[4:] if e164.startswith("+228") else e164.lstrip("+")
