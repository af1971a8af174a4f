"""/v1/kits and /v1/commands: provisioning, fleet state, support unlocks, command lifecycle."""

from __future__ import annotations

import csv
import dataclasses
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from sqlalchemy import select

from cizo.i18n import N_
from control.api.auth import AdminKey, ReaderKey, RuntimeDep, UnlockKey
from control.api.errors import ApiError
from control.api.idempotency import IdempotencyKey, run_idempotent
from control.api.schemas import (
    AuditOut,
    AuditPage,
    CommandOut,
    ImportRowError,
    KitCreate,
    KitCredentials,
    KitDetail,
    KitImportOut,
    KitPage,
    KitSummary,
    PlanOut,
    Problem,
    UnlockIn,
    UnlockOut,
)
from control.commands.lifecycle import desired_for
from control.fleet import kit_import, kit_list, provisioning
from control.fleet.messages import Refused
from control.ledger import accounts, credit
from control.ledger.models import AuditEntry, Command, Kit
from control.runtime import Runtime
from control.support import actions
from telemetry.errors import InfluxError
from telemetry.influx import InfluxClient

log = logging.getLogger(__name__)

LATEST_COMMANDS = 5
TELEMETRY_TIMEOUT_S = 2.0

router = APIRouter(prefix="/v1", tags=["kits"])

_errors: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem}, 403: {"model": Problem}, 404: {"model": Problem},
}


def command_out(cmd: Command) -> CommandOut:
    return CommandOut(
        id=cmd.id, kit_id=cmd.kit_id, seq=cmd.seq, action=cmd.action,
        credit_until=cmd.credit_until, status=cmd.status, reason=cmd.reason, origin=cmd.origin,
        attempts=cmd.attempts, issued_at=cmd.issued_at, expires_at=cmd.expires_at,
        created_at=cmd.created_at, sent_at=cmd.sent_at, finished_at=cmd.finished_at,
    )


# --- provisioning -----------------------------------------------------------------------


@router.post(
    "/kits", status_code=status.HTTP_201_CREATED, response_model=KitCredentials,
    responses={**_errors, 409: {"model": Problem}, 422: {"model": Problem}},
    summary="Provision a kit (admin); its credentials are returned once",
)
def provision(
    rt: RuntimeDep, actor: AdminKey, body: KitCreate, request: Request,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    def act() -> KitCredentials:
        created = provisioning.provision(
            rt, actor, kit_id=body.kit_id, desco_id=body.desco_id, phone=body.phone,
            plan=(body.plan.deposit_fcfa, body.plan.daily_rate_fcfa,
                  body.plan.total_price_fcfa), deposit_paid=body.deposit_paid,
            region=body.region, kind=body.kind)
        return KitCredentials(**dataclasses.asdict(created))

    return run_idempotent(rt, actor=actor, key=idempotency_key, method="POST",
                          path=request.url.path, body=body.model_dump(mode="json"),
                          status_code=status.HTTP_201_CREATED, action=act)


@router.post(
    "/kits/import", response_model=KitImportOut,
    responses={**_errors, 413: {"model": Problem}, 415: {"model": Problem},
               422: {"model": Problem}},
    openapi_extra={"requestBody": {"required": True, "content": {"text/csv": {
        "schema": {"type": "string"}}}}},
    summary="Provision kits from a CSV file (admin); a row's credentials are returned once",
)
async def import_kits(
    rt: RuntimeDep, actor: AdminKey, request: Request,
    line_offset: Annotated[int, Query(ge=0, le=10_000_000,
                                      description="lines of the file sent before")] = 0,
) -> KitImportOut:
    # refused before it is read: a body larger than the rows a request may carry
    if int(request.headers.get("content-length") or 0) > kit_import.MAX_BYTES:
        raise Refused("file_too_large", 413, limit=kit_import.MAX_ROWS)
    try:
        text = (await request.body()).decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Refused("file_not_csv", 415, reason=str(exc)) from exc
    try:
        report = await run_in_threadpool(kit_import.import_csv, rt, actor, text,
                                         line_offset=line_offset)
    except csv.Error as exc:
        raise Refused("file_not_csv", 422, reason=str(exc)) from exc
    return KitImportOut(
        import_id=report.import_id, rows=report.rows, created=len(report.created),
        unchanged=len(report.unchanged), rejected=len(report.errors),
        credentials=[KitCredentials(**dataclasses.asdict(c)) for c in report.created],
        errors=[ImportRowError(**dataclasses.asdict(e)) for e in report.errors])


@router.get(
    "/kits/imports/{import_id}/errors.csv", response_class=Response,
    responses={**_errors, 200: {"content": {"text/csv": {"schema": {"type": "string"}}},
                                "description": "row, kit_id, code, message"}},
    summary="The refused rows of a kit import, as CSV (admin)",
)
def import_errors(
    rt: RuntimeDep, actor: AdminKey, import_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
) -> Response:
    return Response(kit_import.error_report(rt, actor, import_id), media_type="text/csv",
                    headers={"Content-Disposition":
                             f'attachment; filename="kit-import-{import_id}-errors.csv"'})


# --- reading ----------------------------------------------------------------------------


@router.get("/kits", response_model=KitPage, responses={**_errors, 422: {"model": Problem}},
            summary="List kits: filters, search, sorting, keyset pages")
def list_kits(
    rt: RuntimeDep, actor: ReaderKey,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=512,
                                        description="next_cursor of the page before")] = None,
    sort: kit_list.Sort = "kit_id",
    desc: bool = False,
    desco_id: Annotated[str | None, Query(max_length=64)] = None,
    region: Annotated[str | None, Query(max_length=32)] = None,
    state: kit_list.State | None = None,
    online: bool | None = None,
    overdue_days: Annotated[int | None, Query(ge=0, le=36_500,
                                              description="credit ended at least N days ago")
                            ] = None,
    open_alerts: bool | None = None,
    q: Annotated[str | None, Query(max_length=kit_list.SEARCH_MAX,
                                   description="kit id, account number or phone")] = None,
) -> KitPage:
    f = kit_list.KitFilter(desco_id=desco_id, region=region, state=state, online=online,
                           overdue_days=overdue_days, open_alerts=open_alerts,
                           q=q.strip() if q else None)
    with rt.db.session() as s:
        page = kit_list.list_kits(s, actor, f, now=rt.clock.now(), sort=sort, desc=desc,
                                  limit=limit, cursor=cursor)
        items = [
            KitSummary(
                kit_id=kit.id, desco_id=kit.desco_id, region=kit.region,
                account_number=acct.account_number if acct else None,
                locked=kit.reported_locked,
                credit_until=acct.credit_until if acct else None, online=kit.online,
                last_seen=kit.last_seen, owned=bool(acct and acct.owned),
                commanded_action=kit.commanded_action, kind=kit.kind,
            )
            for kit, acct in page.rows
        ]
    return KitPage(items=items, limit=limit, next_cursor=page.next_cursor)


def last_telemetry(rt: Runtime, kit_id: str) -> dict[str, Any] | None:
    """The kit's latest reading from InfluxDB, or None (logged) if it cannot be had."""
    extra = {"kit_id": kit_id, "payment_id": None}
    try:
        # a short timeout: a slow InfluxDB must not make the kit page slow
        client = InfluxClient.from_settings(rt.settings, timeout_s=TELEMETRY_TIMEOUT_S)
        try:
            reading = client.last_telemetry(kit_id)
        finally:
            client.close()
    except InfluxError as exc:
        log.warning("last telemetry unavailable (InfluxDB): %s", type(exc).__name__,
                    extra=extra)
        return None
    return reading


@router.get("/kits/{kit_id}", response_model=KitDetail, responses=_errors,
            summary="One kit: reported state, credit, money, commands")
def get_kit(rt: RuntimeDep, actor: ReaderKey, kit_id: str) -> KitDetail:
    with rt.db.session() as s:
        kit = actions.kit_in_scope(s, actor, kit_id)
        acct = accounts.account_for_kit(s, kit_id)
        cmds = s.scalars(select(Command).where(Command.kit_id == kit_id)
                         .order_by(Command.seq.desc()).limit(LATEST_COMMANDS)).all()
        plan = accounts.plan_of(acct) if acct else None
        detail = KitDetail(
            kit_id=kit.id, desco_id=kit.desco_id,
            account_number=acct.account_number if acct else None,
            customer_phone=acct.customer_phone if acct else None,
            locked=kit.reported_locked, reported_credit_until=kit.reported_credit_until,
            credit_until=acct.credit_until if acct else None, online=kit.online,
            last_seen=kit.last_seen, fw=kit.fw, protocol_version=kit.protocol_version,
            last_telemetry=None,
            paid_total_fcfa=acct.paid_total_fcfa if acct else 0,
            balance_fcfa=credit.balance_fcfa(plan, accounts.state_of(acct))
            if acct and plan else 0,
            remainder_fcfa=acct.remainder_fcfa if acct else 0,
            owned=bool(acct and acct.owned),
            plan=PlanOut(deposit_fcfa=plan.deposit_fcfa, daily_rate_fcfa=plan.daily_rate_fcfa,
                         total_price_fcfa=plan.total_price_fcfa) if plan else None,
            desired_action=desired_for(acct, rt.clock.now()).action if acct else None,
            commanded_action=kit.commanded_action,
            commanded_credit_until=kit.commanded_credit_until,
            decommissioned_at=kit.decommissioned_at,
            latest_commands=[command_out(c) for c in cmds],
        )
    # outside the transaction: InfluxDB may be slow or away
    detail.last_telemetry = last_telemetry(rt, kit_id)
    return detail


@router.get("/kits/{kit_id}/audit", response_model=AuditPage, responses=_errors,
            summary="Who did what to this kit, newest first")
def kit_audit(
    rt: RuntimeDep, actor: ReaderKey, kit_id: str,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> AuditPage:
    with rt.db.session() as s:
        actions.kit_in_scope(s, actor, kit_id)
        rows = s.scalars(select(AuditEntry).where(AuditEntry.kit_id == kit_id)
                         .order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
                         .limit(limit).offset(offset)).all()
        items = [
            AuditOut(id=e.id, at=e.at, actor=e.actor, role=e.role, action=e.action,
                     desco_id=e.desco_id, kit_id=e.kit_id, reason=e.reason, before=e.before,
                     after=e.after)
            for e in rows
        ]
    return AuditPage(items=items, limit=limit, offset=offset)


@router.get("/commands/{command_id}", response_model=CommandOut, responses=_errors,
            tags=["commands"], summary="A command's lifecycle")
def get_command(rt: RuntimeDep, actor: ReaderKey, command_id: str) -> CommandOut:
    with rt.db.session() as s:
        cmd = s.get(Command, command_id)
        kit = s.get(Kit, cmd.kit_id) if cmd is not None else None
        if cmd is None or kit is None or not actions.in_scope(actor, kit.desco_id):
            raise ApiError(status.HTTP_404_NOT_FOUND, "command_not_found",
                           N_("command {command_id} not found"), command_id=command_id)
        return command_out(cmd)


# --- support unlock ---------------------------------------------------------------------


@router.post(
    "/kits/{kit_id}/unlock", response_model=UnlockOut,
    responses={**_errors, 409: {"model": Problem}, 422: {"model": Problem},
               429: {"model": Problem}},
    summary="Free days on top of paid credit (support; more than 7 days: admin)",
)
def unlock(
    rt: RuntimeDep, actor: UnlockKey, kit_id: str, body: UnlockIn, request: Request,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    def act() -> UnlockOut:
        done = actions.unlock(rt, actor, kit_id, days=body.days, reason=body.reason)
        return UnlockOut(kit_id=kit_id, days=done.days, command_id=done.command_id,
                         credit_until=done.credit_until, before=done.before, after=done.after)

    return run_idempotent(rt, actor=actor, key=idempotency_key, method="POST",
                          path=request.url.path, body=body.model_dump(mode="json"),
                          status_code=status.HTTP_200_OK, action=act)
