"""What the programme wants to learn from each household: energy, habits, solvency. Pure numpy.

No I/O here: callers (control.fleet.jobs, telemetry.rollups, telemetry.opendata) fetch
arrays from InfluxDB and the ledger and pass them in, so every rule below is tested on
hand-made arrays. Times are UTC unix seconds; Lomé is on UTC, so the hour of day of a
timestamp is its local hour. docs/analytics.md explains each rule and threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

DAY_S = 86_400
HOUR_S = 3_600

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
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
USED_DAY_WH = 20.0  # a day with at least this much load energy counts as "used"

# the solvency score's weights (docs/analytics.md): they sum to 1
W_ON_TIME = 0.5
W_UNLOCKED = 0.3
W_USAGE = 0.2
NEUTRAL = 0.5  # an input with no evidence yet (new account, no telemetry)


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


def sum_by_day(
    t: Values, values: Values
) -> tuple[IntArray, FloatArray]:
    """Sum of per-hour (or per-reading) values by UTC day: (day starts, sums)."""
    tt = as_float(t)
    if tt.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    days = (tt // DAY_S).astype(np.int64)
    uniq, idx = np.unique(days, return_inverse=True)
    sums: FloatArray = np.bincount(idx, weights=as_float(values),
                                   minlength=uniq.size).astype(np.float64)
    return uniq * DAY_S, sums


# --- habits: daily load profiles and household patterns ------------------------------------


def hourly_profile(
    t: Values, load_wh: Values
) -> FloatArray:
    """Mean load energy (Wh, i.e. mean W) for each hour of the day 0..23; NaN with no data."""
    tt = as_float(t)
    hours = ((tt % DAY_S) // HOUR_S).astype(np.int64)
    sums = np.bincount(hours, weights=as_float(load_wh), minlength=24)
    counts = np.bincount(hours, minlength=24).astype(np.float64)
    out: FloatArray = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return out


def normalise_profiles(profiles: FloatArray) -> FloatArray:
    """Each row as shares of its day's energy: patterns compare habits, not kit sizes."""
    p = np.nan_to_num(np.asarray(profiles, dtype=np.float64), nan=0.0)
    totals = p.sum(axis=1, keepdims=True)
    out: FloatArray = np.divide(p, totals, out=np.full_like(p, 1.0 / 24), where=totals > 0)
    return out


def kmeans(x: FloatArray, k: int, *, seed: int = 7, iterations: int = 50
           ) -> tuple[IntArray, FloatArray]:
    """Plain k-means with k-means++ seeding from a fixed seed: same input, same groups."""
    n = x.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, x.shape[1] if x.ndim == 2 else 0))
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centres = [x[int(rng.integers(n))]]
    for _ in range(1, k):
        d2 = np.min(((x[:, None, :] - np.asarray(centres)[None, :, :]) ** 2).sum(-1), axis=1)
        total = d2.sum()
        pick = int(rng.choice(n, p=d2 / total)) if total > 0 else int(rng.integers(n))
        centres.append(x[pick])
    c = np.asarray(centres, dtype=np.float64)
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iterations):
        new = np.argmin(((x[:, None, :] - c[None, :, :]) ** 2).sum(-1), axis=1).astype(np.int64)
        if _ > 0 and np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = x[labels == j]
            if len(members):
                c[j] = members.mean(axis=0)
    return labels, c


def pattern_name(centroid: FloatArray) -> str:
    """A plain name for a normalised 24-hour profile, from where its energy goes."""
    share = np.asarray(centroid, dtype=np.float64)
    evening = float(share[18:23].sum())
    night = float(share[23:].sum() + share[:6].sum())
    day = float(share[6:18].sum())
    if evening >= 0.55:
        return "evening-peak"
    if night >= 0.45:
        return "night-long"
    if day >= 0.5:
        return "daytime"
    return "spread"


@dataclass(frozen=True, slots=True)
class Patterns:
    labels: IntArray  # one group index per kit
    centroids: FloatArray  # (k, 24) normalised profiles
    names: list[str]  # one name per group

    def name_of(self, i: int) -> str:
        return self.names[int(self.labels[i])]


def household_patterns(profiles: FloatArray, k: int = 4) -> Patterns:
    """Group kits by the shape of their daily load profile (rows of 24 hourly means)."""
    x = normalise_profiles(profiles)
    labels, centroids = kmeans(x, k)
    return Patterns(labels, centroids, [pattern_name(c) for c in centroids])


# --- sizing -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sizing:
    days: int
    empty_evening_share: float  # evenings on which the battery reached EMPTY_SOC_PCT
    pv_waste_share: float  # days on which PV was curtailed by a full battery
    verdict: str  # ok | undersized | oversized | unknown


def sizing(
    t: Values,
    soc_min: Values,
    full_share: Values,
) -> Sizing:
    """Undersized when the battery empties most evenings, oversized when PV is wasted most days.

    ``t`` are hour starts; ``soc_min`` the hour's lowest state of charge; ``full_share``
    the share of the hour's readings at or above FULL_SOC_PCT.
    """
    tt = as_float(t)
    if tt.size == 0:
        return Sizing(0, 0.0, 0.0, "unknown")
    hour = (tt % DAY_S) // HOUR_S
    day = (tt // DAY_S).astype(np.int64)
    evening = (hour >= EVENING_HOURS[0]) & (hour < EVENING_HOURS[1])
    daylight = (hour >= DAYLIGHT_HOURS[0]) & (hour < DAYLIGHT_HOURS[1])
    smin = as_float(soc_min)
    full = as_float(full_share) >= 0.5
    ev_days = np.unique(day[evening])
    empty_days = np.unique(day[evening & (smin <= EMPTY_SOC_PCT)])
    dl_days, dl_counts = np.unique(day[daylight & full], return_counts=True)
    all_days = np.unique(day[daylight])
    waste_days = int((dl_counts >= WASTE_HOURS_PER_DAY).sum()) if dl_days.size else 0
    empty_share = empty_days.size / ev_days.size if ev_days.size else 0.0
    waste_share = waste_days / all_days.size if all_days.size else 0.0
    days = int(max(ev_days.size, all_days.size))
    if empty_share >= UNDERSIZED_SHARE:
        verdict = "undersized"
    elif waste_share >= OVERSIZED_SHARE and _median_daily_min(day, smin) >= OVERSIZED_MIN_SOC_PCT:
        verdict = "oversized"
    else:
        verdict = "ok"
    return Sizing(days, round(empty_share, 3), round(waste_share, 3), verdict)


def _median_daily_min(day: IntArray, soc_min: FloatArray) -> float:
    uniq, idx = np.unique(day, return_inverse=True)
    mins = np.full(uniq.size, np.inf)
    np.minimum.at(mins, idx, soc_min)
    return float(np.median(mins)) if uniq.size else 0.0


# --- battery health -----------------------------------------------------------------------


def capacity_by_day(
    t: Values,
    soc_first: Values,
    soc_last: Values,
    pv_wh: Values,
    load_wh: Values,
    *, min_drop_pct: float = 10.0,
) -> tuple[IntArray, FloatArray]:
    """Usable capacity seen each day: load energy over state-of-charge lost in dark hours.

    Hours are (t, first/last state of charge in the hour, energies). Only hours without PV
    and with a discharge count; a day needs ``min_drop_pct`` of
    discharge in total to give an estimate (small drops are all rounding).
    """
    tt = as_float(t)
    last = as_float(soc_last)
    drop = as_float(soc_first) - last
    if tt.size > 1:  # from the previous hour's last reading when hours follow each other
        follows = np.diff(tt) == HOUR_S
        drop[1:] = np.where(follows, last[:-1] - last[1:], drop[1:])
    dark = (as_float(pv_wh) < 0.5) & (drop > 0) & (as_float(load_wh) > 0)
    if not dark.any():
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    days, energy = sum_by_day(tt[dark], as_float(load_wh)[dark])
    _, dropped = sum_by_day(tt[dark], drop[dark])
    keep = dropped >= min_drop_pct
    return days[keep], energy[keep] / (dropped[keep] / 100.0)


@dataclass(frozen=True, slots=True)
class Fade:
    health_pct: float | None  # latest capacity as a share of the first seen
    fade_per_year: float | None  # fitted loss of capacity per year (0.05 = 5 %/year)
    span_days: float

    @property
    def fast(self) -> bool:
        return (self.fade_per_year is not None and self.span_days >= MIN_FADE_SPAN_DAYS
                and self.fade_per_year > FAST_FADE_PER_YEAR)


def capacity_fade(days: Values,
                  capacity_wh: Values) -> Fade:
    """Health and the fitted fade rate from daily capacity estimates (least squares)."""
    d = as_float(days)
    c = as_float(capacity_wh)
    if c.size < 3:
        return Fade(None, None, 0.0)
    x = (d - d[0]) / DAY_S
    slope, intercept = np.polyfit(x, c, 1)
    n = max(1, min(7, c.size // 3))
    health = 100.0 * float(np.median(c[-n:])) / float(np.median(c[:n]))
    fade = float(-slope * 365.0 / intercept) if intercept > 0 else None
    return Fade(round(min(health, 100.0), 1), fade, float(x[-1]))


HEALTH_BUCKETS = ((90.0, "90-100"), (80.0, "80-90"), (70.0, "70-80"), (0.0, "<70"))


def health_bucket(health_pct: float | None) -> str:
    if health_pct is None or math.isnan(health_pct):
        return "unknown"
    for floor, name in HEALTH_BUCKETS:
        if health_pct >= floor:
            return name
    return "<70"


# --- anomalies ----------------------------------------------------------------------------


def power_while_locked(
    locked: Sequence[bool] | npt.NDArray[np.bool_], load_w: Values,
    threshold_w: float = LOCKED_LOAD_W,
) -> int:
    """How many readings drew power while the kit said its output was locked."""
    lk = np.asarray(locked, dtype=bool)
    return int((lk & (as_float(load_w) > threshold_w)).sum())


def pv_neighbour_ratio(daily_pv: FloatArray) -> FloatArray:
    """Each kit's PV as a share of its neighbours' median on the same days (NaN: no data).

    ``daily_pv`` is (kits, days), NaN where a kit has no figure or its battery was full
    (curtailed PV says nothing about the sun). The ratio is the median over days.
    """
    m = np.asarray(daily_pv, dtype=np.float64)
    out = np.full(m.shape[0], np.nan)
    if m.size == 0:
        return out
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(m.shape[0]):
            others = np.delete(m, i, axis=0)
            seen = np.isfinite(others).any(axis=0) & np.isfinite(m[i])
            if not seen.any():
                continue
            cols = others[:, seen]
            medians = np.array([np.median(c[np.isfinite(c)]) for c in cols.T])
            ratio = m[i, seen] / medians
            ratio = ratio[np.isfinite(ratio)]
            if ratio.size:
                out[i] = float(np.median(ratio))
    return out


def silent_for_days(last_seen: float | None, now: float) -> float | None:
    return None if last_seen is None else max(0.0, (now - last_seen) / DAY_S)


# --- solvency -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SolvencyInputs:
    """What the score is made of, shown as is on the kit page."""

    payments: int  # payments in the window (deposits excluded)
    on_time_share: float | None  # payments made before the paid credit ran out
    window_days: int
    locked_days: int  # days in the window without credit (output locked)
    used_days: int | None  # credited days with at least USED_DAY_WH of load (None: no data)
    credited_days: int


def solvency_inputs(
    *,
    payments: Sequence[tuple[float, float | None, float | None]],
    window_start: float,
    now: float,
    daily_load_wh: Sequence[tuple[float, float]] | None = None,
) -> SolvencyInputs:
    """Inputs from ledger entries ``(at, credit_until_before, credit_until_after)``.

    The first entry may be the deposit (counted for coverage, not for regularity: callers
    pass ``credit_until_before=None`` for it, and such entries are not counted as payments).
    """
    start_day = int(window_start // DAY_S)
    n_days = max(1, math.ceil((now - start_day * DAY_S) / DAY_S))
    covered = np.zeros(n_days, dtype=bool)
    paid = 0
    on_time = 0
    for at, before, after in payments:
        if before is not None:
            paid += 1
            if before >= at:  # credit was still running when the money came
                on_time += 1
        if after is None:
            continue
        lo = max(0, int(at // DAY_S) - start_day)
        hi = min(n_days, math.ceil(after / DAY_S) - start_day)
        if hi > lo:
            covered[lo:hi] = True
    credited = int(covered.sum())
    used: int | None = None
    if daily_load_wh is not None:
        used = 0
        for day_t, wh in daily_load_wh:
            i = int(day_t // DAY_S) - start_day
            if 0 <= i < n_days and covered[i] and wh >= USED_DAY_WH:
                used += 1
    return SolvencyInputs(
        payments=paid, on_time_share=(on_time / paid) if paid else None,
        window_days=n_days, locked_days=n_days - credited, used_days=used,
        credited_days=credited,
    )


def solvency_score(x: SolvencyInputs) -> float:
    """0..100 = 100 * (0.5*on-time share + 0.3*(1 - locked share) + 0.2*usage share).

    A missing input counts as NEUTRAL (0.5): no evidence neither helps nor hurts.
    """
    on_time = NEUTRAL if x.on_time_share is None else x.on_time_share
    unlocked = 1.0 - x.locked_days / x.window_days if x.window_days else NEUTRAL
    if x.used_days is None or x.credited_days == 0:
        usage = NEUTRAL
    else:
        usage = x.used_days / x.credited_days
    return round(100.0 * (W_ON_TIME * on_time + W_UNLOCKED * unlocked + W_USAGE * usage), 1)
