"""Open data: anonymised aggregates per region and month, and the repayment health per
DESCO and region, as CSV plus their metadata.

No kit id, account, phone or place finer than the region leaves here. Every cell is built
from at least ``min_households`` households (primary suppression), and because the table
also gives the national total, a month whose column has a suppressed cell has at least one
more suppressed (complementary suppression) so that the suppressed cells together hold at
least ``min_households`` households: total minus the published cells gives only their sum,
never one small cell. ``build_rows``, ``to_csv`` and ``metadata`` are pure; the gathering
of households is in control.fleet.jobs.
"""

from __future__ import annotations

import calendar
import csv
import io
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

COLUMNS = ("region", "month", "kits_active", "energy_delivered_kwh", "payments_fcfa",
           "share_days_with_power")
NATIONAL = "Togo"  # the row that adds up every region of a month
MONTH_FORMAT = "YYYY-MM"


@dataclass(frozen=True, slots=True)
class HouseholdMonth:
    """One household's month (never exported as such)."""

    region: str
    month: str  # YYYY-MM
    days_reported: int  # days with telemetry in the daily tier
    days_powered: int  # of which the kit delivered energy
    energy_wh: float
    paid_fcfa: int


# each measure: who counts for it (its households), and the cells it fills
_MEASURES: tuple[tuple[Callable[[HouseholdMonth], bool], tuple[str, ...]], ...] = (
    (lambda h: h.days_reported > 0,
     ("kits_active", "energy_delivered_kwh", "share_days_with_power")),
    (lambda h: h.paid_fcfa > 0, ("payments_fcfa",)),
)


def _cells(hs: list[HouseholdMonth], columns: tuple[str, ...]) -> dict[str, str]:
    if "payments_fcfa" in columns:
        return {"payments_fcfa": str(sum(h.paid_fcfa for h in hs))}
    days = sum(h.days_reported for h in hs)
    return {"kits_active": str(len(hs)),
            "energy_delivered_kwh": f"{sum(h.energy_wh for h in hs) / 1000:.1f}",
            "share_days_with_power": f"{sum(h.days_powered for h in hs) / days:.3f}"}


def suppressed(counts: dict[str, int], min_households: int) -> set[str]:
    """Which cells of one total's breakdown to leave empty (households per cell).

    Primary: cells from fewer than ``min_households``. Complementary: while the suppressed
    cells are a single cell, or hold fewer than ``min_households`` together, the smallest
    published cell is suppressed too, so the total cannot give back a small cell.
    """
    out = {k for k, n in counts.items() if n < min_households}
    rest = sorted((n, k) for k, n in counts.items() if k not in out)
    while out and rest and (len(out) == 1 or sum(counts[k] for k in out) < min_households):
        out.add(rest.pop(0)[1])
    return out


def build_rows(households: Iterable[HouseholdMonth], min_households: int = 10
               ) -> list[dict[str, str]]:
    """Rows per (region, month) and a national row per month, with cells suppressed."""
    by_month: dict[str, dict[str, list[HouseholdMonth]]] = defaultdict(lambda: defaultdict(list))
    for h in households:
        by_month[h.month][h.region].append(h)
    rows: list[dict[str, str]] = []
    for month, regions in sorted(by_month.items()):
        table = {r: {"region": r, "month": month, **dict.fromkeys(COLUMNS[2:], "")}
                 for r in [*sorted(regions), NATIONAL]}
        for counts_as, columns in _MEASURES:
            members = {r: [h for h in hs if counts_as(h)] for r, hs in regions.items()}
            everyone = [h for hs in members.values() for h in hs]
            hidden = suppressed({r: len(hs) for r, hs in members.items()}, min_households)
            for r, hs in members.items():
                if r not in hidden:
                    table[r].update(_cells(hs, columns))
            if len(everyone) >= min_households:
                table[NATIONAL].update(_cells(everyone, columns))
        rows.extend(table.values())
    return rows


def to_csv(rows: list[dict[str, str]], columns: tuple[str, ...] = COLUMNS) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def from_csv(text: str) -> list[dict[str, str]]:
    """A published file's rows, as ``build_rows`` made them (empty cells: suppressed)."""
    return list(csv.DictReader(io.StringIO(text)))


def cell(row: dict[str, str], column: str) -> int | float | None:
    """One published cell as a number; ``None`` for a suppressed (empty) cell."""
    text = row.get(column, "")
    if text == "":
        return None
    return int(text) if column in ("kits_active", "payments_fcfa") else float(text)


def metadata(month: str, *, min_households: int, licence: str, publisher: str,
             csv_name: str) -> dict[str, Any]:
    """A machine-readable description of one month's file (a Frictionless Table Schema)."""
    return {
        "name": f"cizo-opendata-{month}", "title": f"Solar home kits per region, {month}",
        "path": csv_name, "format": "csv", "encoding": "utf-8", "publisher": publisher,
        "licenses": [{"name": licence}], "temporal": month,
        "schema": {"primaryKey": ["region", "month"], "missingValues": [""], "fields": [
            {"name": "region", "type": "string",
             "description": f"Togo's region, or {NATIONAL} for the whole country"},
            {"name": "month", "type": "yearmonth"},
            {"name": "kits_active", "type": "integer",
             "description": "kits that reported telemetry on at least one day of the month"},
            {"name": "energy_delivered_kwh", "type": "number",
             "description": "load energy the active kits delivered (kWh)"},
            {"name": "payments_fcfa", "type": "integer",
             "description": "mobile-money payments credited in the month (FCFA)"},
            {"name": "share_days_with_power", "type": "number",
             "description": "share of the active kits' reported days with energy delivered"},
        ]},
        "suppression": {
            "min_households": min_households,
            "rule": (f"A cell built from fewer than {min_households} households is empty. "
                     "In a month where a region's cell is empty, further cells (the smallest) "
                     "are emptied until the empty cells of that column are at least two and "
                     f"hold at least {min_households} households together, so the national "
                     "total minus the published regions never gives a small cell back."),
        },
    }


# --- repayment health: the regulator's figures per DESCO and region, published monthly ----

HEALTH_COLUMNS = ("group", "name", "month", "households", "owned", "energy_delivered_kwh_30d",
                  "repayment_rate", "par30", "default_rate")
HEALTH_GROUPS = ("national", "desco", "region")
_HEALTH_INTS = ("households", "owned")


@dataclass(frozen=True, slots=True)
class GroupHealth:
    """One DESCO's, region's or the nation's figures (from the fleet summary)."""

    group: str  # national | desco | region
    name: str
    households: int
    owned: int
    energy_wh_30d: float
    repayment_rate: float | None
    par30: float | None
    default_rate: float | None


def build_health_rows(month: str, groups: Iterable[GroupHealth], min_households: int = 10
                      ) -> list[dict[str, str]]:
    """One row per group, cells empty below ``min_households``: within the DESCOs and
    within the regions, by the same primary and complementary rule as ``build_rows``
    (the national row is their total), so no small group comes back by differencing."""
    groups = list(groups)
    hidden: set[tuple[str, str]] = set()
    for kind in ("desco", "region"):
        # a group without households has nothing to hide (its row stays empty)
        counts = {g.name: g.households for g in groups if g.group == kind and g.households}
        hidden |= {(kind, name) for name in suppressed(counts, min_households)}
    rows = []
    for g in sorted(groups, key=lambda g: (HEALTH_GROUPS.index(g.group), g.name)):
        row = {"group": g.group, "name": g.name, "month": month,
               **dict.fromkeys(HEALTH_COLUMNS[3:], "")}
        if (g.group, g.name) not in hidden and g.households >= min_households:
            row.update(households=str(g.households), owned=str(g.owned),
                       energy_delivered_kwh_30d=f"{g.energy_wh_30d / 1000:.1f}",
                       **{k: "" if v is None else f"{v:.4f}" for k, v in (
                           ("repayment_rate", g.repayment_rate), ("par30", g.par30),
                           ("default_rate", g.default_rate))})
        rows.append(row)
    return rows


def health_cell(row: dict[str, str], column: str) -> int | float | None:
    """One published health cell as a number; ``None`` for a suppressed (empty) cell."""
    text = row.get(column, "")
    if text == "":
        return None
    return int(text) if column in _HEALTH_INTS else float(text)


def health_metadata(month: str, *, min_households: int, licence: str, publisher: str,
                    csv_name: str) -> dict[str, Any]:
    """The health file's description (a Frictionless Table Schema)."""
    rate = "share of the money owed ({}) on the publication day"
    return {
        "name": f"cizo-opendata-health-{month}",
        "title": f"Solar home kits: repayment health per DESCO and region, {month}",
        "path": csv_name, "format": "csv", "encoding": "utf-8", "publisher": publisher,
        "licenses": [{"name": licence}], "temporal": month,
        "schema": {"primaryKey": ["group", "name", "month"], "missingValues": [""], "fields": [
            {"name": "group", "type": "string", "enum": list(HEALTH_GROUPS)},
            {"name": "name", "type": "string",
             "description": "the DESCO's id, Togo's region, or Togo for the whole country"},
            {"name": "month", "type": "yearmonth",
             "description": "the month released (figures as on the publication day)"},
            {"name": "households", "type": "integer", "description": "kits in service"},
            {"name": "owned", "type": "integer", "description": "kits paid off"},
            {"name": "energy_delivered_kwh_30d", "type": "number",
             "description": "load energy the kits delivered over the last 30 days (kWh)"},
            {"name": "repayment_rate", "type": "number",
             "description": "money paid over money due since each sale"},
            {"name": "par30", "type": "number",
             "description": rate.format("portfolio at risk: credit over 30 days behind")},
            {"name": "default_rate", "type": "number",
             "description": rate.format("in default: credit over 90 days behind")},
        ]},
        "suppression": {
            "min_households": min_households,
            "rule": (f"A DESCO's or a region's row built from fewer than {min_households} "
                     "households is empty; further rows (the smallest) are emptied until "
                     "the empty rows are at least two and hold at least "
                     f"{min_households} households together, so the national row minus the "
                     "published ones never gives a small DESCO or region back."),
        },
    }


def month_bounds(month: str) -> tuple[int, int]:
    """``YYYY-MM`` -> [start, end) in unix seconds (UTC)."""
    year, mon = (int(x) for x in month.split("-", 1))
    if not 1 <= mon <= 12:
        raise ValueError(f"bad month {month!r}: use {MONTH_FORMAT}")
    start = calendar.timegm((year, mon, 1, 0, 0, 0))
    nxt = calendar.timegm((year + mon // 12, mon % 12 + 1, 1, 0, 0, 0))
    return start, nxt


def month_of(t: float) -> str:
    """The ``YYYY-MM`` (UTC) of a unix time."""
    y, m = time.gmtime(t)[:2]
    return f"{y:04d}-{m:02d}"


def previous_month(t: float) -> str:
    y, m = time.gmtime(t)[:2]
    return f"{y - (m == 1):04d}-{(m - 2) % 12 + 1:02d}"


class MonthOutOfRange(ValueError):
    """A month the programme has no data for (before it started, or not over yet)."""


def check_month(month: str, first: str, last: str) -> None:
    """``month`` must be a ``YYYY-MM`` between ``first`` and ``last`` (inclusive)."""
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", month):
        raise ValueError(f"bad month {month!r}: use {MONTH_FORMAT}")
    if not first <= month <= last:
        raise MonthOutOfRange(
            f"no open data for {month}: the programme's data covers {first} to {last}")
