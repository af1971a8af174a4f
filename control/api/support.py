"""Issue 5: support actions (lock, set credit end, swap, repossess, keypad tokens), secret
rotation, and the command lifecycle / anomalies, each write audited.

Unlocking stays at ``POST /v1/kits/{kit_id}/unlock`` (control/api/kits.py).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control.api.auth import AdminKey, ReaderKey, RuntimeDep, SupportKey, UnlockKey
from control.api.idempotency import IdempotencyKey, run_idempotent
from control.api.kits import FREE_DAYS_WITHOUT_ADMIN, _kit_or_404, command_out
from control.api.schemas import CommandOut, KitCredentials, Problem, ReasonIn
from control.commands import lifecycle as commands
from control.commands import tokens
from control.ledger import accounts as ledger
from control.ledger.accounts import Actor
from control.ledger.models import Account, Command, Kit, KitToken
from control.payments import receipts as notify
from control.runtime import Runtime
from control.support import actions as support

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["support"])
DAY_S = 86_400

_errors: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem}, 403: {"model": Problem}, 404: {"model": Problem},
    409: {"model": Problem}, 422: {"model": Problem},
}


class CreditUntilIn(ReasonIn):
    credit_until: int = Field(ge=0, le=4_102_444_800, description="unix seconds (UTC)")


class SwapIn(ReasonIn):
    new_kit_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")


class KeypadIn(ReasonIn):
    keypad_only: bool


class TokenIn(ReasonIn):
    send_sms: bool = True


class ActionOut(BaseModel):
    kit_id: str
    action: str
    command_id: str | None = Field(description="the command it issued (see /v1/commands)")
    before: dict[str, Any]
    after: dict[str, Any]


class SwapOut(BaseModel):
    old_kit_id: str
    command_id: str | None
    credentials: KitCredentials


class TokenOut(BaseModel):
    id: int
    kit_id: str
    count: int
    token: str
    token_type: str
    value_days: int | None
    credit_until: int | None
    chain_until: int | None
    payment_id: int | None
    reason: str | None
    created_by: str
    created_at: float


class TokenPage(BaseModel):
    items: list[TokenOut]


class CommandPage(BaseModel):
    kit_id: str
    anomaly_count: int
    last_anomaly_at: float | None
    items: list[CommandOut]


class ControlStatus(BaseModel):
    commands_by_status: dict[str, int]
    anomalies_total: int
    kits_with_anomalies: int
    process_counters: dict[str, Any]


def _token_out(t: KitToken) -> TokenOut:
    return TokenOut(id=t.id, kit_id=t.kit_id, count=t.count, token=t.token,
                    token_type=t.token_type, value_days=t.value_days,
                    credit_until=t.credit_until, chain_until=t.chain_until,
                    payment_id=t.payment_id, reason=t.reason, created_by=t.created_by,
                    created_at=t.created_at)


def _locked_pair(s: Session, actor: Actor, kit_id: str) -> tuple[Kit, Account]:
    commands.sqlite_write_lock(s)  # SQLite ignores FOR UPDATE: one writer from here on
    _kit_or_404(s, actor, kit_id)
    kit = s.scalars(select(Kit).where(Kit.id == kit_id).with_for_update()
                    .execution_options(populate_existing=True)).one()
    if kit.decommissioned_at is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"kit {kit_id} is decommissioned")
    acct = ledger.account_for_kit(s, kit_id, for_update=True)
    if acct is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"kit {kit_id} has no account")
    return kit, acct


def _after_commit(rt: Runtime, command_id: str | None, kit_id: str) -> None:
    if command_id is None:
        return
    try:
        rt.service.publish([command_id])
    except Exception:
        log.exception("publishing command %s failed; the sweep will retry", command_id,
                      extra={"kit_id": kit_id, "command_id": command_id})


def _conflict(exc: Exception) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, detail=str(exc))


def _credit_action(rt: Runtime, actor: Actor, kit_id: str, name: str,
                   change_fn: Any) -> ActionOut:
    with rt.db.session() as s:
        kit, acct = _locked_pair(s, actor, kit_id)
        try:
            change: support.Change = change_fn(s, kit, acct)
        except support.SupportError as exc:
            raise _conflict(exc) from exc
        cmd = rt.service.converge_kit(s, kit_id, origin="support")
        cid = cmd.id if cmd is not None else None
        tok = _token_if_unreachable(rt, s, kit, acct, actor, change_reason=name)
        token_id = tok.id if tok is not None else None
    _after_commit(rt, cid, kit_id)
    if token_id is not None:
        notify.send_token(rt, kit_id, token_id)
    log.info("support %s by %s", name, actor.name, extra={"kit_id": kit_id, "command_id": cid})
    return ActionOut(kit_id=kit_id, action=name, command_id=cid, before=change.before,
                     after=change.after)


def _token_if_unreachable(rt: Runtime, s: Session, kit: Kit, acct: Account, actor: Actor,
                          change_reason: str) -> KitToken | None:
    if not tokens.wants_token(kit, rt.clock.now(), rt.settings.keypad_offline_after_s):
        return None
    try:
        # a staff action: support reads the code out for entry at once, so it may shorten
        return tokens.issue_token(s, kit=kit, box=rt.box, credit_until=acct.credit_until,
                                  owned=acct.owned, now=rt.clock.now(), created_by=actor.name,
                                  reason=change_reason, staff=True)
    except tokens.TokenError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc


def _idem(rt: Runtime, actor: Actor, key: str | None, request: Request, body: BaseModel,
          action: Any) -> Response:
    return run_idempotent(rt, actor=actor, key=key, method="POST", path=request.url.path,
                          body=body.model_dump(mode="json"), status_code=status.HTTP_200_OK,
                          action=action)


@router.post("/kits/{kit_id}/lock", response_model=ActionOut, responses=_errors,
             summary="End the credit now: the kit locks (support), audited")
def lock(rt: RuntimeDep, actor: SupportKey, kit_id: str, body: ReasonIn, request: Request,
         idempotency_key: IdempotencyKey = None) -> Response:
    now = rt.clock.now()
    return _idem(rt, actor, idempotency_key, request, body, lambda: _credit_action(
        rt, actor, kit_id, "lock", lambda s, kit, acct: support.lock_now(
            s, kit=kit, acct=acct, actor=actor, reason=body.reason, now=now)))


@router.post("/kits/{kit_id}/set-credit-until", response_model=ActionOut,
             responses={**_errors, 429: {"model": Problem}},
             summary="Set the end of credit (support; more than 7 days beyond today: admin)")
def set_credit_until(rt: RuntimeDep, actor: UnlockKey, kit_id: str, body: CreditUntilIn,
                     request: Request, idempotency_key: IdempotencyKey = None) -> Response:
    now = rt.clock.now()
    with rt.db.session() as s:
        _kit_or_404(s, actor, kit_id)
        acct = ledger.account_for_kit(s, kit_id)
        current = acct.credit_until if acct is not None and acct.credit_until else int(now)
    granted = body.credit_until - max(int(now), current)
    if granted > FREE_DAYS_WITHOUT_ADMIN * DAY_S and actor.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            detail=f"more than {FREE_DAYS_WITHOUT_ADMIN} free days needs "
                                   "the admin role")
    return _idem(rt, actor, idempotency_key, request, body, lambda: _credit_action(
        rt, actor, kit_id, "set_credit_until", lambda s, kit, acct: support.set_credit_until(
            s, kit=kit, acct=acct, until=body.credit_until, actor=actor, reason=body.reason,
            now=now)))


@router.post("/kits/{kit_id}/repossess", response_model=ActionOut, responses=_errors,
             summary="Lock for good and close the account (support), audited")
def repossess(rt: RuntimeDep, actor: SupportKey, kit_id: str, body: ReasonIn,
              request: Request, idempotency_key: IdempotencyKey = None) -> Response:
    now = rt.clock.now()
    return _idem(rt, actor, idempotency_key, request, body, lambda: _credit_action(
        rt, actor, kit_id, "repossess", lambda s, kit, acct: support.repossess(
            s, kit=kit, acct=acct, actor=actor, reason=body.reason, now=now)))


@router.post("/kits/{kit_id}/swap", response_model=SwapOut, responses=_errors,
             summary="Replace a faulty kit: the account moves to a new serial (support)")
def swap(rt: RuntimeDep, actor: SupportKey, kit_id: str, body: SwapIn, request: Request,
         idempotency_key: IdempotencyKey = None) -> Response:
    def act() -> SwapOut:
        now = rt.clock.now()
        with rt.db.session() as s:
            kit, acct = _locked_pair(s, actor, kit_id)
            try:
                done = support.swap(s, old=kit, acct=acct, new_kit_id=body.new_kit_id,
                                    box=rt.box, actor=actor, reason=body.reason, now=now)
            except support.SupportError as exc:
                raise _conflict(exc) from exc
            cmd = rt.service.converge_kit(s, body.new_kit_id, origin="support")
            cid = cmd.id if cmd is not None else None
        rt.service.clear_retained(kit_id)
        _after_commit(rt, cid, body.new_kit_id)
        log.info("kit swapped by %s", actor.name, extra={"kit_id": kit_id, "command_id": cid})
        c = done.new_kit
        return SwapOut(old_kit_id=kit_id, command_id=cid, credentials=KitCredentials(
            kit_id=c.kit_id, account_number=c.account_number, desco_id=c.desco_id,
            mqtt_username=c.mqtt_username, mqtt_password=c.mqtt_password,
            command_secret=c.command_secret))

    return _idem(rt, actor, idempotency_key, request, body, act)


@router.post("/kits/{kit_id}/rotate-secret", response_model=CommandOut, responses=_errors,
             summary="Rotate the kit's command secret (admin): a signed rotate with a nonce")
def rotate_secret(rt: RuntimeDep, actor: AdminKey, kit_id: str) -> CommandOut:
    now = rt.clock.now()
    with rt.db.session() as s:
        _kit_or_404(s, actor, kit_id)
        kit = s.scalars(select(Kit).where(Kit.id == kit_id).with_for_update()).one()
        if kit.decommissioned_at is not None:
            raise HTTPException(status.HTTP_409_CONFLICT,
                                detail=f"kit {kit_id} is decommissioned")
        if commands.rotation_pending(s, kit):
            raise HTTPException(status.HTTP_409_CONFLICT,
                                detail="a rotation is already waiting for the kit's ack")
        cmd = commands.issue_rotate(s, kit=kit, box=rt.box, now=now,
                                    ttl_s=rt.settings.command_ttl_s)
        ledger.audit(s, actor=actor, action="kit.rotate_secret", now=now, kit_id=kit_id,
                     desco_id=kit.desco_id, reason="secret rotation",
                     after={"command_id": cmd.id, "seq": cmd.seq})
        out = command_out(cmd)
    _after_commit(rt, out.id, kit_id)
    return out


@router.post("/kits/{kit_id}/keypad", response_model=ActionOut, responses=_errors,
             summary="Flag a kit keypad-only (tokens for every payment) or not (support)")
def set_keypad(rt: RuntimeDep, actor: SupportKey, kit_id: str, body: KeypadIn) -> ActionOut:
    now = rt.clock.now()
    with rt.db.session() as s:
        kit, acct = _locked_pair(s, actor, kit_id)
        before = support.kit_snapshot(kit, acct) | {"keypad_only": kit.keypad_only}
        kit.keypad_only = body.keypad_only
        after = support.kit_snapshot(kit, acct) | {"keypad_only": kit.keypad_only}
        ledger.audit(s, actor=actor, action="kit.keypad", now=now, kit_id=kit_id,
                     desco_id=kit.desco_id, reason=body.reason, before=before, after=after)
    return ActionOut(kit_id=kit_id, action="keypad", command_id=None, before=before,
                     after=after)


@router.post("/kits/{kit_id}/tokens", response_model=TokenOut, responses=_errors,
             summary="Issue a keypad token for the account's current credit (support)")
def issue_token(rt: RuntimeDep, actor: SupportKey, kit_id: str, body: TokenIn) -> TokenOut:
    now = rt.clock.now()
    with rt.db.session() as s:
        kit, acct = _locked_pair(s, actor, kit_id)
        try:
            tok = tokens.issue_token(s, kit=kit, box=rt.box, credit_until=acct.credit_until,
                                     owned=acct.owned, now=now, created_by=actor.name,
                                     reason=body.reason, resync=True)
        except tokens.TokenError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                                detail=str(exc)) from exc
        assert tok is not None  # resync always yields a token
        ledger.audit(s, actor=actor, action="kit.token", now=now, kit_id=kit_id,
                     desco_id=kit.desco_id, reason=body.reason,
                     after={"count": tok.count, "token_type": tok.token_type,
                            "value_days": tok.value_days, "chain_until": tok.chain_until})
        out = _token_out(tok)
    if body.send_sms:
        notify.send_token(rt, kit_id, out.id)
    return out


@router.get("/kits/{kit_id}/tokens", response_model=TokenPage, responses=_errors,
            summary="Keypad tokens issued to the kit, newest first (to read out on the phone)")
def list_tokens(rt: RuntimeDep, actor: SupportKey, kit_id: str,
                limit: Annotated[int, Query(ge=1, le=500)] = 50) -> TokenPage:
    with rt.db.session() as s:
        _kit_or_404(s, actor, kit_id)
        rows = s.scalars(select(KitToken).where(KitToken.kit_id == kit_id)
                         .order_by(KitToken.count.desc()).limit(limit)).all()
        return TokenPage(items=[_token_out(t) for t in rows])


@router.get("/kits/{kit_id}/commands", response_model=CommandPage, responses=_errors,
            tags=["commands"], summary="The kit's commands and their lifecycle, newest first")
def list_commands(rt: RuntimeDep, actor: ReaderKey, kit_id: str,
                  limit: Annotated[int, Query(ge=1, le=500)] = 50,
                  offset: Annotated[int, Query(ge=0)] = 0) -> CommandPage:
    with rt.db.session() as s:
        kit = _kit_or_404(s, actor, kit_id)
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
