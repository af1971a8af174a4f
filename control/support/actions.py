"""What a support agent can do to a kit, each action one audited transaction.

Every action locks the kit and its account, applies its change (control.support.changes),
converges the kit — the command is signed and claimed in the same transaction — and, when
the kit cannot be reached over MQTT, issues the keypad token support reads out. Once the
transaction has committed the command is published (control.commands.service) and the token
goes out by SMS. Role rules that depend on the request (more than a week of free credit
needs an admin) are checked here, not in the routes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cizo.i18n import N_
from control.commands import lifecycle, tokens
from control.commands.service import Issued
from control.ledger import accounts
from control.ledger.accounts import Actor, ProvisionedKit
from control.ledger.models import Account, Command, Kit, KitToken
from control.payments import receipts
from control.runtime import Runtime
from control.security import broker_auth
from control.support import changes
from control.support.changes import Change, SupportError

log = logging.getLogger(__name__)

DAY_S = 86_400
FREE_DAYS_WITHOUT_ADMIN = 7

__all__ = ["SupportError", "TokenError"]
TokenError = tokens.TokenError


class KitNotFound(LookupError):
    """No such kit (or account) in the actor's scope; ``msgid`` is the English wording
    (cizo/locale's catalogs translate it), filled with ``kit_id``."""

    def __init__(self, kit_id: str, msgid: str = N_("kit {kit_id} not found")) -> None:
        super().__init__(msgid.format(kit_id=kit_id))
        self.kit_id = kit_id
        self.msgid = msgid


class NeedsAdmin(PermissionError):
    """The action is beyond what the actor's role may do alone."""


@dataclass(frozen=True, slots=True)
class ActionResult:
    kit_id: str
    action: str
    command_id: str | None
    before: dict[str, Any]
    after: dict[str, Any]


@dataclass(frozen=True, slots=True)
class UnlockResult:
    kit_id: str
    days: int
    command_id: str | None
    credit_until: int | None
    before: dict[str, Any]
    after: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SwapResult:
    old_kit_id: str
    command_id: str | None
    credentials: ProvisionedKit


def in_scope(actor: Actor, desco_id: str) -> bool:
    return actor.desco_id is None or actor.desco_id == desco_id


def kit_in_scope(s: Session, actor: Actor, kit_id: str) -> Kit:
    """The kit, or ``KitNotFound`` when it does not exist in the actor's DESCO."""
    kit = s.get(Kit, kit_id)
    if kit is None or not in_scope(actor, kit.desco_id):
        raise KitNotFound(kit_id)
    return kit


def _locked(s: Session, actor: Actor, kit_id: str, *, live: bool = True
            ) -> tuple[Kit, Account]:
    """The kit and its account, row-locked; ``live``: refused when decommissioned."""
    kit_in_scope(s, actor, kit_id)
    kit = lifecycle.lock_kits(s, [kit_id])[0]
    if live and kit.decommissioned_at is not None:
        raise SupportError(f"kit {kit_id} is decommissioned")
    acct = accounts.account_for_kit(s, kit_id, for_update=True)
    if acct is None:
        raise KitNotFound(kit_id, N_("kit {kit_id} has no account"))
    return kit, acct


def _token_if_unreachable(rt: Runtime, s: Session, kit: Kit, acct: Account, actor: Actor,
                          reason: str) -> KitToken | None:
    """A staff action's keypad token, when the kit cannot be reached over MQTT: support
    reads it out for entry at once, so it may shorten the credit."""
    if not tokens.wants_token(kit, rt.clock.now(), rt.settings.keypad_offline_after_s):
        return None
    return tokens.issue_token(s, kit=kit, box=rt.box, credit_until=acct.credit_until,
                              owned=acct.owned, now=rt.clock.now(), created_by=actor.name,
                              reason=reason, staff=True)


def _after_commit(rt: Runtime, kit_id: str, issued: Issued | None,
                  token_id: int | None = None) -> None:
    if issued is not None:
        rt.service.send([issued.outgoing])
    if token_id is not None:
        receipts.send_token(rt, kit_id, token_id)


def _credit_action(rt: Runtime, actor: Actor, kit_id: str, name: str,
                   change: Callable[[Session, Kit, Account], Change]) -> ActionResult:
    with rt.db.session() as s:
        kit, acct = _locked(s, actor, kit_id)
        done = change(s, kit, acct)
        issued = rt.service.converge_kit(s, kit_id, origin="support", kit=kit, acct=acct)
        tok = _token_if_unreachable(rt, s, kit, acct, actor, reason=name)
        token_id = tok.id if tok is not None else None
    _after_commit(rt, kit_id, issued, token_id)
    cid = issued.id if issued is not None else None
    log.info("support %s by %s", name, actor.name, extra={"kit_id": kit_id, "command_id": cid})
    return ActionResult(kit_id, name, cid, done.before, done.after)


def unlock(rt: Runtime, actor: Actor, kit_id: str, *, days: int, reason: str) -> UnlockResult:
    """Free days on top of paid credit (more than a week: admins only), moving no money."""
    if days > FREE_DAYS_WITHOUT_ADMIN and actor.role != "admin":
        raise NeedsAdmin(f"more than {FREE_DAYS_WITHOUT_ADMIN} free days needs the admin role")
    with rt.db.session() as s:
        kit, acct = _locked(s, actor, kit_id, live=False)
        before, after = accounts.grant_free_days(s, acct=acct, days=days, now=rt.clock.now(),
                                                 actor=actor, reason=reason)
        issued = rt.service.converge_kit(s, kit_id, origin="support", kit=kit, acct=acct)
        credit_until = acct.credit_until
    log.info("support unlock: %d free days by %s", days, actor.name,
             extra={"kit_id": kit_id, "payment_id": None})
    _after_commit(rt, kit_id, issued)
    return UnlockResult(kit_id, days, issued.id if issued is not None else None, credit_until,
                        before, after)


def lock(rt: Runtime, actor: Actor, kit_id: str, *, reason: str) -> ActionResult:
    """End the credit now: the kit locks."""
    now = rt.clock.now()
    return _credit_action(rt, actor, kit_id, "lock", lambda s, kit, acct: changes.lock_now(
        s, kit=kit, acct=acct, actor=actor, reason=reason, now=now))


def set_credit_until(rt: Runtime, actor: Actor, kit_id: str, *, until: int,
                     reason: str) -> ActionResult:
    """Move the end of credit (more than a week beyond today or the current end: admins)."""
    now = rt.clock.now()

    def change(s: Session, kit: Kit, acct: Account) -> Change:
        current = acct.credit_until if acct.credit_until else int(now)
        if (until - max(int(now), current) > FREE_DAYS_WITHOUT_ADMIN * DAY_S
                and actor.role != "admin"):
            raise NeedsAdmin(f"more than {FREE_DAYS_WITHOUT_ADMIN} free days needs the "
                             "admin role")
        return changes.set_credit_until(s, kit=kit, acct=acct, until=until, actor=actor,
                                        reason=reason, now=now)

    return _credit_action(rt, actor, kit_id, "set_credit_until", change)


def repossess(rt: Runtime, actor: Actor, kit_id: str, *, reason: str) -> ActionResult:
    """Lock for good and close the account."""
    now = rt.clock.now()
    return _credit_action(rt, actor, kit_id, "repossess", lambda s, kit, acct: changes.repossess(
        s, kit=kit, acct=acct, actor=actor, reason=reason, now=now))


def swap(rt: Runtime, actor: Actor, kit_id: str, *, new_kit_id: str,
         reason: str) -> SwapResult:
    """Replace a faulty kit: the account moves to a new serial whose credentials are
    returned once; the old kit's retained command is cleared from the broker."""
    with rt.db.session() as s:
        kit, acct = _locked(s, actor, kit_id)
        done = changes.swap(s, old=kit, acct=acct, new_kit_id=new_kit_id, box=rt.box,
                            actor=actor, reason=reason, now=rt.clock.now())
        new = lifecycle.lock_kits(s, [new_kit_id])[0]
        issued = rt.service.converge_kit(s, new_kit_id, origin="support", kit=new, acct=acct)
    rt.service.clear_retained(kit_id)
    broker_auth.converge_now(rt, [kit_id, new_kit_id])  # old door closed, new one opened
    _after_commit(rt, new_kit_id, issued)
    cid = issued.id if issued is not None else None
    log.info("kit swapped by %s", actor.name, extra={"kit_id": kit_id, "command_id": cid})
    return SwapResult(kit_id, cid, done.new_kit)


def switch_protocol(rt: Runtime, actor: Actor, kit_id: str, version: int) -> Command:
    """A signed ``protocol`` command moving the kit to contract ``version`` (v1 JSON, v2
    compact CBOR, docs/protocol.md); the kit announces the new version once applied."""
    now = rt.clock.now()
    with rt.db.session() as s:
        kit, _acct = _locked(s, actor, kit_id)
        before = kit.protocol_version
        issued = rt.service.switch_protocol(s, kit, version)
        cmd = s.get(Command, issued.id)
        assert cmd is not None
        accounts.audit(s, actor=actor, action="kit.protocol", now=now, kit_id=kit_id,
                       desco_id=kit.desco_id, reason=f"kit contract v{version}",
                       before={"protocol_version": before},
                       after={"command_id": cmd.id, "seq": cmd.seq, "protocol_version": version})
        s.flush()
        s.expunge(cmd)
    _after_commit(rt, kit_id, issued)
    return cmd


def rotate_secret(rt: Runtime, actor: Actor, kit_id: str) -> Command:
    """A signed ``rotate`` with a fresh nonce (one at a time); returns the command."""
    now = rt.clock.now()
    with rt.db.session() as s:
        kit, _acct = _locked(s, actor, kit_id)
        if lifecycle.rotation_pending(s, kit):
            raise SupportError("a rotation is already waiting for the kit's ack")
        issued = rt.service.rotate_secret(s, kit)
        cmd = s.get(Command, issued.id)
        assert cmd is not None
        accounts.audit(s, actor=actor, action="kit.rotate_secret", now=now, kit_id=kit_id,
                       desco_id=kit.desco_id, reason="secret rotation",
                       after={"command_id": cmd.id, "seq": cmd.seq})
        s.flush()
        s.expunge(cmd)
    _after_commit(rt, kit_id, issued)
    return cmd


def set_keypad(rt: Runtime, actor: Actor, kit_id: str, *, keypad_only: bool,
               reason: str) -> ActionResult:
    """Flag a kit keypad-only (a token for every payment) or not."""
    with rt.db.session() as s:
        kit, acct = _locked(s, actor, kit_id)
        before = changes.kit_snapshot(kit, acct) | {"keypad_only": kit.keypad_only}
        kit.keypad_only = keypad_only
        after = changes.kit_snapshot(kit, acct) | {"keypad_only": kit.keypad_only}
        accounts.audit(s, actor=actor, action="kit.keypad", now=rt.clock.now(), kit_id=kit_id,
                       desco_id=kit.desco_id, reason=reason, before=before, after=after)
    return ActionResult(kit_id, "keypad", None, before, after)


def issue_token(rt: Runtime, actor: Actor, kit_id: str, *, reason: str,
                send_sms: bool) -> KitToken:
    """A keypad token restating the account's current credit (a lost code), audited."""
    now = rt.clock.now()
    with rt.db.session() as s:
        kit, acct = _locked(s, actor, kit_id)
        tok = tokens.issue_token(s, kit=kit, box=rt.box, credit_until=acct.credit_until,
                                 owned=acct.owned, now=now, created_by=actor.name,
                                 reason=reason, resync=True)
        assert tok is not None  # resync always yields a token
        accounts.audit(s, actor=actor, action="kit.token", now=now, kit_id=kit_id,
                       desco_id=kit.desco_id, reason=reason,
                       after={"count": tok.count, "token_type": tok.token_type,
                              "value_days": tok.value_days, "chain_until": tok.chain_until})
        s.flush()
        s.expunge(tok)
    if send_sms:
        receipts.send_token(rt, kit_id, tok.id)
    return tok


def tokens_of(rt: Runtime, actor: Actor, kit_id: str, limit: int) -> list[KitToken]:
    """The kit's keypad tokens, newest first (to read out on the phone)."""
    with rt.db.session() as s:
        kit_in_scope(s, actor, kit_id)
        rows = list(s.scalars(select(KitToken).where(KitToken.kit_id == kit_id)
                              .order_by(KitToken.count.desc()).limit(limit)))
        s.expunge_all()
    return rows
