"""Signed generic webhook (DESCO agents, cash collection): signing and verification.

``X-Cizo-Signature: t=<unix s>,v1=<hex>`` where v1 = HMAC-SHA256(secret, "<t>.<raw body>").
The timestamp is signed too, so an old request cannot be replayed with a fresh ``t``;
requests older (or newer) than the tolerance are refused; comparison is constant-time.
Pure: no I/O, the caller passes the clock.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

HEADER = "X-Cizo-Signature"
TOLERANCE_S = 300


class SignatureError(ValueError):
    """The request is not proven to come from the DESCO (the reason is safe to return)."""


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, raw_body: bytes) -> str:
    msg = str(timestamp).encode() + b"." + raw_body
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def sign_header(secret: str, timestamp: int, raw_body: bytes) -> str:
    """The header value a DESCO's system sends (also used by tests and the benchmark)."""
    return f"t={timestamp},v1={signature(secret, timestamp, raw_body)}"


def parse_header(value: str | None) -> tuple[int, list[str]]:
    if not value:
        raise SignatureError(f"missing {HEADER} header")
    timestamp: int | None = None
    sigs: list[str] = []
    for part in value.split(","):
        key, sep, val = part.strip().partition("=")
        if not sep:
            raise SignatureError(f"malformed {HEADER} header")
        if key == "t":
            if not val.isdigit():
                raise SignatureError(f"malformed {HEADER} timestamp")
            timestamp = int(val)
        elif key == "v1":
            sigs.append(val.strip().lower())
    if timestamp is None or not sigs:
        raise SignatureError(f"{HEADER} needs t= and v1=")
    return timestamp, sigs


def verify(secret: str, header: str | None, raw_body: bytes, *, now: float,
           tolerance_s: int = TOLERANCE_S) -> int:
    """Return the signed timestamp, or raise ``SignatureError``."""
    timestamp, sigs = parse_header(header)
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(f"signature timestamp outside the {tolerance_s} s tolerance")
    expected = signature(secret, timestamp, raw_body).encode()
    ok = False
    for sig in sigs:  # every candidate compared, constant-time each
        ok |= hmac.compare_digest(expected, sig.encode())
    if not ok:
        raise SignatureError("bad signature")
    return timestamp
