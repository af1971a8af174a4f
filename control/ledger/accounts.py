"""Accounts in the ledger: provisioning a kit and its account, free days, the audit log.

Each function works inside the caller's session and transaction, so a change, its ledger
entry, its audit entry and the command it triggers commit together or not at all. Money
is posted by control.payments.posting, the one credit path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, String, Table, bindparam, insert, select
from sqlalchemy.orm import Session

from cizo import protocol
from control.ledger import credit
from control.ledger.models import Account, AuditEntry, Desco, Kit, LedgerEntry
from control.ledger.secrets import SecretBox, new_kit_login
from control.ledger.writes import Write, write_all

log = logging.getLogger(__name__)


class LedgerError(ValueError):
    """A request the ledger refuses (unknown kit, duplicate serial...)."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: an API key's name and role, or a system job."""

    name: str
    role: str
    desco_id: str | None = None  # None: national scope
    key_id: int | None = None


SYSTEM = Actor(name="system", role="system")


@dataclass(frozen=True, slots=True)
class ProvisionedKit:
    """What provisioning returns exactly once: the kit's credentials in the clear."""

    kit_id: str
    account_number: str
    desco_id: str
    mqtt_username: str
    mqtt_password: str
    command_secret: str


def plan_of(acct: Account) -> credit.Plan:
    return credit.Plan(acct.deposit_fcfa, acct.daily_rate_fcfa, acct.total_price_fcfa)


def state_of(acct: Account) -> credit.CreditState:
    return credit.CreditState(
        acct.paid_total_fcfa, acct.remainder_fcfa, acct.credit_until, acct.owned
    )


def _store_state(acct: Account, state: credit.CreditState) -> None:
    acct.paid_total_fcfa = state.paid_total_fcfa
    acct.remainder_fcfa = state.remainder_fcfa
    acct.credit_until = state.credit_until
    acct.owned = state.owned


def account_snapshot(acct: Account) -> dict[str, Any]:
    """The fields an audit entry records before and after a change."""
    return {
        "paid_total_fcfa": acct.paid_total_fcfa,
        "remainder_fcfa": acct.remainder_fcfa,
        "credit_until": acct.credit_until,
        "owned": acct.owned,
    }


_AUDIT = insert(cast(Table, AuditEntry.__table__)).values(
    at=bindparam("now"), actor=bindparam("au_actor"), role=bindparam("au_role"),
    action=bindparam("au_action"), desco_id=bindparam("au_desco", type_=String),
    kit_id=bindparam("au_kit", type_=String), reason=bindparam("au_reason", type_=String),
    before=bindparam("au_before"), after=bindparam("au_after"))


def audit_write(*, actor: Actor, action: str, now: float, kit_id: str | None = None,
                desco_id: str | None = None, reason: str | None = None,
                before: dict[str, Any] | None = None, after: dict[str, Any] | None = None
                ) -> Write:
    """An audit entry (who, what, why, before, after), to write with its transaction: the
    one writer of the audit log (a credit sends it in its bundle of writes)."""
    return Write(_AUDIT, {"now": now, "au_actor": actor.name, "au_role": actor.role,
                          "au_action": action, "au_desco": desco_id, "au_kit": kit_id,
                          "au_reason": reason, "au_before": before, "au_after": after})


def audit(s: Session | Connection, **entry: Any) -> None:
    """An audit entry written now, in the caller's transaction (``audit_write``'s fields)."""
    write_all(s, [audit_write(**entry)])


def provision_kit(
    s: Session,
    *,
    kit_id: str,
    desco_id: str,
    phone_e164: str,
    plan: credit.Plan,
    box: SecretBox,
    now: float,
    actor: Actor,
    deposit_paid: bool = True,
) -> ProvisionedKit:
    """Create a kit, its account and its credentials; secrets are stored hashed/encrypted.

    The deposit is usually paid in cash at the sale: ``deposit_paid`` records it as a
    ledger entry, so later mobile-money payments buy days straight away.
    """
    if s.get(Kit, kit_id) is not None:
        raise LedgerError(f"kit {kit_id} already exists")
    if s.get(Desco, desco_id) is None:
        raise LedgerError(f"unknown DESCO {desco_id}")
    login = new_kit_login(box)
    secret = protocol.new_command_secret()
    kit = Kit(
        id=kit_id, desco_id=desco_id, mqtt_username=kit_id, mqtt_password_hash=login.hashed,
        mqtt_password_enc=login.encrypted, secret_enc=box.encrypt(secret),
        cmd_seq=0, created_at=now, online=False,
    )
    acct = Account(
        desco_id=desco_id, account_number=kit_id, kit_id=kit_id, customer_phone=phone_e164,
        deposit_fcfa=plan.deposit_fcfa, daily_rate_fcfa=plan.daily_rate_fcfa,
        total_price_fcfa=plan.total_price_fcfa, paid_total_fcfa=0, remainder_fcfa=0,
        credit_until=None, owned=False, created_at=now,
    )
    s.add(kit)
    s.flush()  # no ORM relationships: insert the kit before the account that refers to it
    s.add(acct)
    s.flush()
    if deposit_paid and plan.deposit_fcfa > 0:
        change = credit.apply_payment(plan, state_of(acct), plan.deposit_fcfa, int(now))
        _store_state(acct, change.after)
        s.add(LedgerEntry(
            account_id=acct.id, kind="deposit", amount_fcfa=plan.deposit_fcfa,
            days=change.days_added, remainder_after_fcfa=change.after.remainder_fcfa,
            credit_until_before=None, credit_until_after=change.after.credit_until,
            created_at=now,
        ))
    audit(s, actor=actor, action="kit.provision", now=now, kit_id=kit_id, desco_id=desco_id,
          after=account_snapshot(acct))
    log.info("kit provisioned", extra={"kit_id": kit_id, "desco_id": desco_id})
    return ProvisionedKit(kit_id, acct.account_number, desco_id, kit.mqtt_username, login.password,
                          secret)


def account_for_kit(s: Session, kit_id: str, *, for_update: bool = False) -> Account | None:
    q = select(Account).where(Account.kit_id == kit_id)
    if for_update:
        q = q.with_for_update()
    return s.scalars(q).one_or_none()


def grant_free_days(
    s: Session, *, acct: Account, days: int, now: float, actor: Actor, reason: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Support's manual unlock: free days on top of paid credit, audited, moving no money."""
    before = account_snapshot(acct)
    after_state = credit.grant_days(state_of(acct), days, int(now))
    _store_state(acct, after_state)
    s.add(LedgerEntry(
        account_id=acct.id, kind="free_days", amount_fcfa=0, days=days,
        remainder_after_fcfa=acct.remainder_fcfa, credit_until_before=before["credit_until"],
        credit_until_after=acct.credit_until, created_at=now,
    ))
    after = account_snapshot(acct)
    audit(s, actor=actor, action="kit.unlock", now=now, kit_id=acct.kit_id,
          desco_id=acct.desco_id, reason=reason, before={**before, "days": days}, after=after)
    return before, after
