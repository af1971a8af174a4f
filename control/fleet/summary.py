"""The fleet page's figures, pre-aggregated: one row per (DESCO, region), so the fleet
page reads a handful of rows, not 300,000 kits (``refresh_fleet_summary``, every
``fleet_summary_interval_s``; ``combine`` adds the rows a caller may see).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

from sqlalchemy import and_, case, delete, func, or_, select
from sqlalchemy.orm import Session

from control.fleet import figures as derived
from control.ledger.db import Database
from control.ledger.models import Account, Alert, FleetSummary, Kit, KitMetrics, LedgerEntry
from telemetry import analytics

log = logging.getLogger(__name__)

DAY = analytics.DAY_S


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
    # an account opened after ``now`` (a refresh racing a sale) owes its deposit, not less
    held = func.floor((now - Account.created_at) / DAY)
    days_held = case((held < 0, 0), else_=held)
    expected = Account.deposit_fcfa + Account.daily_rate_fcfa * days_held
    expected_capped = case((expected > Account.total_price_fcfa, Account.total_price_fcfa),
                           else_=expected)
    outstanding = case((Account.owned, 0),
                       else_=Account.total_price_fcfa - Account.paid_total_fcfa)

    def behind(days: int) -> Any:
        return and_(~Account.owned, or_(
            Account.credit_until < now - days * DAY,
            and_(Account.credit_until.is_(None), Account.created_at < now - days * DAY)))

    # the rate's numerator counts per account at most what was due (figures.paid_towards_due)
    paid_due = case((Account.paid_total_fcfa > expected_capped, expected_capped),
                    else_=Account.paid_total_fcfa)
    for desco, region, paid, due_paid, exp, out, par, dflt in s.execute(
        select(*key, func.sum(Account.paid_total_fcfa), func.sum(paid_due),
               func.sum(expected_capped),
               func.sum(outstanding), func.sum(case((behind(30), outstanding), else_=0)),
               func.sum(case((behind(derived.DEFAULT_AFTER_DAYS), outstanding), else_=0)))
        .select_from(Account).join(Kit, Kit.id == Account.kit_id).where(alive).group_by(*key)
    ).all():
        f = figures[(desco, region)]
        f.update(paid_fcfa=int(paid or 0), paid_due_fcfa=int(due_paid or 0),
                 expected_fcfa=int(exp or 0),
                 outstanding_fcfa=int(out or 0), par30_outstanding_fcfa=int(par or 0),
                 default_outstanding_fcfa=int(dflt or 0))
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
    # every kit, with or without a metrics row (none yet: "unknown"), so the bins sum to kits
    for desco, region, name, n, energy in s.execute(
        select(*key, bucket, func.count(), func.sum(KitMetrics.energy_wh_30d))
        .select_from(Kit).join(KitMetrics, KitMetrics.kit_id == Kit.id, isouter=True)
        .where(alive).group_by(*key, bucket)
    ).all():
        f = figures[(desco, region)]
        f["battery_health"][str(name)] = f["battery_health"].get(str(name), 0) + int(n)
        f["energy_wh_30d"] += float(energy or 0.0)
    for f in figures.values():
        f["battery_health"] = derived.complete_health_bins(f["battery_health"], f["kits"])
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
        "unknown": 0, "paid_fcfa": 0, "paid_due_fcfa": 0, "expected_fcfa": 0,
        "outstanding_fcfa": 0, "par30_outstanding_fcfa": 0, "default_outstanding_fcfa": 0,
        "payments_today_fcfa": 0, "payments_month_fcfa": 0,
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


def current_rows(db: Database, now: float) -> list[FleetSummary]:
    """The pre-aggregated rows; on a first start, before the scheduled job ran, computed
    now so the first page is not empty."""
    with db.session() as s:
        rows = list(s.scalars(select(FleetSummary)))
    if not rows:
        refresh_fleet_summary(db, now)
        with db.session() as s:
            rows = list(s.scalars(select(FleetSummary)))
    return rows


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
    # rows from before paid_due_fcfa existed lack it: the next refresh (a minute) adds it
    total["repayment_rate"] = derived.repayment_rate(total["paid_due_fcfa"],
                                                     total["expected_fcfa"])
    total["battery_health"] = derived.complete_health_bins(total["battery_health"],
                                                           total["kits"])
    # rows from before default_outstanding_fcfa existed count 0 until the next refresh
    total["par30"] = derived.portfolio_share(total["par30_outstanding_fcfa"],
                                             total["outstanding_fcfa"])
    total["default_rate"] = derived.portfolio_share(total["default_outstanding_fcfa"],
                                                    total["outstanding_fcfa"])
    total["open_alerts_total"] = sum(total["open_alerts"].values())
    return total
