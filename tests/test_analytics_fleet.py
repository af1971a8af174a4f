"""The fleet-wide (vectorised) analytics give the per-kit rules' results, on 2,000 kits.

The reference below is the straightforward per-kit implementation the job used before it
worked on (kits x hours) arrays: one kit at a time, a median per neighbour and hour. It
lives here only, as the yardstick; the product has one implementation (telemetry.analytics).
"""

from __future__ import annotations

import io
import zlib
from dataclasses import fields
from typing import Any

import numpy as np
import pytest

from telemetry import analytics as a
from telemetry import day_state, habits

DAY = a.DAY_S
HOUR = a.HOUR_S
REGIONS = ("Maritime", "Plateaux", "Centrale", "Kara", "Savanes")

# --- the reference: per kit, as the job did it ------------------------------------------


def ref_sum_by_day(t: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    days = (t // DAY).astype(np.int64)
    uniq, idx = np.unique(days, return_inverse=True)
    return uniq * DAY, np.bincount(idx, weights=v, minlength=uniq.size).astype(np.float64)


def ref_profile(t: np.ndarray, load: np.ndarray) -> np.ndarray:
    hours = ((t % DAY) // HOUR).astype(np.int64)
    sums = np.bincount(hours, weights=load, minlength=24)
    counts = np.bincount(hours, minlength=24).astype(np.float64)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def ref_sizing(t: np.ndarray, soc_min: np.ndarray, full_share: np.ndarray) -> str:
    if t.size == 0:
        return "unknown"
    hour = (t % DAY) // HOUR
    day = (t // DAY).astype(np.int64)
    evening = (hour >= 18) & (hour < 24)
    daylight = (hour >= 8) & (hour < 16)
    full = full_share >= 0.5
    ev_days = np.unique(day[evening])
    empty_days = np.unique(day[evening & (soc_min <= a.EMPTY_SOC_PCT)])
    dl_days, dl_counts = np.unique(day[daylight & full], return_counts=True)
    all_days = np.unique(day[daylight])
    waste_days = int((dl_counts >= a.WASTE_HOURS_PER_DAY).sum()) if dl_days.size else 0
    empty_share = empty_days.size / ev_days.size if ev_days.size else 0.0
    waste_share = waste_days / all_days.size if all_days.size else 0.0
    uniq, idx = np.unique(day, return_inverse=True)
    mins = np.full(uniq.size, np.inf)
    np.minimum.at(mins, idx, soc_min)
    if empty_share >= a.UNDERSIZED_SHARE:
        return "undersized"
    if waste_share >= a.OVERSIZED_SHARE and float(np.median(mins)) >= a.OVERSIZED_MIN_SOC_PCT:
        return "oversized"
    return "ok"


def ref_capacity_by_day(t: np.ndarray, first: np.ndarray, last: np.ndarray, pv: np.ndarray,
                        load: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    drop = first - last
    if t.size > 1:
        follows = np.diff(t) == HOUR
        drop[1:] = np.where(follows, last[:-1] - last[1:], drop[1:])
    dark = (pv < 0.5) & (drop > 0) & (load > 0)
    if not dark.any():
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    days, energy = ref_sum_by_day(t[dark], load[dark])
    _, dropped = ref_sum_by_day(t[dark], drop[dark])
    keep = dropped >= 10.0
    return days[keep], energy[keep] / (dropped[keep] / 100.0)


def ref_fade(d: np.ndarray, c: np.ndarray) -> tuple[float | None, float | None, float]:
    if c.size < 3:
        return None, None, 0.0
    x = (d - d[0]) / DAY
    slope, intercept = np.polyfit(x, c, 1)
    n = max(1, min(7, c.size // 3))
    health = 100.0 * float(np.median(c[-n:])) / float(np.median(c[:n]))
    fade = float(-slope * 365.0 / intercept) if intercept > 0 else None
    return round(min(health, 100.0), 1), fade, float(x[-1])


def ref_pv_neighbour_ratio(m: np.ndarray) -> np.ndarray:
    out = np.full(m.shape[0], np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(m.shape[0]):
            others = np.delete(m, i, axis=0)
            seen = np.isfinite(others).any(axis=0) & np.isfinite(m[i])
            if not seen.any():
                continue
            medians = np.array([np.median(c[np.isfinite(c)]) for c in others[:, seen].T])
            ratio = m[i, seen] / medians
            ratio = ratio[np.isfinite(ratio)]
            if ratio.size:
                out[i] = float(np.median(ratio))
    return out


def reference(hourly: dict[int, dict[str, np.ndarray]], region: list[str]
              ) -> dict[int, dict[str, Any]]:
    """Per kit, exactly as the per-kit job computed it (kits without rows are absent)."""
    out: dict[int, dict[str, Any]] = {}
    by_region: dict[str, list[int]] = {}
    for i, h in sorted(hourly.items()):
        t = h["time"]
        days, daily = ref_sum_by_day(t, h["load_wh"])
        cd, cap = ref_capacity_by_day(t, h["soc_first"].copy(), h["soc_last"], h["pv_wh"],
                                      h["load_wh"])
        health, fade, span = ref_fade(cd, cap)
        out[i] = {
            "energy": float(h["load_wh"].sum()), "daily": dict(zip(days, daily, strict=True)),
            "sizing": ref_sizing(t, h["soc_min"], h["full_n"] / np.maximum(h["n"], 1)),
            "health": health, "fast": fade is not None and span >= 7 and fade > 0.2,
            "fade": fade, "locked_hours": int((h["locked_load_n"] > 0).sum()),
            "locked_readings": int(h["locked_load_n"].sum()),
            "profile": ref_profile(t, h["load_wh"]), "pv_ratio": np.nan,
        }
        by_region.setdefault(region[i], []).append(i)
    for members in by_region.values():
        if len(members) < 5:
            continue
        hours = sorted({int(t) for k in members for t in hourly[k]["time"]})
        col = {t: j for j, t in enumerate(hours)}
        m = np.full((len(members), len(hours)), np.nan)
        for r, k in enumerate(members):
            h = hourly[k]
            hod = (h["time"] % DAY) // HOUR
            ok = (h["full_n"] == 0) & (hod >= 9) & (hod < 15)
            for t, v in zip(h["time"][ok], h["pv_wh"][ok], strict=True):
                m[r, col[int(t)]] = v
        for k, ratio in zip(members, ref_pv_neighbour_ratio(m), strict=True):
            out[k]["pv_ratio"] = ratio
    return out


# --- a fleet with every behaviour the rules look for ------------------------------------


def make_fleet(kits: int, now: float, seed: int = 3
               ) -> tuple[dict[int, dict[str, np.ndarray]], list[str]]:
    rng = np.random.default_rng(seed)
    since = now - 30 * DAY
    t = np.arange(int(since // HOUR) * HOUR + HOUR, now, HOUR, dtype=np.float64)
    hod = (t % DAY) // HOUR
    sun = np.clip(np.sin((hod - 6) / 12 * np.pi), 0, None)
    hourly: dict[int, dict[str, np.ndarray]] = {}
    region = [REGIONS[i % 5] if i < kits - 3 else "Kara" for i in range(kits)]
    region[-1] = "Savanes-small"  # a region too small to compare with
    for i in range(kits):
        if i % 97 == 5:
            continue  # never reported
        keep = rng.random(t.size) > (0.5 if i % 13 == 0 else 0.08)
        tt = t[keep]
        n = tt.size
        kind = i % 7
        panel = 40.0 if i % 23 == 0 else rng.uniform(60, 90)
        pv = panel * sun[keep] * rng.uniform(0.8, 1.0, n)
        evening = (hod[keep] >= 18) & (hod[keep] < 23)
        load = np.where(evening, rng.uniform(5, 15, n), rng.uniform(0, 2, n))
        load[rng.random(n) < 0.05] = 0.0
        base = {0: 60.0, 1: 20.0, 2: 85.0}.get(kind, 50.0)
        soc_last = np.clip(base + 30 * sun[keep] - 25 * evening + rng.normal(0, 8, n), 0, 100)
        if kind == 2:  # plenty of sun and a battery that never runs low
            soc_last = np.clip(90 + 10 * sun[keep] + rng.normal(0, 3, n), 75, 100)
        if kind == 1:
            soc_last[evening] = rng.uniform(0, 6, int(evening.sum()))
        soc_first = np.clip(soc_last + rng.normal(3, 4, n), 0, 100)
        soc_min = np.minimum(soc_first, soc_last) - rng.uniform(0, 2, n)
        nn = rng.integers(50, 61, n).astype(float)
        full = np.where((kind == 2) & (sun[keep] > 0.3), nn, (rng.random(n) < 0.1) * nn / 2)
        locked = np.where((i % 11 == 0) & (rng.random(n) < 0.05), rng.integers(1, 9, n), 0)
        if i % 17 == 0:  # capacity fading fast: less load for the same discharge
            fade = 1 - 0.02 * (tt - tt[0]) / DAY
            load = load * np.where(evening | (sun[keep] == 0), fade, 1.0)
        hourly[i] = {"time": tt, "soc_min": np.round(soc_min, 2),
                     "soc_first": np.round(soc_first, 2), "soc_last": np.round(soc_last, 2),
                     "pv_wh": np.round(pv, 3), "load_wh": np.round(load, 3), "n": nn,
                     "full_n": full.astype(float), "locked_load_n": locked.astype(float)}
    return hourly, region


def fleet_window(hourly: dict[int, dict[str, np.ndarray]], region: list[str], kits: int,
                 now: float) -> a.Window:
    """The product's way: one day at a time, all kits at once, each day kept as the nightly
    job keeps it (packed, unpacked, laid back on the kit list) before it joins the window.

    Each day is stored with its kits in another order, an extra (since decommissioned) kit
    and without the kits that never reported, as a day stored on an earlier night may be.
    """
    groups = np.array([sorted(set(region)).index(r) for r in region], dtype=np.int64)
    ids = np.concatenate([np.full(h["time"].size, i) for i, h in hourly.items()])
    cols = {f: np.concatenate([h[f] for h in hourly.values()])
            for f in ("time", *a.HOURLY_FIELDS)}
    names = [f"K{i:05d}" for i in range(kits)]
    index = {k: i for i, k in enumerate(names)}
    stored_rows = [i for i in range(kits)[::-1] if i in hourly] + [kits]
    builder = a.WindowBuilder(kits)
    for day in range(int(now // DAY) - 30, int(now // DAY) + 1):
        # the hour before 00:00 comes with the day: it links the first hour
        sel = (cols["time"] >= day * DAY - HOUR) & (cols["time"] < (day + 1) * DAY)
        grid = a.day_hours(ids[sel], cols["time"][sel], {f: v[sel] for f, v in cols.items()},
                           kits=kits + 1, day_start=day * DAY)
        stats = a.day_stats(grid, rows=300)  # in several slices of kits, as at scale
        kept = a.DayStats(**{f.name: getattr(stats, f.name)[stored_rows]
                             for f in fields(a.DayStats)})
        blob = day_state.pack([[*names, "K-gone"][i] for i in stored_rows], kept)
        stats = day_state.aligned(*day_state.unpack(blob), index)
        builder.add(stats, a.pv_ratios_by_group(stats.pv, groups))
    return builder.finish()


# --- the comparison -----------------------------------------------------------------------


@pytest.mark.parametrize("kits", [2000])
def test_fleet_analytics_match_the_per_kit_rules(kits: int) -> None:
    now = 1_780_000_000.0 + 5 * HOUR + 17  # not on a day boundary: a partial first day
    hourly, region = make_fleet(kits, now)
    ref = reference(hourly, region)
    w = fleet_window(hourly, region, kits, now)
    small = {i for i, r in enumerate(region) if r == "Savanes-small"}
    assert w.reported.tolist() == [i in ref for i in range(kits)]
    for i, r in ref.items():
        assert w.energy_wh[i] == pytest.approx(r["energy"], rel=1e-12), i
        assert w.sizing[i] == r["sizing"], i
        health = None if np.isnan(w.health_pct[i]) else float(w.health_pct[i])
        assert health == r["health"], i
        if r["fade"] is not None:
            assert w.fade_per_year[i] == pytest.approx(r["fade"], rel=1e-9, abs=1e-12), i
        assert bool(w.fading_fast[i]) == r["fast"], i
        assert (int(w.locked_hours[i]), int(w.locked_readings[i])) == (
            r["locked_hours"], r["locked_readings"]), i
        np.testing.assert_array_equal(w.profiles[i], r["profile"])
        daily = {int(d * DAY): v for d, v in zip(range(int(now // DAY) - 30,
                                                       int(now // DAY) + 1),
                                                 w.daily_load_wh[i], strict=True)
                 if np.isfinite(v)}
        assert daily.keys() == r["daily"].keys(), i
        for d, v in r["daily"].items():
            assert daily[d] == pytest.approx(v, rel=1e-12)
        if i not in small:
            np.testing.assert_array_equal(w.pv_ratio[i], r["pv_ratio"])
    # the variety the fleet was built for is there, so the comparison means something
    verdicts = {r["sizing"] for r in ref.values()}
    assert {"ok", "undersized", "oversized"} <= verdicts
    assert sum(r["fast"] for r in ref.values()) > 10
    assert sum(r["locked_hours"] >= 2 for r in ref.values()) > 10
    low = {i for i, r in ref.items() if r["pv_ratio"] < 0.6}
    assert low and all(i % 23 == 0 for i in low)  # the 40 W panels among 60-90 W ones
    ref_labels = habits.household_patterns(np.vstack([ref[i]["profile"] for i in sorted(ref)]))
    labels = habits.household_patterns(w.profiles[w.reported])
    assert labels.labels.tolist() == ref_labels.labels.tolist()


def test_leave_one_out_median_is_the_median_of_the_others() -> None:
    rng = np.random.default_rng(1)
    m = rng.uniform(0, 100, (40, 5))
    m[rng.random(m.shape) < 0.3] = np.nan
    m[:, 4] = np.nan
    m[7, 4] = 5.0  # alone in its column: no others
    med, others = a.loo_median(m)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            rest = np.delete(m[:, j], i)
            rest = rest[np.isfinite(rest)]
            assert others[i, j] == rest.size
            if rest.size:
                assert med[i, j] == np.median(rest)
            else:
                assert np.isnan(med[i, j])


def test_a_stored_day_gives_back_every_bit_and_refuses_another_format() -> None:
    rng = np.random.default_rng(4)
    grid = a.blank_day(50)
    a.place_hours(grid, np.repeat(np.arange(50), 25), np.tile(np.arange(-1, 24) * HOUR, 50),
                  rng.uniform(0, 100, (50 * 25, len(a.HOURLY_FIELDS))), day_start=0)
    stats = a.day_stats(grid)
    ids, back = day_state.unpack(day_state.pack([f"k{i}" for i in range(50)], stats))
    assert ids.tolist() == [f"k{i}" for i in range(50)]
    for f in fields(a.DayStats):
        np.testing.assert_array_equal(getattr(back, f.name), getattr(stats, f.name))
        assert getattr(back, f.name).dtype == getattr(stats, f.name).dtype, f.name
    assert grid.prev_present.all()  # the hour before 00:00 became the link
    other = io.BytesIO()
    np.savez(other, format=np.array(day_state.FORMAT + 1), kit_ids=ids)
    with pytest.raises(day_state.UnknownFormat):
        day_state.unpack(zlib.compress(other.getvalue()))
