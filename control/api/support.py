"""Support actions on a kit (lock, set credit end, swap, repossess, keypad tokens), secret
rotation, and the command lifecycle and anomalies. Routes only translate HTTP: the actions
are control.support.actions. Free-day unlocks are at ``POST /v1/kits/{kit_id}/unlock``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy import func, select

from control.api.auth import AdminKey, ReaderKey, RuntimeDep, SupportKey, UnlockKey
from control.api.idempotency import IdempotencyKey, run_idempotent
from control.api.kits import command_out
from control.api.schemas import (
    ActionOut,
    CommandOut,
    CommandPage,
    ControlStatus,
    CreditUntilIn,
    KeypadIn,
    KitCredentials,
    Problem,
    ProtocolIn,
    ReasonIn,
    SwapIn,
    SwapOut,
    TokenIn,
    TokenOut,
    TokenPage,
)
from control.ledger.accounts import Actor
from control.ledger.models import Command, Kit, KitToken
from control.runtime import Runtime
from control.support import actions

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["support"])

_errors: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem}, 403: {"model": Problem}, 404: {"model": Problem},
    409: {"model": Problem}, 422: {"model": Problem},
}


def _token_out(t: KitToken) -> TokenOut:
    return TokenOut(id=t.id, kit_id=t.kit_id, count=t.count, token=t.token,
                    token_type=t.token_type, value_days=t.value_days,
                    credit_until=t.credit_until, chain_until=t.chain_until,
                    payment_id=t.payment_id, reason=t.reason, created_by=t.created_by,
                    created_at=t.created_at)


def _action_out(r: actions.ActionResult) -> ActionOut:
    return ActionOut(kit_id=r.kit_id, action=r.action, command_id=r.command_id,
                     before=r.before, after=r.after)


def _idem(rt: Runtime, actor: Actor, key: str | None, request: Request, body: BaseModel,
          action: Callable[[], BaseModel]) -> Response:
    return run_idempotent(rt, actor=actor, key=key, method="POST", path=request.url.path,
                          body=body.model_dump(mode="json"), status_code=status.HTTP_200_OK,
                          action=action)


@router.post("/kits/{kit_id}/lock", response_model=ActionOut, responses=_errors,
             summary="End the credit now: the kit locks (support), audited")
def lock(rt: RuntimeDep, actor: SupportKey, kit_id: str, body: ReasonIn, request: Request,
         idempotency_key: IdempotencyKey = None) -> Response:
    return _idem(rt, actor, idempotency_key, request, body, lambda: _action_out(
        actions.lock(rt, actor, kit_id, reason=body.reason)))


@router.post("/kits/{kit_id}/set-credit-until", response_model=ActionOut,
             responses={**_errors, 429: {"model": Problem}},
             summary="Set the end of credit (support; more than 7 days beyond today: admin)")
def set_credit_until(rt: RuntimeDep, actor: UnlockKey, kit_id: str, body: CreditUntilIn,
                     request: Request, idempotency_key: IdempotencyKey = None) -> Response:
    return _idem(rt, actor, idempotency_key, request, body, lambda: _action_out(
        actions.set_credit_until(rt, actor, kit_id, until=body.credit_until,
                                 reason=body.reason)))


@router.post("/kits/{kit_id}/repossess", response_model=ActionOut, responses=_errors,
             summary="Lock for good and close the account (support), audited")
def repossess(rt: RuntimeDep, actor: SupportKey, kit_id: str, body: ReasonIn,
              request: Request, idempotency_key: IdempotencyKey = None) -> Response:
    return _idem(rt, actor, idempotency_key, request, body, lambda: _action_out(
        actions.repossess(rt, actor, kit_id, reason=body.reason)))


@router.post("/kits/{kit_id}/swap", response_model=SwapOut, responses=_errors,
             summary="Replace a faulty kit: the account moves to a new serial (support)")
def swap(rt: RuntimeDep, actor: SupportKey, kit_id: str, body: SwapIn, request: Request,
         idempotency_key: IdempotencyKey = None) -> Response:
    def act() -> SwapOut:
        done = actions.swap(rt, actor, kit_id, new_kit_id=body.new_kit_id, reason=body.reason)
        return SwapOut(old_kit_id=done.old_kit_id, command_id=done.command_id,
                       credentials=KitCredentials(**dataclasses.asdict(done.credentials)))

    return _idem(rt, actor, idempotency_key, request, body, act)


@router.post("/kits/{kit_id}/rotate-secret", response_model=CommandOut, responses=_errors,
             summary="Rotate the kit's command secret (admin): a signed rotate with a nonce")
def rotate_secret(rt: RuntimeDep, actor: AdminKey, kit_id: str) -> CommandOut:
    return command_out(actions.rotate_secret(rt, actor, kit_id))


@router.post("/kits/{kit_id}/protocol", response_model=CommandOut, responses=_errors,
             summary="Move the kit to another kit contract version (admin): a signed command")
def switch_protocol(rt: RuntimeDep, actor: AdminKey, kit_id: str,
                    body: ProtocolIn) -> CommandOut:
    return command_out(actions.switch_protocol(rt, actor, kit_id, body.version))


@router.post("/kits/{kit_id}/keypad", response_model=ActionOut, responses=_errors,
             summary="Flag a kit keypad-only (tokens for every payment) or not (support)")
def set_keypad(rt: RuntimeDep, actor: SupportKey, kit_id: str, body: KeypadIn) -> ActionOut:
    return _action_out(actions.set_keypad(rt, actor, kit_id, keypad_only=body.keypad_only,
                                          reason=body.reason))


@router.post("/kits/{kit_id}/tokens", response_model=TokenOut, responses=_errors,
             summary="Issue a keypad token for the account's current credit (support)")
def issue_token(rt: RuntimeDep, actor: SupportKey, kit_id: str, body: TokenIn) -> TokenOut:
    return _token_out(actions.issue_token(rt, actor, kit_id, reason=body.reason,
                                          send_sms=body.send_sms))


@router.get("/kits/{kit_id}/tokens", response_model=TokenPage, responses=_errors,
            summary="Keypad tokens issued to the kit, newest first (to read out on the phone)")
def list_tokens(rt: RuntimeDep, actor: SupportKey, kit_id: str,
                limit: Annotated[int, Query(ge=1, le=500)] = 50) -> TokenPage:
    return TokenPage(items=[_token_out(t) for t in actions.tokens_of(rt, actor, kit_id, limit)])


@router.get("/kits/{kit_id}/commands", response_model=CommandPage, responses=_errors,
            tags=["commands"], summary="The kit's commands and their lifecycle, newest first")
def list_commands(rt: RuntimeDep, actor: ReaderKey, kit_id: str,
                  limit: Annotated[int, Query(ge=1, le=500)] = 50,
                  offset: Annotated[int, Query(ge=0)] = 0) -> CommandPage:
    with rt.db.session() as s:
        kit = actions.kit_in_scope(s, actor, kit_id)
        rows = s.scalars(select(Command).where(Command.kit_id == kit_id)
                         .order_by(Command.seq.desc()).limit(limit).offset(offset)).all()
        return CommandPage(kit_id=kit_id, anomaly_count=kit.anomaly_count or 0,
                           last_anomaly_at=kit.last_anomaly_at,
                           items=[command_out(c) for c in rows])


@router.get("/control/status", response_model=ControlStatus, responses=_errors,
            tags=["commands"], summary="Commands by lifecycle state and anomalies counted")
def control_status(rt: RuntimeDep, actor: ReaderKey) -> ControlStatus:
    with rt.db.session() as s:
        q = select(Command.status, func.count()).join(Kit, Kit.id == Command.kit_id)
        aq = select(func.coalesce(func.sum(Kit.anomaly_count), 0),
                    func.count().filter(Kit.anomaly_count > 0))
        if actor.desco_id is not None:
            q = q.where(Kit.desco_id == actor.desco_id)
            aq = aq.where(Kit.desco_id == actor.desco_id)
        by_status = {st: int(n) for st, n in s.execute(q.group_by(Command.status)).all()}
        total, kits = s.execute(aq).one()
    c = rt.service.counters
    return ControlStatus(commands_by_status=by_status, anomalies_total=int(total),
                         kits_with_anomalies=int(kits),
                         process_counters={"acks": c.acks, "anomalies": c.anomalies,
                                           "bad_messages": dict(c.bad_messages)})
