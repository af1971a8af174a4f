"""The regulator's national view: every DESCO's repayment health, kits and energy per
region, and the month-by-month trend (docs/analytics.md, "The regulator's view").

Two sources, never a kit: the fleet summary's pre-aggregated rows (one per DESCO and
region, at most a minute old) for the live figures, and the published open-data files for
the map and the trend, so those figures are the published cells themselves. A DESCO or a
region with fewer than ``min_households`` kits shows its count and no money figures: a
rate over a handful of accounts would tell about those accounts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from control.fleet import summary
from control.ledger.models import FleetSummary
from telemetry import opendata

OPEN_COLUMNS = ("kits_active", "energy_delivered_kwh", "payments_fcfa",
                "share_days_with_power")
TREND_MONTHS = 24


def _health(rows: Sequence[FleetSummary], min_households: int) -> dict[str, Any]:
    f = summary.combine(list(rows))
    shown = f["kits"] >= min_households
    return {"kits": f["kits"], "owned": f["owned"] if shown else None,
            "energy_wh_30d": round(f["energy_wh_30d"], 1) if shown else None,
            "repayment_rate": f["repayment_rate"] if shown else None,
            "par30": f["par30"] if shown else None,
            "default_rate": f["default_rate"] if shown else None,
            "suppressed": not shown}


def live_figures(rows: Sequence[FleetSummary], regions: Iterable[str], min_households: int
                 ) -> dict[str, Any]:
    """National totals, and per DESCO and per region, from the fleet summary's rows."""
    national = summary.combine(list(rows))
    descos = sorted({r.desco_id for r in rows})
    return {
        "households": national["kits"],
        "energy_wh_30d": round(national["energy_wh_30d"], 1),
        "repayment_rate": national["repayment_rate"], "par30": national["par30"],
        "default_rate": national["default_rate"],
        "descos": [{"desco_id": d, **_health([r for r in rows if r.desco_id == d],
                                             min_households)} for d in descos],
        "regions": [{"region": g, **_health([r for r in rows if r.region == g],
                                            min_households)} for g in regions],
    }


def _open_cells(row: Mapping[str, str]) -> dict[str, int | float | None]:
    return {c: opendata.cell(dict(row), c) for c in OPEN_COLUMNS}


def published_figures(rows: Sequence[Mapping[str, str]], regions: Iterable[str]
                      ) -> dict[str, Any]:
    """The map's figures (the latest published month, per region) and the trend (each
    published month's national row); a suppressed cell stays ``None``."""
    months = sorted({r["month"] for r in rows})
    trend = [{"month": r["month"], **_open_cells(r)}
             for r in sorted(rows, key=lambda r: r["month"]) if r["region"] == opendata.NATIONAL]
    latest = months[-1] if months else None
    by_region = {r["region"]: r for r in rows if r["month"] == latest}
    return {
        "month": latest,
        "regions": [{"region": g, **(_open_cells(by_region[g]) if g in by_region
                                     else dict.fromkeys(OPEN_COLUMNS))} for g in regions],
        "trend": trend[-TREND_MONTHS:],
    }


def national_view(rows: Sequence[FleetSummary], published: Sequence[Mapping[str, str]],
                  regions: Sequence[str], min_households: int, now: float,
                  computed_at: float | None) -> dict[str, Any]:
    return {
        "live": live_figures(rows, regions, min_households),
        "open_data": published_figures(published, regions),
        "computed_at": computed_at,
        "age_s": None if computed_at is None else max(0.0, now - computed_at),
        "min_households": min_households,
    }
