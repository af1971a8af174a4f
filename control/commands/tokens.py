"""OpenPAYGO Token for kits that cannot be reached over MQTT (keypad-only, long offline).

The planning rule is pure (``plan``); ``issue_token`` persists the per-kit count in the
caller's transaction so a count is never reused (``kit_tokens`` has a unique
``(kit_id, count)`` too; on SQLite, which ignores ``FOR UPDATE``, ``issue_token`` takes the
writer lock and re-reads the count itself, so concurrent issues for one kit queue up).

Same absolute end as the MQTT command. A token carries whole days, an MQTT command an
absolute time; the two must never add up. Both sides therefore keep a *chain position*:
the kit's OpenPAYGO end, starting at the kit's ``anchor`` (its provisioning time) and
moved only by tokens:

- ``ADD_TIME v``: chain += v days; the kit's credit end becomes max(credit end, chain).
  The server picks v = round((ledger end - chain) / day), so the chain lands on the
  ledger's end to within half a day (credit that restarts after a lapse does not start
  on the chain's day grid), and a kit that also got the MQTT unlock keeps max() of the
  two: it converges once, it is never credited twice. ADD_TIME is exact whenever it is
  typed, so it is all a payment's or a reversal's receipt ever carries.
- ``SET_TIME v``: chain = start of the UTC day *the code is typed* + v days, and the kit's
  credit end is set to it (not max: it may shorten). The server only knows the day it
  issued the code, so a code typed on a later day leaves the kit that many days ahead of
  the server's chain for good. It is therefore issued only (a) for staff actions that
  shorten credit (lock, set-credit-until, repossess) or restate it (a support resync),
  whose code support reads out for entry at once and whose text says "today", and (b)
  when an ADD_TIME would carry more than 995 days (a chain left far behind).
  A kit holding more than the ledger (a reversal, a rounded-up chain) keeps it: no token
  until later payments take the ledger's end past the chain.
- ``DISABLE_PAYG``: the kit is owned (once: later payments of an owned kit need none). The
  kit keeps its chain meanwhile; an ADD_TIME (0 days if the chain is already there)
  meters it again should ownership be reversed.

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
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from control.ledger.models import KIT_METRICS, Kit, KitToken
from control.ledger.secrets import SecretBox

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


def device_key(kind: str, secret_hex: str) -> str | None:
    """The OpenPAYGO key an OpenPAYGO Metrics device is given with its credentials (it signs
    its requests with it); None for an MQTT kit, whose key never leaves the server."""
    return openpaygo_key(secret_hex) if kind == KIT_METRICS else None


def day_start(t: float) -> int:
    return int(t) - int(t) % DAY_S


def plan(*, chain_until: int, credit_until: int | None, owned: bool, now: float,
         staff: bool = False, resync: bool = False, disabled: bool = False
         ) -> TokenPlan | None:
    """The token that brings a kit whose chain is at ``chain_until`` to the ledger's end,
    or None when the kit needs none (see the module doc).

    Automatic issues (a payment's or a reversal's receipt) never shorten: SET_TIME counts
    from the day it is typed, which the server cannot know. ``staff``: an explicit staff
    action read out for entry at once may shorten (SET_TIME). ``resync``: support restates
    the credit (a lost code), so there is always a token. ``disabled``: the kit's last
    token was DISABLE_PAYG (it runs unmetered until an ADD_TIME or SET_TIME)."""
    if owned:
        return None if disabled and not resync else TokenPlan(DISABLE_PAYG, None, None)
    shorten = staff or resync
    keep = TokenPlan(ADD_TIME, 0, chain_until)  # meters a disabled kit again, on its chain
    if credit_until is None or credit_until <= now:  # the ledger says: locked now
        if chain_until > now and shorten:
            return _set_time(credit_until, now)  # v = 0: locked at once
        # the kit is locked by its chain already (or, automatically, keeps what it holds)
        return keep if disabled or resync else None
    days = _nearest_days(credit_until - chain_until)
    if days > MAX_VALUE_DAYS:
        return _set_time(credit_until, now)
    if days > 0:
        return TokenPlan(ADD_TIME, days, chain_until + days * DAY_S)
    if resync or (shorten and days < 0):
        p = _set_time(credit_until, now)
        if resync or (p.chain_until or 0) < chain_until:
            return p
    return keep if disabled else None


def _set_time(credit_until: int | None, now: float) -> TokenPlan:
    """SET_TIME from the start of today (UTC): the credit end rounded up to a midnight; a
    lock (end now or past) is 0 days: locked at once, not at midnight."""
    base = day_start(now)
    target = credit_until if credit_until is not None else int(now)
    days = 0 if target <= now else math.ceil((target - base) / DAY_S)
    if days > MAX_VALUE_DAYS:
        raise TokenError(f"credit end {target} is more than {MAX_VALUE_DAYS} days ahead")
    return TokenPlan(SET_TIME, days, base + days * DAY_S)


def _nearest_days(seconds: int) -> int:
    """Whole days nearest to ``seconds`` (half a day rounds up)."""
    return (seconds + DAY_S // 2) // DAY_S


def chain_of(kit: Kit) -> int:
    return kit.opaygo_until if kit.opaygo_until is not None else int(kit.created_at)


def _chain_and_disabled(s: Session, kit: Kit) -> tuple[int, bool]:
    """The kit's chain position and whether its last token was DISABLE_PAYG (which leaves
    ``opaygo_until`` empty; the kit kept the chain of the token before it)."""
    if kit.opaygo_until is not None or not kit.opaygo_count:
        return chain_of(kit), False
    prior = s.scalar(select(KitToken.chain_until).where(
        KitToken.kit_id == kit.id, KitToken.chain_until.is_not(None))
        .order_by(KitToken.count.desc()).limit(1))
    return (int(prior) if prior is not None else int(kit.created_at)), True


def _reread_under_writer_lock(s: Session, kit: Kit) -> None:
    """SQLite ignores the caller's ``FOR UPDATE``: take the writer lock with a write that
    changes nothing and read the count and chain as committed, so two issues for one kit
    queue up instead of both taking the same count (PostgreSQL: the caller's row lock)."""
    count, until = s.execute(
        update(Kit).where(Kit.id == kit.id).values(opaygo_count=Kit.opaygo_count)
        .returning(Kit.opaygo_count, Kit.opaygo_until)
        .execution_options(synchronize_session=False)).one()
    set_committed_value(kit, "opaygo_count", count)
    set_committed_value(kit, "opaygo_until", until)


def issue_token(s: Session, *, kit: Kit, box: SecretBox, credit_until: int | None,
                owned: bool, now: float, created_by: str, payment_id: int | None = None,
                reason: str | None = None, staff: bool = False,
                resync: bool = False) -> KitToken | None:
    """Generate and persist the next token for ``kit`` (locked by the caller); None when the
    kit needs none (``plan``): a payment's or reversal's receipt never shortens (``staff``:
    a staff action read out at once may; ``resync``: always a token)."""
    if s.get_bind().dialect.name != "postgresql":
        _reread_under_writer_lock(s, kit)
    chain, disabled = _chain_and_disabled(s, kit)
    p = plan(chain_until=chain, credit_until=credit_until, owned=owned, now=now,
             staff=staff, resync=resync, disabled=disabled)
    if p is None:
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
                                              "token_type": p.token_type, "count": count,
                                              "value_days": p.value_days})
    return row


def wants_token(kit: Kit, now: float, offline_after_s: float) -> bool:
    """Keypad-only kits, and kits not heard from for longer than ``offline_after_s``."""
    return needs_token(decommissioned=kit.decommissioned_at is not None,
                       keypad_only=bool(kit.keypad_only), last_seen=kit.last_seen,
                       created_at=kit.created_at, now=now, offline_after_s=offline_after_s)


def needs_token(*, decommissioned: bool, keypad_only: bool, last_seen: float | None,
                created_at: float, now: float, offline_after_s: float) -> bool:
    """``wants_token`` on the kit's bare columns (the Core credit path reads no Kit)."""
    if decommissioned:
        return False
    if keypad_only:
        return True
    seen = last_seen if last_seen is not None else created_at
    return now - seen > offline_after_s
