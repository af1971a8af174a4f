"""Kits join the fleet: a kit, its account and its credentials, returned once.

An admin provisions a kit for their own DESCO (a national admin for any): the phone and the
plan are checked first, then the kit, its account and (when the deposit was paid in cash at
the sale) the deposit's ledger entry are written in one transaction
(control.ledger.accounts.provision_kit). A serial provisioned twice, even by two requests at
once, is refused. Once committed, the kit's broker login is created at once (its door on
the broker, control.security.broker_auth): the kit can connect as soon as it is returned.
"""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from control.ledger import accounts, credit
from control.ledger.accounts import Actor, ProvisionedKit
from control.ledger.models import Desco, Kit
from control.ledger.phone import PhoneError, normalise_phone
from control.runtime import Runtime
from control.security import broker_auth


class ProvisioningRefused(ValueError):
    """The kit was not provisioned; ``status`` is the HTTP answer (403, 409, 422)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def provision(rt: Runtime, actor: Actor, *, kit_id: str, desco_id: str | None, phone: str,
              plan: credit.Plan | tuple[int, int, int], deposit_paid: bool) -> ProvisionedKit:
    """Provision ``kit_id`` (its DESCO: ``desco_id``, else the actor's, else the default)."""
    desco = desco_id or actor.desco_id or rt.settings.default_desco_id
    if actor.desco_id is not None and actor.desco_id != desco:
        raise ProvisioningRefused("this key may only provision kits for its own DESCO", 403)
    try:
        phone_e164 = normalise_phone(phone)
        the_plan = plan if isinstance(plan, credit.Plan) else credit.Plan(*plan)
    except (PhoneError, credit.CreditError) as exc:
        raise ProvisioningRefused(str(exc), 422) from exc
    try:
        with rt.db.session() as s:
            if s.get(Kit, kit_id) is not None:
                raise ProvisioningRefused(f"kit {kit_id} already exists", 409)
            if s.get(Desco, desco) is None:
                raise ProvisioningRefused(f"unknown DESCO {desco}", 422)
            made = accounts.provision_kit(
                s, kit_id=kit_id, desco_id=desco, phone_e164=phone_e164, plan=the_plan,
                box=rt.box, now=rt.clock.now(), actor=actor, deposit_paid=deposit_paid)
    except IntegrityError as exc:  # a concurrent provisioning of the same serial
        raise ProvisioningRefused(f"kit {kit_id} already exists", 409) from exc
    broker_auth.converge_now(rt, [kit_id])  # its broker door, before its credentials return
    return made
