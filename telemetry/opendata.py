"""Open data: anonymised aggregates per region and month, as CSV.

No kit id, account, phone or place finer than the region leaves here, and every cell is
built from at least ``min_households`` households: a cell from fewer is left empty
(suppressed), so no household's figures can be read off the table. ``build_rows`` and
``to_csv`` are pure; ``gather`` reads the ledger and the daily tier.
"""

from __future__ import annotations

import calendar
import csv
import io
from collections import defaultdict
from dataclasses import dataclass

COLUMNS = ("region", "month", "kits_active", "energy_delivered_kwh", "payments_fcfa",
           "share_days_with_power")


@dataclass(frozen=True, slots=True)
class HouseholdMonth:
    """One household's month (never exported as such)."""

    region: str
    month: str  # YYYY-MM
    days_reported: int  # days with telemetry in the daily tier
    days_powered: int  # of which the kit delivered energy
    energy_wh: float
    paid_fcfa: int


def build_rows(households: list[HouseholdMonth], min_households: int = 10
               ) -> list[dict[str, str]]:
    """One row per (region, month); a cell from fewer than ``min_households`` is empty."""
    groups: dict[tuple[str, str], list[HouseholdMonth]] = defaultdict(list)
    for h in households:
        groups[(h.region, h.month)].append(h)
    rows = []
    for (region, month), hs in sorted(groups.items()):
        active = [h for h in hs if h.days_reported > 0]
        payers = [h for h in hs if h.paid_fcfa > 0]
        row = {"region": region, "month": month, "kits_active": "",
               "energy_delivered_kwh": "", "payments_fcfa": "", "share_days_with_power": ""}
        if len(active) >= min_households:
            row["kits_active"] = str(len(active))
            row["energy_delivered_kwh"] = f"{sum(h.energy_wh for h in active) / 1000:.1f}"
            days = sum(h.days_reported for h in active)
            row["share_days_with_power"] = f"{sum(h.days_powered for h in active) / days:.3f}"
        if len(payers) >= min_households:
            row["payments_fcfa"] = str(sum(h.paid_fcfa for h in payers))
        rows.append(row)
    return rows


def to_csv(rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def month_bounds(month: str) -> tuple[int, int]:
    """``YYYY-MM`` -> [start, end) in unix seconds (UTC)."""
    year, mon = (int(x) for x in month.split("-", 1))
    if not 1 <= mon <= 12:
        raise ValueError(f"bad month {month!r}: use YYYY-MM")
    start = calendar.timegm((year, mon, 1, 0, 0, 0))
    nxt = calendar.timegm((year + mon // 12, mon % 12 + 1, 1, 0, 0, 0))
    return start, nxt
