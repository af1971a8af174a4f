"""OpenPAYGO Token for kits that cannot be reached over MQTT (keypad-only, long offline).

The planning rule is pure (``plan``); ``issue_token`` persists the per-kit count in the
caller's transaction so a count is never reused (``kit_tokens`` has a unique
``(kit_id, count)`` too).

Same absolute end as the MQTT command. A token carries whole days, an MQTT command an
absolute time; the two must never add up. Both sides therefore keep a *chain position*:
the kit's OpenPAYGO end, starting at the kit's ``anchor`` (its provisioning time) and
moved only by tokens:

- ``ADD_TIME v``: chain += v days; the kit's credit end becomes max(credit end, chain).
  The server picks v = round((ledger end - chain) / day), so the chain lands on the
  ledger's end to within half a day (credit that restarts after a lapse does not start
  on the chain's day grid), and a kit that also got the MQTT unlock keeps max() of the
  two: it converges once, it is never credited twice.
- ``SET_TIME v`` (credit shortened, or v would exceed 995): chain = start of the current
  UTC day + v days, and the kit's credit end is set to it (not max: it may shorten).
- ``DISABLE_PAYG``: the kit is owned.

The OpenPAYGO key is derived from the kit's command secret (first 16 bytes of
HMAC-SHA256(secret, "openpaygo")), so it is provisioned with the kit and never stored apart.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
from dataclasses import dataclass

import openpaygo
from sqlalchemy.orm import Session

from control.models import Kit, KitToken
from control.security import SecretBox

log = logging.getLogger(__name__)

DAY_S = 86_400
MAX_VALUE_DAYS = 995
ADD_TIME = "add_time"
SET_TIME = "set_time"
DISABLE_PAYG = "disable_payg"
_TYPES = {ADD_TIME: openpaygo.TokenType.ADD_TIME, SET_TIME: openpaygo.TokenType.SET_TIME,
          DISABLE_PAYG: openpaygo.TokenType.DISABLE_PAYG}


class TokenError(ValueError):
    """A credit end no token can carry (e.g. more than 995 days ahead)."""


@dataclass(frozen=True, slots=True)
class TokenPlan:
    token_type: str
    value_days: int | None
    chain_until: int | None  # the chain position (and kit end) once entered; None: owned


def openpaygo_key(secret_hex: str) -> str:
    """The kit's 16-byte OpenPAYGO key (32 hex chars) derived from its command secret."""
    return hmac.new(bytes.fromhex(secret_hex), b"openpaygo", hashlib.sha256).hexdigest()[:32]


def day_start(t: float) -> int:
    return int(t) - int(t) % DAY_S


def plan(*, chain_until: int, credit_until: int | None, owned: bool, now: float,
         resync: bool = False) -> TokenPlan:
    """Which token brings a kit at ``chain_until`` to the ledger's end (see module doc).
    ``resync``: never an empty ADD_TIME; a SET_TIME restates the end (a lost code)."""
    if owned:
        return TokenPlan(DISABLE_PAYG, None, None)
    target = credit_until if credit_until is not None else int(now)
    if target >= chain_until and not (resync and _nearest_days(target - chain_until) == 0):
        days = _nearest_days(target - chain_until)
        if days <= MAX_VALUE_DAYS:
            return TokenPlan(ADD_TIME, days, chain_until + days * DAY_S)
    base = day_start(now)
    # a lock (end now or past) is 0 days: locked at once, not at midnight
    days = 0 if target <= now else math.ceil((target - base) / DAY_S)
    if days > MAX_VALUE_DAYS:
        raise TokenError(f"credit end {target} is more than {MAX_VALUE_DAYS} days ahead")
    return TokenPlan(SET_TIME, days, base + days * DAY_S)


def _nearest_days(seconds: int) -> int:
    """Whole days nearest to ``seconds`` (half a day rounds up)."""
    return (seconds + DAY_S // 2) // DAY_S


def chain_of(kit: Kit) -> int:
    return kit.opaygo_until if kit.opaygo_until is not None else int(kit.created_at)


def issue_token(s: Session, *, kit: Kit, box: SecretBox, credit_until: int | None,
                owned: bool, now: float, created_by: str, payment_id: int | None = None,
                reason: str | None = None, resync: bool = False) -> KitToken | None:
    """Generate and persist the next token for ``kit`` (locked by the caller); None when the
    kit's chain already holds this end (nothing to add) unless ``resync``."""
    p = plan(chain_until=chain_of(kit), credit_until=credit_until, owned=owned, now=now,
             resync=resync)
    if p.token_type == ADD_TIME and p.value_days == 0:
        return None
    key = openpaygo_key(box.decrypt(kit.secret_enc))
    count, token = openpaygo.generate_token(
        secret_key=key, count=kit.opaygo_count, value=p.value_days,
        token_type=_TYPES[p.token_type])
    kit.opaygo_count = int(count)
    kit.opaygo_until = p.chain_until
    row = KitToken(kit_id=kit.id, count=int(count), token=str(token), token_type=p.token_type,
                   value_days=p.value_days, credit_until=credit_until,
                   chain_until=p.chain_until, payment_id=payment_id, reason=reason,
                   created_by=created_by, created_at=now)
    s.add(row)
    s.flush()
    log.info("OpenPAYGO token issued", extra={"kit_id": kit.id, "payment_id": payment_id,
                                              "token_type": p.token_type, "count": count})
    return row


def wants_token(kit: Kit, now: float, offline_after_s: float) -> bool:
    """Keypad-only kits, and kits not heard from for longer than ``offline_after_s``."""
    if kit.decommissioned_at is not None:
        return False
    if kit.keypad_only:
        return True
    seen = kit.last_seen if kit.last_seen is not None else kit.created_at
    return now - seen > offline_after_s
