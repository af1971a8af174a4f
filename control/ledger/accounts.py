"""Accounts in the ledger: provisioning a kit and its account, free days, the audit log.

Each function works inside the caller's session and transaction, so a change, its ledger
entry, its audit entry and the command it triggers commit together or not at all. Money
is posted by control.payments.posting, the one credit path.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, String, Table, bindparam, insert, select
from sqlalchemy.orm import Session

from cizo import protocol
from control.ledger import credit
from control.ledger.models import (
    DEFAULT_REGION,
    Account,
    AuditEntry,
    Desco,
    Kit,
    LedgerEntry,
)
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
    return state_snapshot(state_of(acct))


def state_snapshot(state: credit.CreditState) -> dict[str, Any]:
    return {
        "paid_total_fcfa": state.paid_total_fcfa,
        "remainder_fcfa": state.remainder_fcfa,
        "credit_until": state.credit_until,
        "owned": state.owned,
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


@dataclass(frozen=True, slots=True)
class NewKit:
    """One kit to provision, already checked (control.fleet.provisioning.check)."""

    kit_id: str
    desco_id: str
    phone_e164: str
    plan: credit.Plan
    deposit_paid: bool = True
    region: str = DEFAULT_REGION


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
    """One kit: ``provision_kits`` with a batch of one."""
    return provision_kits(s, [NewKit(kit_id, desco_id, phone_e164, plan, deposit_paid)],
                          box=box, now=now, actor=actor)[0]


def provision_kits(
    s: Session, kits: Sequence[NewKit], *, box: SecretBox, now: float, actor: Actor
) -> list[ProvisionedKit]:
    """Create kits, their accounts and credentials; secrets are stored hashed/encrypted.

    The one provisioning path, for a single kit and for an import alike: each table gets
    one multi-row INSERT for the batch, so 100,000 kits cost a few hundred statements.
    The deposit is usually paid in cash at the sale: ``deposit_paid`` records it as a
    ledger entry, so later mobile-money payments buy days straight away.
    """
    if not kits:
        return []
    ids = [k.kit_id for k in kits]
    if len(set(ids)) != len(ids):
        raise LedgerError("a kit appears twice in the batch")
    taken = s.scalars(select(Kit.id).where(Kit.id.in_(ids)).limit(1)).first()
    if taken is not None:
        raise LedgerError(f"kit {taken} already exists")
    descos = {k.desco_id for k in kits}
    known = set(s.scalars(select(Desco.id).where(Desco.id.in_(descos))))
    if descos - known:
        raise LedgerError(f"unknown DESCO {sorted(descos - known)[0]}")
    made: list[ProvisionedKit] = []
    kit_rows: list[dict[str, Any]] = []
    acct_rows: list[dict[str, Any]] = []
    states: dict[str, tuple[credit.CreditState, int]] = {}
    for k in kits:
        login, secret = new_kit_login(box), protocol.new_command_secret()
        made.append(ProvisionedKit(k.kit_id, k.kit_id, k.desco_id, k.kit_id, login.password,
                                   secret))
        row: dict[str, Any] = {
            "id": k.kit_id, "desco_id": k.desco_id, "mqtt_username": k.kit_id,
            "mqtt_password_hash": login.hashed, "mqtt_password_enc": login.encrypted,
            "secret_enc": box.encrypt(secret), "cmd_seq": 0, "created_at": now,
            "online": False, "region": k.region}
        kit_rows.append(row)
        state, days = credit.CreditState(0, 0, None, False), 0
        if k.deposit_paid and k.plan.deposit_fcfa > 0:
            change = credit.apply_payment(k.plan, state, k.plan.deposit_fcfa, int(now))
            state, days = change.after, change.days_added
        states[k.kit_id] = (state, days)
        acct_rows.append({
            "desco_id": k.desco_id, "account_number": k.kit_id, "kit_id": k.kit_id,
            "customer_phone": k.phone_e164, "deposit_fcfa": k.plan.deposit_fcfa,
            "daily_rate_fcfa": k.plan.daily_rate_fcfa,
            "total_price_fcfa": k.plan.total_price_fcfa,
            "paid_total_fcfa": state.paid_total_fcfa, "remainder_fcfa": state.remainder_fcfa,
            "credit_until": state.credit_until, "owned": state.owned, "created_at": now})
    s.execute(insert(_table(Kit)), kit_rows)
    accts = _table(Account)
    s.execute(insert(accts), acct_rows)
    # read back rather than RETURNING: a RETURNING executemany is sent as one huge
    # statement per 1,000 rows that the driver re-parses each time (3x slower at 100,000)
    account_ids: dict[str, int] = {kit_id: int(acct_id) for kit_id, acct_id in s.execute(
        select(Account.kit_id, Account.id).where(Account.kit_id.in_(ids)))}
    deposits = [
        {"account_id": account_ids[k.kit_id], "kind": "deposit",
         "amount_fcfa": k.plan.deposit_fcfa, "days": states[k.kit_id][1],
         "remainder_after_fcfa": states[k.kit_id][0].remainder_fcfa,
         "credit_until_before": None, "credit_until_after": states[k.kit_id][0].credit_until,
         "created_at": now}
        for k in kits if k.deposit_paid and k.plan.deposit_fcfa > 0]
    if deposits:
        s.execute(insert(_table(LedgerEntry)), deposits)
    audits = [audit_write(actor=actor, action="kit.provision", now=now, kit_id=k.kit_id,
                          desco_id=k.desco_id, after=state_snapshot(states[k.kit_id][0]))
              for k in kits]
    write_all(s, [Write(_AUDIT, [cast(Mapping[str, Any], a.params) for a in audits])])
    log.info("kits provisioned", extra={"kit_id": ids[0] if len(ids) == 1 else None,
                                        "desco_id": kits[0].desco_id, "kits": len(ids)})
    return made


def _table(model: type[Any]) -> Table:
    return cast(Table, model.__table__)


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
