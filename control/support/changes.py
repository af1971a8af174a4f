"""What each support action changes on a kit and its account, audited (who, when, why,
before, after).

Every function works inside the caller's transaction (control.support.actions owns it): the
account change, its ledger entry, its audit entry and the kit's new command commit
together. Publishing (and clearing a retained command) happens after commit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cizo import protocol
from control.commands import lifecycle
from control.ledger import accounts as ledger
from control.ledger.accounts import Actor, LedgerError
from control.ledger.models import Account, Command, Kit, LedgerEntry
from control.ledger.secrets import SecretBox, new_kit_login

log = logging.getLogger(__name__)

DAY_S = 86_400


class SupportError(LedgerError):
    """A support action that does not apply to this kit (owned, closed, decommissioned)."""


@dataclass(frozen=True, slots=True)
class Change:
    before: dict[str, Any]
    after: dict[str, Any]


def kit_snapshot(kit: Kit, acct: Account | None) -> dict[str, Any]:
    snap = ledger.account_snapshot(acct) if acct is not None else {}
    return {**snap, "kit_id": kit.id, "commanded_action": kit.commanded_action,
            "reported_locked": kit.reported_locked, "closed": bool(acct and acct.closed_at)}


def _open_account(acct: Account) -> None:
    if acct.closed_at is not None:
        raise SupportError(f"account {acct.account_number} is closed")
    if acct.owned:
        raise SupportError(f"kit {acct.kit_id} is owned: no credit to change")


def set_credit_until(s: Session, *, kit: Kit, acct: Account, until: int, actor: Actor,
                     reason: str, now: float, action: str = "kit.set_credit_until") -> Change:
    """Move the end of credit (shorter or longer), moving no money; ledger entry + audit."""
    _open_account(acct)
    before = kit_snapshot(kit, acct)
    old = acct.credit_until
    acct.credit_until = until
    s.add(LedgerEntry(
        account_id=acct.id, kind="credit_set", amount_fcfa=0,
        days=round((until - max(old or int(now), int(now))) / DAY_S),
        remainder_after_fcfa=acct.remainder_fcfa, credit_until_before=old,
        credit_until_after=until, created_at=now))
    after = kit_snapshot(kit, acct)
    ledger.audit(s, actor=actor, action=action, now=now, kit_id=kit.id,
                 desco_id=acct.desco_id, reason=reason, before=before, after=after)
    return Change(before, after)


def lock_now(s: Session, *, kit: Kit, acct: Account, actor: Actor, reason: str,
             now: float) -> Change:
    """End the credit now: the kit locks (paid days are not refunded here: say why)."""
    return set_credit_until(s, kit=kit, acct=acct, until=int(now), actor=actor,
                            reason=reason, now=now, action="kit.lock")


def repossess(s: Session, *, kit: Kit, acct: Account, actor: Actor, reason: str,
              now: float) -> Change:
    """Lock for good and close the account: no later payment or sweep unlocks it."""
    if acct.closed_at is not None:
        raise SupportError(f"account {acct.account_number} is already closed")
    before = kit_snapshot(kit, acct)
    old = acct.credit_until
    acct.credit_until = int(now)
    acct.owned = False
    acct.closed_at = now
    s.add(LedgerEntry(
        account_id=acct.id, kind="repossess", amount_fcfa=0, days=0,
        remainder_after_fcfa=acct.remainder_fcfa, credit_until_before=old,
        credit_until_after=acct.credit_until, created_at=now))
    after = kit_snapshot(kit, acct)
    ledger.audit(s, actor=actor, action="kit.repossess", now=now, kit_id=kit.id,
                 desco_id=acct.desco_id, reason=reason, before=before, after=after)
    return Change(before, after)


@dataclass(frozen=True, slots=True)
class Swap:
    old_kit_id: str
    new_kit: ledger.ProvisionedKit
    change: Change


def swap(s: Session, *, old: Kit, acct: Account, new_kit_id: str, box: SecretBox,
         actor: Actor, reason: str, now: float) -> Swap:
    """A faulty kit replaced: a new kit (credentials returned once) takes over the account,
    its credit and history; the old kit is decommissioned and its pending commands dropped."""
    if old.decommissioned_at is not None:
        raise SupportError(f"kit {old.id} is already decommissioned")
    if s.get(Kit, new_kit_id) is not None:
        raise SupportError(f"kit {new_kit_id} already exists")
    before = kit_snapshot(old, acct)
    login = new_kit_login(box)
    secret = protocol.new_command_secret()
    new = Kit(id=new_kit_id, desco_id=old.desco_id, mqtt_username=new_kit_id,
              mqtt_password_hash=login.hashed, mqtt_password_enc=login.encrypted,
              secret_enc=box.encrypt(secret),
              cmd_seq=0, created_at=now, online=False, region=old.region,
              keypad_only=old.keypad_only)
    s.add(new)
    s.flush()
    decommission(s, kit=old, now=now)
    acct.kit_id = new_kit_id
    s.flush()
    after = kit_snapshot(new, acct)
    for kid in (old.id, new_kit_id):
        ledger.audit(s, actor=actor, action="kit.swap", now=now, kit_id=kid,
                     desco_id=acct.desco_id, reason=reason,
                     before={**before, "kit_id": old.id}, after={**after, "kit_id": new_kit_id})
    creds = ledger.ProvisionedKit(new_kit_id, acct.account_number, acct.desco_id, new_kit_id,
                                  login.password, secret)
    return Swap(old.id, creds, Change(before, after))


def decommission(s: Session, *, kit: Kit, now: float) -> None:
    """No more commands for this kit; its retained command is cleared after commit."""
    kit.decommissioned_at = now
    lifecycle.supersede_pending(s, [kit.id], now)
    kit.commanded_action = None
    kit.commanded_credit_until = None
    kit.lock_due_at = None


def latest_command(s: Session, kit_id: str) -> Command | None:
    return s.scalars(select(Command).where(Command.kit_id == kit_id)
                     .order_by(Command.seq.desc()).limit(1)).first()
