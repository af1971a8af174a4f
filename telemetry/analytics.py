"""What the programme wants to learn from each household: energy and the battery's life,
the fleet a day at a time, anomalies. Pure numpy. Habits (daily load patterns) are in
``telemetry.habits``, the solvency score in ``telemetry.solvency``.

No I/O here: callers (control.fleet.jobs, telemetry.rollups, telemetry.opendata) fetch
arrays from InfluxDB and the ledger and pass them in, so every rule below is tested on
hand-made arrays. Times are UTC unix seconds; Lomé is on UTC, so the hour of day of a
timestamp is its local hour. docs/analytics.md explains each rule and threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

DAY_S = 86_400
HOUR_S = 3_600

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
Values = Sequence[float] | npt.NDArray[Any]  # any numeric array-like input

EVENING_HOURS = (18, 24)  # when the household lights up: the battery must carry it
DAYLIGHT_HOURS = (8, 16)  # when a full battery means PV is being thrown away
EMPTY_SOC_PCT = 5.0
FULL_SOC_PCT = 98.0
UNDERSIZED_SHARE = 0.5  # the battery empties on most evenings
OVERSIZED_SHARE = 0.5  # PV is curtailed on most days...
OVERSIZED_MIN_SOC_PCT = 70.0  # ...and the battery never goes below this on a typical day
WASTE_HOURS_PER_DAY = 3  # daylight hours with a full battery that make a "wasting" day
LOCKED_LOAD_W = 1.0  # more than this drawn while locked: bypass or tamper
EXPECTED_FADE_PER_YEAR = 0.05  # LiFePO4 loses a few percent a year
FAST_FADE_PER_YEAR = 0.20  # four times that is "fading fast"
MIN_FADE_SPAN_DAYS = 7
PV_NEIGHBOUR_RATIO = 0.4  # below 40 % of what neighbours' panels gave on the same days



def as_float(values: Values) -> FloatArray:
    out: FloatArray = np.asarray(values, dtype=np.float64)
    return out


# --- energy -------------------------------------------------------------------------------


def counter_deltas(counter: Values) -> FloatArray:
    """Energy between consecutive readings of a lifetime counter (Wh).

    A counter that goes down was reset (reboot, firmware swap): the energy since the reset
    is the new value itself, never a negative delta. The first reading has no delta (0).
    """
    c = as_float(counter)
    if c.size == 0:
        return c
    d = np.diff(c, prepend=c[0])
    reset = d < 0
    d[reset] = c[reset]
    return d


def daily_energy(
    ts: Values, counter: Values
) -> tuple[IntArray, FloatArray]:
    """Energy per UTC day from a lifetime counter: (day start times, Wh per day)."""
    t = as_float(ts)
    if t.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    order = np.argsort(t, kind="stable")
    t = t[order]
    d = counter_deltas(as_float(counter)[order])
    days = (t // DAY_S).astype(np.int64)
    uniq, idx = np.unique(days, return_inverse=True)
    sums: FloatArray = np.bincount(idx, weights=d, minlength=uniq.size).astype(np.float64)
    return uniq * DAY_S, sums


# --- the fleet, one day at a time ----------------------------------------------------------
#
# Every per-kit figure below is computed for all kits at once on 2-D arrays (kits x hours),
# one UTC day at a time: a day's hourly rollups reduce to a few numbers per kit (DayStats),
# and the 30-day figures (Window) come from those numbers alone. So the job never holds more
# than one day of hourly points, and a nightly run could keep the per-day numbers as state.

HOURLY_FIELDS = ("soc_min", "soc_first", "soc_last", "pv_wh", "load_wh", "n", "full_n",
                 "locked_load_n")
PV_HOURS = (9, 15)  # midday hours compared with the neighbours' panels
PV_SLOTS = PV_HOURS[1] - PV_HOURS[0]
MIN_CAPACITY_DROP_PCT = 10.0  # a day needs this much discharge for a capacity estimate
HOURS = np.arange(24)
_EVENING = (EVENING_HOURS[0] <= HOURS) & (EVENING_HOURS[1] > HOURS)
_DAYLIGHT = (DAYLIGHT_HOURS[0] <= HOURS) & (DAYLIGHT_HOURS[1] > HOURS)


@dataclass(frozen=True, slots=True)
class DayHours:
    """One UTC day of hourly rollups for many kits: every field is (kits, 24).

    ``present`` says which hours have a rollup; a field missing from a present hour is 0,
    as are absent hours. ``prev_present``/``prev_soc_last`` describe the hour before 00:00
    (the previous day's 23:00), which links the first hour's discharge to the day before.
    """

    present: BoolArray
    fields: dict[str, FloatArray]
    prev_present: BoolArray
    prev_soc_last: FloatArray

    def rows(self, sl: slice) -> DayHours:
        """Some kits' hours (views, not copies)."""
        return DayHours(self.present[sl], {k: v[sl] for k, v in self.fields.items()},
                        self.prev_present[sl], self.prev_soc_last[sl])


def blank_day(kits: int) -> DayHours:
    """A day with no hour seen yet, for ``place_hours`` to fill."""
    return DayHours(np.zeros((kits, 24), dtype=bool),
                    {name: np.zeros((kits, 24)) for name in HOURLY_FIELDS},
                    np.zeros(kits, dtype=bool), np.zeros(kits))


def place_hours(day: DayHours, kit: Values, t: Values, values: FloatArray, *,
                day_start: int) -> None:
    """Put rollup rows (kit index, hour start, ``HOURLY_FIELDS`` columns; NaN = missing)
    on the day's grid, in place, so a reader can fill it a chunk at a time.

    A row of the hour before 00:00 (the previous day's 23:00) becomes the link that ties the
    day's first hour to the day before; other hours outside the day are ignored.
    """
    hour = ((as_float(t) - day_start) // HOUR_S).astype(np.int64)
    k = np.asarray(kit, dtype=np.int64)
    v = np.nan_to_num(np.asarray(values, dtype=np.float64).reshape(len(k), -1), nan=0.0)
    link = hour == -1
    day.prev_present[k[link]] = True
    day.prev_soc_last[k[link]] = v[link, HOURLY_FIELDS.index("soc_last")]
    ok = (hour >= 0) & (hour < 24)
    k, hr = k[ok], hour[ok]
    day.present[k, hr] = True
    for j, name in enumerate(HOURLY_FIELDS):
        day.fields[name][k, hr] = v[ok, j]


def day_hours(kit: IntArray, t: Values, values: dict[str, FloatArray], *, kits: int,
              day_start: int) -> DayHours:
    """Scatter one day's rollup rows (kit index, hour start, fields; NaN = missing) on a
    grid; a row of the hour before 00:00 links the day's first hour (``place_hours``)."""
    day = blank_day(kits)
    place_hours(day, kit, t, np.column_stack([as_float(values[f]) for f in HOURLY_FIELDS])
                if len(kit) else np.zeros((0, len(HOURLY_FIELDS))), day_start=day_start)
    return day


@dataclass(frozen=True, slots=True)
class DayStats:
    """What one day contributes to each kit's 30-day figures (all arrays over kits)."""

    reported: BoolArray  # any hour with a rollup
    load_wh: FloatArray
    min_soc: FloatArray  # lowest state of charge of the day (inf: no hour)
    evening: BoolArray  # an evening hour was seen
    empty_evening: BoolArray  # ... and the battery reached EMPTY_SOC_PCT then
    daylight: BoolArray
    wasting: BoolArray  # WASTE_HOURS_PER_DAY daylight hours with a full battery
    capacity_wh: FloatArray  # usable capacity seen in dark hours (NaN: too little discharge)
    locked_hours: IntArray  # hours that drew power while locked
    locked_readings: IntArray
    profile_sum: FloatArray  # (kits, 24) load per hour of day
    profile_n: FloatArray  # (kits, 24) 1 where the hour was seen
    pv: FloatArray  # (kits, PV_SLOTS) midday PV with a battery not full (NaN: unusable)


def day_stats(h: DayHours, *, rows: int = 50_000) -> DayStats:
    """Reduce one day of hourly rollups (kits x 24) to the numbers the window needs.

    Kits are taken ``rows`` at a time: the intermediate (kits x 24) arrays stay small.
    """
    n = h.present.shape[0]
    if n <= rows:
        return _day_stats(h)
    parts = [_day_stats(h.rows(slice(a, a + rows))) for a in range(0, n, rows)]
    return DayStats(**{f.name: np.concatenate([getattr(p, f.name) for p in parts])
                       for f in fields(DayStats)})


def _day_stats(h: DayHours) -> DayStats:
    p = h.present
    f = h.fields
    load = np.where(p, f["load_wh"], 0.0)
    smin = f["soc_min"]
    full = p & (f["full_n"] / np.maximum(f["n"], 1) >= 0.5)
    evening = p & _EVENING
    daylight = p & _DAYLIGHT
    # discharge per hour, from the previous hour's last reading when that hour exists
    last = f["soc_last"]
    prev_last = np.concatenate([h.prev_soc_last[:, None], last[:, :-1]], axis=1)
    prev_ok = np.concatenate([h.prev_present[:, None], p[:, :-1]], axis=1)
    drop = np.where(prev_ok, prev_last - last, f["soc_first"] - last)
    dark = p & (f["pv_wh"] < 0.5) & (drop > 0) & (f["load_wh"] > 0)
    dark_load = np.where(dark, f["load_wh"], 0.0).sum(axis=1)
    dropped = np.where(dark, drop, 0.0).sum(axis=1)
    enough = dropped >= MIN_CAPACITY_DROP_PCT
    with np.errstate(invalid="ignore", divide="ignore"):
        capacity = np.where(enough, dark_load / (dropped / 100.0), np.nan)
    hod = slice(*PV_HOURS)
    pv_ok = p[:, hod] & (f["full_n"][:, hod] == 0)
    return DayStats(
        reported=_any(p),
        load_wh=load.sum(axis=1),
        min_soc=np.where(p, smin, np.inf).min(axis=1),
        evening=_any(evening),
        empty_evening=_any(evening & (smin <= EMPTY_SOC_PCT)),
        daylight=_any(daylight),
        wasting=(daylight & full).sum(axis=1) >= WASTE_HOURS_PER_DAY,
        capacity_wh=capacity,
        locked_hours=(p & (f["locked_load_n"] > 0)).sum(axis=1).astype(np.int64),
        locked_readings=np.where(p, f["locked_load_n"], 0.0).sum(axis=1).astype(np.int64),
        profile_sum=load,
        profile_n=p.astype(np.float64),
        pv=np.where(pv_ok, f["pv_wh"][:, hod], np.nan),
    )


def _any(x: BoolArray) -> BoolArray:
    return np.asarray(x.any(axis=1), dtype=bool)


def loo_median(m: FloatArray) -> tuple[FloatArray, IntArray]:
    """Per column, the median of the *other* rows' finite values, for every row.

    Returns (medians, count of the others' finite values); NaN where there are none.
    One sort per column, O(n log n), instead of a median per row and column.
    """
    x = np.asarray(m, dtype=np.float64)
    n, cols = x.shape
    finite = np.isfinite(x)
    count = finite.sum(axis=0)  # per column
    order = np.argsort(np.where(finite, x, np.inf), axis=0, kind="stable")
    s = np.take_along_axis(np.where(finite, x, np.inf), order, axis=0)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(n)[:, None].repeat(cols, axis=1), axis=0)
    others = count[None, :] - finite.astype(np.int64)  # finite values besides this row
    lo = (others - 1) // 2
    hi = others // 2
    # a position in the others' sorted values is one further on past this row's own rank
    own = np.where(finite, rank, n)
    lo_pos = np.clip(np.where(lo >= own, lo + 1, lo), 0, n - 1)
    hi_pos = np.clip(np.where(hi >= own, hi + 1, hi), 0, n - 1)
    col = np.arange(cols)[None, :]
    a = s[lo_pos, col]
    b = s[hi_pos, col]
    with np.errstate(invalid="ignore"):
        med = np.where(others > 0, np.where(lo == hi, a, (a + b) / 2.0), np.nan)
    return med, others.astype(np.int64)


def pv_ratios(pv: FloatArray) -> FloatArray:
    """Each kit's midday PV over its region's other kits' median, hour by hour (NaN: none).

    ``pv`` is (kits of one region, hours); the 30-day ratio is the median of these.
    """
    med, others = loo_median(pv)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(np.isfinite(pv) & (others > 0), pv / med, np.nan)
    out: FloatArray = np.where(np.isfinite(r), r, np.nan)
    return out


def row_median(x: FloatArray, *, overwrite: bool = False) -> FloatArray:
    """Median of each row's non-NaN values (NaN for a row without any), like np.median.

    ``overwrite``: sort ``x`` itself (a float64 array the caller no longer needs).
    """
    if overwrite:
        x.sort(axis=1)  # NaN sort last
        a = x
    else:
        a = np.sort(np.asarray(x, dtype=np.float64), axis=1)
    n = np.isfinite(a).sum(axis=1)
    lo = np.clip((n - 1) // 2, 0, None)
    hi = np.clip(n // 2, 0, a.shape[1] - 1)
    rows = np.arange(a.shape[0])
    first = a[rows, lo]
    second = a[rows, np.minimum(hi, np.maximum(n - 1, 0))]
    out: FloatArray = np.where(n > 0, np.where(n % 2 == 1, first, (first + second) / 2.0),
                               np.nan)
    return out


def pv_ratios_by_group(pv: FloatArray, groups: IntArray) -> FloatArray:
    """``pv_ratios`` within each group of kits (a region): neighbours are the same region's."""
    out = np.full(pv.shape, np.nan)
    order = np.argsort(groups, kind="stable")
    bounds = np.flatnonzero(np.diff(groups[order])) + 1
    for members in np.split(order, bounds):
        if members.size:
            out[members] = pv_ratios(pv[members])
    return out


@dataclass(frozen=True, slots=True)
class Window:
    """The window's figures for every kit (arrays over kits)."""

    reported: BoolArray
    energy_wh: FloatArray
    daily_load_wh: FloatArray  # (kits, days), NaN on days without a report
    sizing: list[str]  # ok | undersized | oversized | unknown
    health_pct: FloatArray  # NaN: fewer than 3 capacity estimates
    fade_per_year: FloatArray  # NaN: none
    fade_span_days: FloatArray
    locked_hours: IntArray
    locked_readings: IntArray
    profiles: FloatArray  # (kits, 24) mean load per hour of day, NaN with no data
    pv_ratio: FloatArray  # median over the window's hours of the ratio to the neighbours

    @property
    def fading_fast(self) -> BoolArray:
        with np.errstate(invalid="ignore"):
            out: BoolArray = ((self.fade_span_days >= MIN_FADE_SPAN_DAYS)
                              & (self.fade_per_year > FAST_FADE_PER_YEAR))
        return out


class WindowBuilder:
    """Adds up DayStats day by day (oldest first); ``finish`` gives the Window.

    Counts and the load profile are running sums; only what needs every day (daily load,
    daily lowest charge, capacity estimates, PV ratios) is kept per day, a few numbers per kit.
    """

    def __init__(self, kits: int) -> None:
        self.kits = kits
        self.counts = {k: np.zeros(kits, dtype=np.int64) for k in (
            "evening", "empty_evening", "daylight", "wasting", "locked_hours",
            "locked_readings")}
        self.profile_sum = np.zeros((kits, 24))
        self.profile_n = np.zeros((kits, 24))
        self.days: dict[str, list[npt.NDArray[Any]]] = {
            k: [] for k in ("reported", "load_wh", "min_soc", "capacity_wh", "pv_ratio")}

    def add(self, day: DayStats, pv_ratio: FloatArray) -> None:
        for k, total in self.counts.items():
            total += getattr(day, k)
        self.profile_sum += day.profile_sum
        self.profile_n += day.profile_n
        for k, kept in self.days.items():
            kept.append(pv_ratio if k == "pv_ratio" else getattr(day, k))

    def _stack(self, name: str) -> npt.NDArray[Any]:
        """The days side by side (kits, days[ x width]); each day's array is let go as it is
        copied in, so the stack never needs twice its size."""
        kept: list[npt.NDArray[Any] | None] = list(self.days.pop(name))
        if not kept or kept[0] is None:
            return np.zeros((self.kits, 0))
        width = 1 if kept[0].ndim == 1 else kept[0].shape[1]
        out = np.empty((self.kits, len(kept) * width), dtype=kept[0].dtype)
        for j, day in enumerate(kept):
            kept[j] = None
            assert day is not None
            out[:, j * width:(j + 1) * width] = day.reshape(self.kits, width)
        return out

    def finish(self) -> Window:
        """The window (once: the per-day arrays are given up as it is built)."""
        c = self.counts
        reported = self._stack("reported").astype(bool)
        load = self._stack("load_wh")
        ev, dl = c["evening"], c["daylight"]
        empty_share = np.where(ev > 0, c["empty_evening"] / np.maximum(ev, 1), 0.0)
        waste_share = np.where(dl > 0, c["wasting"] / np.maximum(dl, 1), 0.0)
        min_soc = row_median(np.where(reported, self._stack("min_soc"), np.nan))
        any_report = _any(reported)
        with np.errstate(invalid="ignore"):
            oversized = (waste_share >= OVERSIZED_SHARE) & (min_soc >= OVERSIZED_MIN_SOC_PCT)
        verdict = np.where(empty_share >= UNDERSIZED_SHARE, "undersized",
                           np.where(oversized, "oversized", "ok"))
        verdict = np.where(any_report, verdict, "unknown")
        health, fade, span = capacity_fade(self._stack("capacity_wh"))
        with np.errstate(invalid="ignore", divide="ignore"):
            profiles = np.where(self.profile_n > 0,
                                self.profile_sum / np.maximum(self.profile_n, 1), np.nan)
        return Window(
            reported=any_report, energy_wh=load.sum(axis=1),
            daily_load_wh=np.where(reported, load, np.nan),
            sizing=[str(v) for v in verdict],
            health_pct=health, fade_per_year=fade, fade_span_days=span,
            locked_hours=c["locked_hours"], locked_readings=c["locked_readings"],
            profiles=profiles, pv_ratio=row_median(self._stack("pv_ratio"), overwrite=True),
        )


def capacity_fade(capacity: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Health, fitted fade per year and span (days) from daily capacity (kits, days; NaN gaps).

    Health = median of the latest estimates over the first ones (n = a third, 1..7 days);
    the fade rate is a least-squares line through the estimates. Fewer than 3: NaN.
    """
    c = np.asarray(capacity, dtype=np.float64)
    ok = np.isfinite(c)
    cnt = ok.sum(axis=1)
    rank = np.cumsum(ok, axis=1) - 1
    n = np.clip(cnt // 3, 1, 7)[:, None]
    first = row_median(np.where(ok & (rank < n), c, np.nan))
    latest = row_median(np.where(ok & (rank >= cnt[:, None] - n), c, np.nan))
    day = np.arange(c.shape[1], dtype=np.float64)[None, :]
    first_day = np.where(ok, day, np.inf).min(axis=1, initial=np.inf)[:, None]
    x = np.where(ok, day - first_day, 0.0)
    y = np.where(ok, c, 0.0)
    k = cnt.astype(np.float64)
    sx, sy = x.sum(axis=1), y.sum(axis=1)
    sxx, sxy = (x * x).sum(axis=1), (x * y).sum(axis=1)
    enough = cnt >= 3
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (k * sxy - sx * sy) / (k * sxx - sx * sx)
        intercept = (sy - slope * sx) / k
        health = np.round(np.minimum(100.0 * latest / first, 100.0), 1)
        fade = np.where(intercept > 0, -slope * 365.0 / intercept, np.nan)
    span = np.where(ok, x, 0.0).max(axis=1, initial=0.0)
    nan = np.full(c.shape[0], np.nan)
    return (np.where(enough, health, nan), np.where(enough, fade, nan),
            np.where(enough, span, 0.0))


HEALTH_BUCKETS = ((90.0, "90-100"), (80.0, "80-90"), (70.0, "70-80"), (0.0, "<70"))


def health_bucket(health_pct: float | None) -> str:
    if health_pct is None or math.isnan(health_pct):
        return "unknown"
    for floor, name in HEALTH_BUCKETS:
        if health_pct >= floor:
            return name
    return "<70"


# --- anomalies ----------------------------------------------------------------------------


def silent_for_days(last_seen: float | None, now: float) -> float | None:
    return None if last_seen is None else max(0.0, (now - last_seen) / DAY_S)
