"""Scheduled jobs behind the dashboards: fleet summary, analytics -> alerts, rollups.

- ``refresh_fleet_summary`` (every ``fleet_summary_interval_s``): one row of figures per
  (DESCO, region), so the fleet page reads a handful of rows, not 300,000 kits.
- ``run_analytics`` (every ``analytics_interval_s``): reads the hourly tier per batch of
  kits, computes per-kit metrics (telemetry.analytics) and opens alerts for anomalies.
- ``telemetry.rollups.run_rollups`` (every ``rollup_interval_s``; 0: not here).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import and_, case, delete, func, or_, select
from sqlalchemy.orm import Session

from cizo.settings import Settings
from control.ledger.db import Database
from control.ledger.models import Account, Alert, FleetSummary, Kit, KitMetrics, LedgerEntry
from telemetry import analytics, opendata, rollups
from telemetry.errors import InfluxQueryError
from telemetry.influx import InfluxClient, quote_ident, quote_string

log = logging.getLogger(__name__)

DAY = analytics.DAY_S
REGIONS = ("Maritime", "Plateaux", "Centrale", "Kara", "Savanes")
ALERT_STATES = ("open", "acknowledged", "closed")
ALERT_KINDS = ("power_while_locked", "capacity_fading", "pv_below_neighbours", "silent")
ANALYTICS_WINDOW_DAYS = 30
SOLVENCY_WINDOW_DAYS = 90
KIT_BATCH = 200
MIN_NEIGHBOURS = 4


def _utc_month_start(year: int, month: int) -> int:
    import calendar

    return calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0))


# --- fleet summary ------------------------------------------------------------------------


def compute_fleet_summary(s: Session, now: float) -> dict[tuple[str, str], dict[str, Any]]:
    """Figures per (DESCO, region) straight from the ledger (a few GROUP BY queries)."""
    day0 = float(int(now // DAY) * DAY)
    month0 = float(_utc_month_start(*time.gmtime(now)[:2]))
    figures: dict[tuple[str, str], dict[str, Any]] = defaultdict(_empty_figures)
    key = (Kit.desco_id, Kit.region)
    alive = Kit.decommissioned_at.is_(None)
    owned = func.coalesce(Account.owned, False)
    rows = s.execute(
        select(*key, func.count(),
               func.sum(case((Kit.online, 1), else_=0)),
               func.sum(case((owned, 1), else_=0)),
               func.sum(case((and_(~owned, Kit.reported_locked.is_(True)), 1), else_=0)),
               func.sum(case((and_(~owned, Kit.reported_locked.is_(False)), 1), else_=0)))
        .select_from(Kit).join(Account, Account.kit_id == Kit.id, isouter=True)
        .where(alive).group_by(*key)
    ).all()
    for desco, region, total, online, n_owned, locked, unlocked in rows:
        f = figures[(desco, region)]
        f.update(kits=int(total), online=int(online or 0), offline=int(total) - int(online or 0),
                 owned=int(n_owned or 0), locked=int(locked or 0), unlocked=int(unlocked or 0))
        f["unknown"] = f["kits"] - f["owned"] - f["locked"] - f["unlocked"]
    # money: what was paid against what the plan expected by now; PAR30
    days_held = func.floor((now - Account.created_at) / DAY)
    expected = Account.deposit_fcfa + Account.daily_rate_fcfa * days_held
    expected_capped = case((expected > Account.total_price_fcfa, Account.total_price_fcfa),
                           else_=expected)
    outstanding = case((Account.owned, 0),
                       else_=Account.total_price_fcfa - Account.paid_total_fcfa)
    behind = and_(~Account.owned, or_(
        Account.credit_until < now - 30 * DAY,
        and_(Account.credit_until.is_(None), Account.created_at < now - 30 * DAY)))
    for desco, region, paid, exp, out, par in s.execute(
        select(*key, func.sum(Account.paid_total_fcfa), func.sum(expected_capped),
               func.sum(outstanding), func.sum(case((behind, outstanding), else_=0)))
        .select_from(Account).join(Kit, Kit.id == Account.kit_id).where(alive).group_by(*key)
    ).all():
        f = figures[(desco, region)]
        f.update(paid_fcfa=int(paid or 0), expected_fcfa=int(exp or 0),
                 outstanding_fcfa=int(out or 0), par30_outstanding_fcfa=int(par or 0))
    for desco, region, today, month in s.execute(
        select(*key,
               func.sum(case((LedgerEntry.created_at >= day0, LedgerEntry.amount_fcfa),
                             else_=0)),
               func.sum(LedgerEntry.amount_fcfa))
        .select_from(LedgerEntry).join(Account, Account.id == LedgerEntry.account_id)
        .join(Kit, Kit.id == Account.kit_id)
        .where(LedgerEntry.kind == "payment", LedgerEntry.created_at >= month0)
        .group_by(*key)
    ).all():
        f = figures[(desco, region)]
        f.update(payments_today_fcfa=int(today or 0), payments_month_fcfa=int(month or 0))
    bucket = case(
        (KitMetrics.battery_health_pct.is_(None), "unknown"),
        *[(KitMetrics.battery_health_pct >= floor, name)
          for floor, name in analytics.HEALTH_BUCKETS[:-1]],
        else_=analytics.HEALTH_BUCKETS[-1][1])
    for desco, region, name, n, energy in s.execute(
        select(*key, bucket, func.count(), func.sum(KitMetrics.energy_wh_30d))
        .select_from(KitMetrics).join(Kit, Kit.id == KitMetrics.kit_id).where(alive)
        .group_by(*key, bucket)
    ).all():
        f = figures[(desco, region)]
        f["battery_health"][str(name)] = f["battery_health"].get(str(name), 0) + int(n)
        f["energy_wh_30d"] += float(energy or 0.0)
    for desco, region, kind, n in s.execute(
        select(*key, Alert.kind, func.count()).select_from(Alert)
        .join(Kit, Kit.id == Alert.kit_id).where(Alert.state != "closed")
        .group_by(*key, Alert.kind)
    ).all():
        f = figures[(desco, region)]
        f["open_alerts"][str(kind)] = int(n)
    return dict(figures)


def _empty_figures() -> dict[str, Any]:
    return {
        "kits": 0, "online": 0, "offline": 0, "owned": 0, "locked": 0, "unlocked": 0,
        "unknown": 0, "paid_fcfa": 0, "expected_fcfa": 0, "outstanding_fcfa": 0,
        "par30_outstanding_fcfa": 0, "payments_today_fcfa": 0, "payments_month_fcfa": 0,
        "energy_wh_30d": 0.0, "battery_health": {}, "open_alerts": {},
    }


def refresh_fleet_summary(db: Database, now: float) -> int:
    """Recompute and replace the pre-aggregated rows; returns how many were written."""
    with db.session() as s:
        figures = compute_fleet_summary(s, now)
        s.execute(delete(FleetSummary))
        s.add_all(FleetSummary(desco_id=d, region=r, computed_at=now, figures=f)
                  for (d, r), f in figures.items())
    return len(figures)


def combine(rows: list[FleetSummary]) -> dict[str, Any]:
    """Sum the rows a filter selects; rates are computed from the summed parts."""
    total = _empty_figures()
    for row in rows:
        for k, v in row.figures.items():
            if isinstance(v, dict):
                for kk, vv in v.items():
                    total[k][kk] = total[k].get(kk, 0) + vv
            else:
                total[k] += v
    total["repayment_rate"] = (round(total["paid_fcfa"] / total["expected_fcfa"], 4)
                               if total["expected_fcfa"] else None)
    total["par30"] = (round(total["par30_outstanding_fcfa"] / total["outstanding_fcfa"], 4)
                      if total["outstanding_fcfa"] else None)
    total["open_alerts_total"] = sum(total["open_alerts"].values())
    return total


# --- analytics -> metrics and alerts ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finding:
    kit_id: str
    kind: str
    detail: str
    evidence: dict[str, Any]


def _hourly_for(client: InfluxClient, kit_ids: list[str], since: int
                ) -> dict[str, dict[str, np.ndarray[Any, Any]]]:
    cond = " OR ".join(f"{quote_ident('kit_id')} = {quote_string(k)}" for k in kit_ids)
    rows = client.query(
        "SELECT soc_min, soc_first, soc_last, pv_wh, load_wh, n, full_n, locked_load_n "
        f"FROM {quote_ident(rollups.HOURLY_MEASUREMENT)} WHERE ({cond}) AND time >= {since}s "
        f"GROUP BY {quote_ident('kit_id')}")
    per: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        per[r["kit_id"]].append(r)
    out = {}
    for kit_id, rs in per.items():
        rs.sort(key=lambda r: int(r["time"]))
        out[kit_id] = {
            name: np.array([float(r.get(name) or 0.0) for r in rs])
            for name in ("time", "soc_min", "soc_first", "soc_last", "pv_wh", "load_wh", "n",
                         "full_n", "locked_load_n")
        }
    return out


def _solvency(s: Session, acct: Account, now: float, daily_load: list[tuple[float, float]] | None
              ) -> tuple[float, dict[str, Any]]:
    start = max(acct.created_at, now - SOLVENCY_WINDOW_DAYS * DAY)
    entries = s.execute(
        select(LedgerEntry.created_at, LedgerEntry.kind, LedgerEntry.credit_until_before,
               LedgerEntry.credit_until_after)
        .where(LedgerEntry.account_id == acct.id).order_by(LedgerEntry.created_at)
    ).all()
    payments = [(at, None if kind == "deposit" else float(before or 0.0),
                 None if after is None else float(after))
                for at, kind, before, after in entries]
    inputs = analytics.solvency_inputs(payments=payments, window_start=start, now=now,
                                       daily_load_wh=daily_load)
    return analytics.solvency_score(inputs), asdict(inputs)


def run_analytics(settings: Settings, db: Database, now: float) -> list[Finding]:
    """Per-kit metrics and anomaly alerts from the hourly tier and the ledger."""
    tiers = rollups.Tiers.from_settings(settings)
    since = int(now - ANALYTICS_WINDOW_DAYS * DAY)
    with db.session() as s:
        kits = s.execute(select(Kit.id, Kit.region, Kit.last_seen, Kit.created_at)
                         .where(Kit.decommissioned_at.is_(None)).order_by(Kit.id)).all()
    hourly: dict[str, dict[str, np.ndarray[Any, Any]]] = {}
    with rollups.client_for(settings, tiers.hourly) as client:
        ids = [k.id for k in kits]
        for i in range(0, len(ids), KIT_BATCH):
            hourly.update(_hourly_for(client, ids[i:i + KIT_BATCH], since))
    findings: list[Finding] = []
    metrics: dict[str, dict[str, Any]] = {}
    profiles: list[np.ndarray[Any, Any]] = []
    profiled: list[str] = []
    by_region: dict[str, list[str]] = defaultdict(list)
    for kit in kits:
        h = hourly.get(kit.id)
        silent = analytics.silent_for_days(kit.last_seen, now)
        if (silent is not None and silent > settings.silent_alert_days) or (
                silent is None and now - kit.created_at > settings.silent_alert_days * DAY):
            findings.append(Finding(kit.id, "silent",
                                    f"no report for more than {settings.silent_alert_days:g} days",
                                    {"silent_days": None if silent is None else round(silent, 1)}))
        if h is None:
            metrics[kit.id] = {}
            continue
        by_region[kit.region].append(kit.id)
        days, daily_load = analytics.sum_by_day(h["time"], h["load_wh"])
        size = analytics.sizing(h["time"], h["soc_min"], h["full_n"] / np.maximum(h["n"], 1))
        cap_days, cap = analytics.capacity_by_day(h["time"], h["soc_first"], h["soc_last"],
                                                  h["pv_wh"], h["load_wh"])
        fade = analytics.capacity_fade(cap_days, cap)
        metrics[kit.id] = {
            "energy_wh_30d": float(h["load_wh"].sum()), "battery_health_pct": fade.health_pct,
            "sizing": size.verdict, "daily_load": list(zip(days.tolist(), daily_load.tolist(),
                                                           strict=True)),
        }
        profiles.append(analytics.hourly_profile(h["time"], h["load_wh"]))
        profiled.append(kit.id)
        locked_hours = int((h["locked_load_n"] > 0).sum())
        if locked_hours >= 2:
            findings.append(Finding(kit.id, "power_while_locked",
                                    f"power drawn while locked in {locked_hours} hours",
                                    {"hours": locked_hours,
                                     "readings": int(h["locked_load_n"].sum())}))
        if fade.fast:
            findings.append(Finding(
                kit.id, "capacity_fading",
                f"capacity fading {100 * (fade.fade_per_year or 0):.0f} %/year "
                f"(expected about {100 * analytics.EXPECTED_FADE_PER_YEAR:.0f} %)",
                {"fade_per_year": fade.fade_per_year, "health_pct": fade.health_pct}))
    # PV against neighbours: daylight hours in which the battery was not full
    for region, members in by_region.items():
        if len(members) < MIN_NEIGHBOURS + 1:
            continue
        hours = sorted({int(t) for k in members for t in hourly[k]["time"]})
        col = {t: j for j, t in enumerate(hours)}
        m = np.full((len(members), len(hours)), np.nan)
        for i, k in enumerate(members):
            h = hourly[k]
            hod = (h["time"] % DAY) // 3600
            ok = (h["full_n"] == 0) & (hod >= 9) & (hod < 15)
            for t, v in zip(h["time"][ok], h["pv_wh"][ok], strict=True):
                m[i, col[int(t)]] = v
        ratio = analytics.pv_neighbour_ratio(m)
        for k, r in zip(members, ratio, strict=True):
            if np.isfinite(r) and r < analytics.PV_NEIGHBOUR_RATIO:
                findings.append(Finding(k, "pv_below_neighbours",
                                        f"PV at {100 * r:.0f} % of neighbours' in {region}",
                                        {"ratio": round(float(r), 3), "region": region}))
    if profiled:
        patterns = analytics.household_patterns(np.vstack(profiles))
        for i, k in enumerate(profiled):
            metrics[k]["load_pattern"] = patterns.name_of(i)
    _store(db, now, metrics, findings)
    log.info("analytics: %d kits, %d findings", len(kits), len(findings))
    return findings


def _store(db: Database, now: float, metrics: dict[str, dict[str, Any]],
           findings: list[Finding]) -> None:
    with db.session() as s:
        accounts = {a.kit_id: a for a in s.scalars(select(Account))}
        existing = {m.kit_id: m for m in s.scalars(select(KitMetrics))}
        for kit_id, m in metrics.items():
            acct = accounts.get(kit_id)
            score, inputs = (_solvency(s, acct, now, m.get("daily_load"))
                             if acct is not None else (None, None))
            row = existing.get(kit_id) or KitMetrics(kit_id=kit_id)
            row.computed_at = now
            row.energy_wh_30d = m.get("energy_wh_30d")
            row.battery_health_pct = m.get("battery_health_pct")
            row.sizing = m.get("sizing")
            row.load_pattern = m.get("load_pattern")
            row.solvency_score = score
            row.solvency_inputs = inputs
            s.add(row)
        kit_desco = dict(s.execute(select(Kit.id, Kit.desco_id)).all())
        for f in findings:
            alert = s.scalars(select(Alert).where(Alert.kit_id == f.kit_id,
                                                  Alert.kind == f.kind,
                                                  Alert.state != "closed")).first()
            if alert is None:
                s.add(Alert(kit_id=f.kit_id, desco_id=kit_desco.get(f.kit_id, ""), kind=f.kind,
                            state="open", detail=f.detail, evidence=f.evidence,
                            opened_at=now, last_seen_at=now))
                log.info("alert opened: %s", f.kind, extra={"kit_id": f.kit_id})
            else:
                alert.last_seen_at = now
                alert.detail = f.detail
                alert.evidence = f.evidence


# --- scheduling ---------------------------------------------------------------------------


def add_jobs(scheduler: BackgroundScheduler, settings: Settings, db: Database,
             clock_now: Any) -> None:
    """Add the summary, analytics and rollup jobs to the control service's scheduler."""

    def summary() -> None:
        try:
            refresh_fleet_summary(db, clock_now())
        except Exception:
            log.exception("fleet summary failed; the next run will retry")

    def rollup_job() -> None:
        try:
            rollups.run_rollups(settings, clock_now())
        except Exception:
            log.exception("rollup failed; the next run will retry")

    def analytics_job() -> None:
        try:
            run_analytics(settings, db, clock_now())
        except Exception:
            log.exception("analytics failed; the next run will retry")

    scheduler.add_job(summary, "interval", seconds=settings.fleet_summary_interval_s,
                      id="fleet_summary", max_instances=1, coalesce=True,
                      next_run_time=_soon())
    if settings.rollup_interval_s > 0:  # else a `cizo rollup --every` process runs it
        scheduler.add_job(rollup_job, "interval", seconds=settings.rollup_interval_s,
                          id="rollup", max_instances=1, coalesce=True)
    scheduler.add_job(analytics_job, "interval", seconds=settings.analytics_interval_s,
                      id="analytics", max_instances=1, coalesce=True)


def _soon() -> Any:
    import datetime as dt

    return dt.datetime.now(dt.UTC)


# --- open data ----------------------------------------------------------------------------


def opendata_households(settings: Settings, db: Database, month: str
                        ) -> list[opendata.HouseholdMonth]:
    """Each kit's month (from the daily tier and the ledger), ready for aggregation."""
    start, end = opendata.month_bounds(month)
    with db.session() as s:
        region_of = dict(s.execute(select(Kit.id, Kit.region)).all())
        paid = dict(s.execute(
            select(Account.kit_id, func.sum(LedgerEntry.amount_fcfa))
            .select_from(LedgerEntry).join(Account, Account.id == LedgerEntry.account_id)
            .where(LedgerEntry.kind == "payment", LedgerEntry.created_at >= start,
                   LedgerEntry.created_at < end)
            .group_by(Account.kit_id)).all())
    tiers = rollups.Tiers.from_settings(settings)
    with rollups.client_for(settings, tiers.daily) as client:
        try:
            rows = client.query(
                "SELECT sum(load_wh) AS wh, sum(powered) AS powered, count(powered) AS days "
                f"FROM {quote_ident(rollups.DAILY_MEASUREMENT)} "
                f"WHERE time >= {start}s AND time < {end}s GROUP BY {quote_ident('kit_id')}")
        except InfluxQueryError as exc:
            if "database not found" not in exc.error:
                raise
            # a fresh deployment before the first rollup: no energy figures yet, not an error
            log.info("open data %s: daily tier %s does not exist yet", month, tiers.daily)
            rows = []
    daily = {r["kit_id"]: r for r in rows}
    out = []
    for kit_id, region in region_of.items():
        d = daily.get(kit_id, {})
        out.append(opendata.HouseholdMonth(
            region=region, month=month, days_reported=int(d.get("days") or 0),
            days_powered=int(d.get("powered") or 0), energy_wh=float(d.get("wh") or 0.0),
            paid_fcfa=int(paid.get(kit_id) or 0)))
    return out
