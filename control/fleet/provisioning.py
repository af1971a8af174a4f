"""Kits join the fleet: a kit, its account and its credentials, returned once.

An admin provisions a kit for their own DESCO (a national admin for any). ``check`` is the
one validator of a kit request — kit id (the contract's pattern, cizo.protocol), DESCO
scope, phone, plan, region — used by ``POST /v1/kits`` and by every row of an import
(control.fleet.kit_import). The kit, its account and (when the deposit was paid in cash
at the sale) the deposit's ledger entry are then written in one transaction by
control.ledger.accounts.provision_kits, for one kit or a batch. A serial provisioned twice,
even by two requests at once, is refused. Once committed, the kits' broker logins
are created at once (their doors on the broker, control.security.broker_auth): a kit can
connect as soon as it is returned.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from cizo import protocol
from control.fleet.jobs import REGIONS
from control.fleet.messages import Refused
from control.ledger import accounts, credit
from control.ledger.accounts import Actor, NewKit, ProvisionedKit
from control.ledger.models import DEFAULT_REGION, Desco, Kit
from control.ledger.phone import PhoneError, normalise_phone
from control.runtime import Runtime
from control.security import broker_auth


def check(rt: Runtime, actor: Actor, *, kit_id: str, desco_id: str | None, phone: str,
          plan: credit.Plan | tuple[int, int, int], deposit_paid: bool,
          region: str | None = None) -> NewKit:
    """The kit request, checked: its DESCO is ``desco_id``, else the actor's, else the
    default. Raises Refused with the first problem found."""
    if not protocol.is_kit_id(kit_id):
        raise Refused("kit_id_invalid", kit_id=kit_id)
    desco = desco_id or actor.desco_id or rt.settings.default_desco_id
    if actor.desco_id is not None and actor.desco_id != desco:
        raise Refused("desco_forbidden", 403)
    if region is not None and region not in REGIONS:
        raise Refused("region_unknown", region=region, regions=", ".join(REGIONS))
    try:
        phone_e164 = normalise_phone(phone)
    except PhoneError as exc:
        raise Refused("phone_invalid", reason=str(exc)) from exc
    try:
        the_plan = plan if isinstance(plan, credit.Plan) else credit.Plan(*plan)
    except credit.CreditError as exc:
        raise Refused("plan_invalid", reason=str(exc)) from exc
    return NewKit(kit_id, desco, phone_e164, the_plan, deposit_paid, region or DEFAULT_REGION)


def unknown_descos(rt: Runtime, descos: set[str]) -> set[str]:
    with rt.db.session() as s:
        return descos - set(s.scalars(select(Desco.id).where(Desco.id.in_(descos))))


def provision_checked(rt: Runtime, actor: Actor, kits: Sequence[NewKit]) -> list[ProvisionedKit]:
    """Write checked kits in one transaction; any kit already there refuses the batch."""
    missing = unknown_descos(rt, {k.desco_id for k in kits})
    if missing:
        raise Refused("desco_unknown", desco_id=sorted(missing)[0])
    ids = [k.kit_id for k in kits]
    try:
        with rt.db.session() as s:
            taken = s.scalars(select(Kit.id).where(Kit.id.in_(ids)).limit(1)).first()
            if taken is not None:
                raise Refused("kit_exists", 409, kit_id=taken)
            made = accounts.provision_kits(s, kits, box=rt.box, now=rt.clock.now(),
                                           actor=actor)
    except IntegrityError as exc:  # a concurrent provisioning of the same serial
        taken = ids[0] if len(ids) == 1 else "(one of the batch)"
        raise Refused("kit_exists", 409, kit_id=taken) from exc
    broker_auth.converge_now(rt, ids)  # their broker doors, before the credentials return
    return made


def provision(rt: Runtime, actor: Actor, *, kit_id: str, desco_id: str | None, phone: str,
              plan: credit.Plan | tuple[int, int, int], deposit_paid: bool,
              region: str | None = None) -> ProvisionedKit:
    """Provision one kit (``POST /v1/kits``)."""
    new = check(rt, actor, kit_id=kit_id, desco_id=desco_id, phone=phone, plan=plan,
                deposit_paid=deposit_paid, region=region)
    return provision_checked(rt, actor, [new])[0]
