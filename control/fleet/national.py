"""The regulator's national view: every DESCO's repayment health, kits and energy per
region, and the month-by-month trend (docs/analytics.md, "The regulator's view").

Every figure is a cell of the published open data, never a kit: the health file (the
nation, each DESCO and each region, from the fleet summary's rows on the publication day)
for the tiles and the DESCO table, and the monthly files per region for the map and the
trend. A DESCO or a region with fewer than ``min_households`` kits is an empty row there,
with complementary suppression (``opendata.suppressed``).
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


def health_groups(rows: Sequence[FleetSummary], regions: Iterable[str]
                  ) -> list[opendata.GroupHealth]:
    """The nation, each DESCO and each region, from the fleet summary's rows: what the
    monthly release publishes as the health file (``opendata.build_health_rows``)."""
    def one(group: str, name: str, part: list[FleetSummary]) -> opendata.GroupHealth:
        f = summary.combine(part)
        return opendata.GroupHealth(group, name, f["kits"], f["owned"], f["energy_wh_30d"],
                                    f["repayment_rate"], f["par30"], f["default_rate"])

    return [one("national", opendata.NATIONAL, list(rows)),
            *(one("desco", d, [r for r in rows if r.desco_id == d])
              for d in sorted({r.desco_id for r in rows})),
            *(one("region", g, [r for r in rows if r.region == g]) for g in regions)]


def published_health(rows: Sequence[Mapping[str, str]], desco_id: str | None
                     ) -> dict[str, Any]:
    """The latest published health file's rows: the nation, the DESCOs (only its own for
    a DESCO-scoped key) and the regions; an empty cell stays ``None``."""
    month = max((r["month"] for r in rows), default=None)
    latest = [r for r in rows if r["month"] == month]

    def figures(r: Mapping[str, str]) -> dict[str, Any]:
        cells = {c: opendata.health_cell(dict(r), c) for c in opendata.HEALTH_COLUMNS[3:]}
        return {"name": r["name"], **cells, "suppressed": cells["households"] is None}

    national = next((figures(r) for r in latest if r["group"] == "national"), None)
    return {
        "month": month,
        "national": national or {"name": opendata.NATIONAL,
                                 **dict.fromkeys(opendata.HEALTH_COLUMNS[3:]),
                                 "suppressed": True},
        "descos": [figures(r) for r in latest
                   if r["group"] == "desco" and desco_id in (None, r["name"])],
        "regions": [figures(r) for r in latest if r["group"] == "region"],
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


def national_view(health: Sequence[Mapping[str, str]],
                  published: Sequence[Mapping[str, str]], regions: Sequence[str],
                  min_households: int, desco_id: str | None) -> dict[str, Any]:
    return {
        "health": published_health(health, desco_id),
        "open_data": published_figures(published, regions),
        "min_households": min_households,
    }
