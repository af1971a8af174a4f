"""/v1/dashboard, /v1/alerts, /v1/opendata: what the built-in dashboard pages read.

National aggregates (fleet summary, open data) accept the ``regulator`` role besides the
DESCO staff roles; everything about one kit needs a staff role. A DESCO-scoped key only
ever sees its own DESCO, whatever filter it asks for.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, status
from fastapi.responses import PlainTextResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from cizo.i18n import N_
from control.api.auth import (
    AggregateReaderKey,
    CurrentKey,
    ReaderKey,
    RequireRole,
    RuntimeDep,
)
from control.api.errors import ApiError
from control.api.kits import command_out
from control.fleet import jobs, readings, summary, timeline, timeline_sources
from control.ledger import accounts as ledger
from control.ledger.accounts import Actor
from control.ledger.models import (
    Alert,
    Command,
    Kit,
    KitMetrics,
    LedgerEntry,
    Payment,
)
from telemetry import opendata
from telemetry.errors import InfluxError, InfluxUnavailable

log = logging.getLogger(__name__)

router = APIRouter(tags=["dashboard"])

# National aggregates: the "regulator" may read these and nothing per kit.
AggregateKey = AggregateReaderKey
StaffKey = Annotated[Actor, Depends(RequireRole("operator", "support"))]

MAX_POINTS = 400


def _alert_out(a: Alert) -> dict[str, Any]:
    return {"id": a.id, "kit_id": a.kit_id, "desco_id": a.desco_id, "kind": a.kind,
            "state": a.state, "detail": a.detail, "evidence": a.evidence,
            "opened_at": a.opened_at, "last_seen_at": a.last_seen_at,
            "acknowledged_at": a.acknowledged_at, "acknowledged_by": a.acknowledged_by,
            "closed_at": a.closed_at, "closed_by": a.closed_by}


def _scope(actor: Actor, desco_id: str | None) -> str | None:
    if actor.desco_id is not None:
        return actor.desco_id
    return desco_id


# What the pages offer, each named after the endpoint that does it. A page shows a control
# only when /v1/dashboard/me says the key may: it offers what the API admits, no more.
PAGE_ACTIONS = {
    "unlock": ("POST", "/v1/kits/{kit_id}/unlock"),
    "alerts": ("GET", "/v1/alerts"),
    "alert_change": ("POST", "/v1/alerts/{alert_id}/{action}"),
    "suspense": ("GET", "/v1/suspense"),
    "propose": ("POST", "/v1/suspense/{payment_id}/links"),
    "decide": ("POST", "/v1/suspense/links/{link_id}/approve"),
    "export_kits": ("GET", "/v1/exports/kits.csv"),
    "export_payments": ("GET", "/v1/exports/payments.csv"),
    "export_commands": ("GET", "/v1/exports/commands.csv"),
}


@router.get("/v1/dashboard/me", summary="Who this key is and what the pages may offer it")
def me(actor: CurrentKey, request: Request) -> dict[str, Any]:
    roles = request.app.state.roles  # control/api/app.py: from every router's endpoints
    may = {name: actor.role in roles[f"{method} {path}"]
           for name, (method, path) in PAGE_ACTIONS.items()}
    return {"name": actor.name, "role": actor.role, "desco_id": actor.desco_id,
            "can_unlock": may["unlock"], "may": may}


@router.get("/v1/dashboard/fleet", summary="Fleet figures, pre-aggregated (at most a minute old)")
def fleet(
    rt: RuntimeDep, actor: AggregateKey,
    desco_id: Annotated[str | None, Query(max_length=64)] = None,
    region: Annotated[str | None, Query(max_length=32)] = None,
) -> dict[str, Any]:
    desco = _scope(actor, desco_id)
    rows = summary.current_rows(rt.db, rt.clock.now())
    visible = [r for r in rows if actor.desco_id is None or r.desco_id == actor.desco_id]
    chosen = [r for r in visible if (desco is None or r.desco_id == desco)
              and (region is None or r.region == region)]
    figures = summary.combine(chosen)
    computed_at = min((r.computed_at for r in rows), default=None)
    figures.update(
        computed_at=computed_at,
        age_s=None if computed_at is None else max(0.0, rt.clock.now() - computed_at),
        filters={"desco_id": desco, "region": region},
        descos=sorted({r.desco_id for r in visible}),
        regions=list(jobs.REGIONS),
    )
    return figures


def _kit(s: Session, actor: Actor, kit_id: str) -> Kit:
    kit = s.get(Kit, kit_id)
    if kit is None or (actor.desco_id is not None and actor.desco_id != kit.desco_id):
        raise ApiError(status.HTTP_404_NOT_FOUND, "kit_not_found", N_("kit {kit_id} not found"),
                       kit_id=kit_id)
    return kit


@router.get("/v1/dashboard/kits/{kit_id}",
            summary="One kit's page: payments, commands, alerts, analytics and solvency")
def kit_page(rt: RuntimeDep, actor: ReaderKey, kit_id: str) -> dict[str, Any]:
    with rt.db.session() as s:
        kit = _kit(s, actor, kit_id)
        acct = ledger.account_for_kit(s, kit_id)
        entries = [] if acct is None else [
            {"id": e.id, "kind": e.kind, "amount_fcfa": e.amount_fcfa, "days": e.days,
             "created_at": e.created_at, "credit_until_after": e.credit_until_after,
             "payment_id": e.payment_id}
            for e in s.scalars(select(LedgerEntry).where(LedgerEntry.account_id == acct.id)
                               .order_by(LedgerEntry.created_at.desc()).limit(100))]
        payments = [] if acct is None else [
            {"id": p.id, "provider": p.provider, "status": p.status,
             "amount_fcfa": p.amount_fcfa, "requested_fcfa": p.requested_fcfa,
             "network": p.network, "created_at": p.created_at, "credited_at": p.credited_at}
            for p in s.scalars(select(Payment).where(Payment.account_id == acct.id)
                               .order_by(Payment.created_at.desc()).limit(100))]
        commands = [command_out(c).model_dump() for c in s.scalars(
            select(Command).where(Command.kit_id == kit_id).order_by(Command.seq.desc())
            .limit(50))]
        alerts = [_alert_out(a) for a in s.scalars(
            select(Alert).where(Alert.kit_id == kit_id).order_by(Alert.opened_at.desc()))]
        m = s.get(KitMetrics, kit_id)
        out: dict[str, Any] = {
            "kit_id": kit.id, "desco_id": kit.desco_id, "region": kit.region,
            "online": kit.online, "last_seen": kit.last_seen, "locked": kit.reported_locked,
            "owned": bool(acct and acct.owned),
            "credit_until": acct.credit_until if acct else None,
            "paid_total_fcfa": acct.paid_total_fcfa if acct else 0,
            "total_price_fcfa": acct.total_price_fcfa if acct else 0,
            "ledger": entries, "payments": payments, "commands": commands, "alerts": alerts,
            "metrics": None if m is None else {
                "computed_at": m.computed_at, "energy_wh_30d": m.energy_wh_30d,
                "battery_health_pct": m.battery_health_pct, "load_pattern": m.load_pattern,
                "sizing": m.sizing, "solvency_score": m.solvency_score,
                "solvency_inputs": m.solvency_inputs,
            },
        }
    return out


@router.get("/v1/dashboard/kits/{kit_id}/telemetry",
            summary="State of charge, PV and load over the last hours (for the charts)")
def kit_telemetry(
    rt: RuntimeDep, actor: ReaderKey, kit_id: str,
    hours: Annotated[int, Query(ge=1, le=24 * 31)] = 72,
) -> dict[str, Any]:
    with rt.db.session() as s:
        _kit(s, actor, kit_id)
    now = int(rt.clock.now())
    step = max(600, (hours * 3600 // MAX_POINTS) // 60 * 60)
    try:
        rows = readings.series(rt.settings, kit_id, start=now - hours * 3600, end=now,
                              step_s=step)
    except InfluxError as exc:
        log.warning("kit telemetry unavailable: %s", exc, extra={"kit_id": kit_id})
        raise ApiError(status.HTTP_503_SERVICE_UNAVAILABLE, "telemetry_unavailable",
                       N_("telemetry store unavailable; retry later")) from exc
    points = [{"t": int(r["time"]), "soc": _round(r.get("soc")), "pv_w": _round(r.get("pv_w")),
               "load_w": _round(r.get("load_w"))} for r in rows]
    return {"kit_id": kit_id, "step_s": step, "hours": hours, "points": points}


@router.get("/v1/kits/{kit_id}/timeline", tags=["kits"],
            summary="One kit's payments, commands, support actions, alerts and telemetry gaps "
                    "in one time order, newest first")
def kit_timeline(
    rt: RuntimeDep, actor: ReaderKey, kit_id: str,
    hours: Annotated[int, Query(ge=1, le=24 * 31)] = 72,
    limit: Annotated[int, Query(ge=1, le=500)] = 200,
) -> dict[str, Any]:
    now = int(rt.clock.now())
    start = now - hours * 3600
    with rt.db.session() as s:
        # no reading is owed before the kit joined the fleet
        joined = int(_kit(s, actor, kit_id).created_at)
        events = timeline_sources.database_events(s, kit_id, since=start, limit=limit)
    # outside the transaction: InfluxDB may be slow or away
    gaps = timeline_sources.gap_events(rt.settings, kit_id, start=min(now, max(start, joined)),
                                       end=now)
    items = timeline.merge(events, gaps or [], limit=limit)
    return {"kit_id": kit_id, "hours": hours, "telemetry_checked": gaps is not None,
            "items": [e.as_dict() for e in items]}


def _round(v: Any) -> float | None:
    return None if v is None else round(float(v), 2)


@router.get("/v1/alerts", tags=["alerts"], summary="Alerts, newest first")
def list_alerts(
    rt: RuntimeDep, actor: ReaderKey,
    state: Annotated[str | None, Query(pattern="^(open|acknowledged|closed)$")] = None,
    kit_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    with rt.db.session() as s:
        q = select(Alert).order_by(Alert.opened_at.desc(), Alert.id.desc()).limit(limit)
        if state:
            q = q.where(Alert.state == state)
        if kit_id:
            q = q.where(Alert.kit_id == kit_id)
        if actor.desco_id is not None:
            q = q.where(Alert.desco_id == actor.desco_id)
        return {"items": [_alert_out(a) for a in s.scalars(q)]}


_NEXT = {"acknowledge": ("acknowledged", {"open"}),
         "close": ("closed", {"open", "acknowledged"})}


@router.post("/v1/alerts/{alert_id}/{action}", tags=["alerts"],
             summary="Acknowledge or close an alert (audited)")
def change_alert(
    rt: RuntimeDep, actor: StaffKey, alert_id: int,
    action: Annotated[str, Path(pattern="^(acknowledge|close)$")],
) -> dict[str, Any]:
    new_state, allowed_from = _NEXT[action]
    now = rt.clock.now()
    with rt.db.session() as s:
        alert = s.get(Alert, alert_id)
        if alert is None or (actor.desco_id is not None and actor.desco_id != alert.desco_id):
            raise ApiError(status.HTTP_404_NOT_FOUND, "alert_not_found",
                           N_("alert {alert_id} not found"), alert_id=alert_id)
        if alert.state not in allowed_from:
            raise ApiError(status.HTTP_409_CONFLICT, "alert_state",
                           N_("alert is {state}; cannot {action}"), state=alert.state,
                           action=action)
        before = alert.state
        alert.state = new_state
        if new_state == "acknowledged":
            alert.acknowledged_at, alert.acknowledged_by = now, actor.name
        else:
            alert.closed_at, alert.closed_by = now, actor.name
        ledger.audit(s, actor=actor, action=f"alert.{action}", now=now, kit_id=alert.kit_id,
                     desco_id=alert.desco_id, before={"state": before},
                     after={"state": new_state, "alert_id": alert.id, "kind": alert.kind})
        return _alert_out(alert)


@router.get("/v1/opendata/{month}.csv", tags=["opendata"], response_class=PlainTextResponse,
            # document the media type actually sent (schemathesis checks it)
            responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}},
                       404: {"description": "a month outside the programme's data"}},
            summary="Anonymised aggregates per region for one month (YYYY-MM)")
def opendata_csv(
    rt: RuntimeDep, actor: AggregateKey,
    month: Annotated[str, Path(pattern=r"^\d{4}-\d{2}$")],
) -> PlainTextResponse:
    try:
        opendata.check_month(month, rt.settings.programme_start_month,
                             opendata.month_of(rt.clock.now()))
    except opendata.MonthOutOfRange as exc:
        raise ApiError(status.HTTP_404_NOT_FOUND, "month_out_of_range",
                       N_("no open data for this month"), detail=str(exc)) from exc
    except ValueError as exc:
        raise ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, "month_invalid",
                       N_("the month is not valid (YYYY-MM)"), detail=str(exc)) from exc
    started = time.monotonic()
    try:
        households = jobs.opendata_households(rt.settings, rt.db, month)
    except InfluxUnavailable as exc:
        raise ApiError(status.HTTP_503_SERVICE_UNAVAILABLE, "telemetry_unavailable",
                       N_("InfluxDB is unavailable; try again later")) from exc
    rows = opendata.build_rows(households, rt.settings.opendata_min_households)
    log.info("open data %s: %d rows in %.2f s", month, len(rows), time.monotonic() - started)
    return PlainTextResponse(opendata.to_csv(rows), media_type="text/csv")
