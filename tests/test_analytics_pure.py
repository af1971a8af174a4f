"""The analytics rules on hand-made arrays: energy, patterns, sizing, fade, solvency."""

from __future__ import annotations

import numpy as np
import pytest

from telemetry import analytics as a

DAY = 86_400


def test_daily_energy_survives_a_counter_reset() -> None:
    ts = [0, 3600, 7200, DAY + 10, DAY + 3600]
    counter = [100.0, 110.0, 130.0, 5.0, 25.0]  # reset between 7200 and DAY + 10
    days, wh = a.daily_energy(ts, counter)
    assert days.tolist() == [0, DAY]
    assert wh.tolist() == [30.0, 25.0]


def test_household_patterns_separate_evening_and_daytime_habits() -> None:
    evening = np.zeros(24)
    evening[18:23] = 20
    daytime = np.zeros(24)
    daytime[8:16] = 10
    rows = [evening * s for s in (1, 1.5, 2)] + [daytime * s for s in (1, 3)]
    p = a.household_patterns(np.vstack(rows), k=2)
    assert p.labels[0] == p.labels[1] == p.labels[2] != p.labels[3] == p.labels[4]
    assert p.name_of(0) == "evening-peak" and p.name_of(3) == "daytime"
    again = a.household_patterns(np.vstack(rows), k=2)
    assert again.labels.tolist() == p.labels.tolist()  # stable


def test_sizing_verdicts() -> None:
    t = np.arange(0, 4 * DAY, 3600, dtype=float)
    hour = (t % DAY) // 3600
    empty = np.where(hour >= 20, 2.0, 50.0)
    assert a.sizing(t, empty, np.zeros_like(t)).verdict == "undersized"
    full = np.where((hour >= 9) & (hour < 16), 1.0, 0.0)
    assert a.sizing(t, np.full_like(t, 90.0), full).verdict == "oversized"
    assert a.sizing(t, np.full_like(t, 40.0), full).verdict == "ok"  # deep use: not oversized


def test_capacity_fade_and_health() -> None:
    days = np.arange(20) * DAY
    fast = a.capacity_fade(days, 400 * (1 - 0.01 * np.arange(20)))
    assert fast.fast and fast.health_pct is not None and fast.health_pct < 90
    slow = a.capacity_fade(days, np.full(20, 400.0))
    assert not slow.fast and slow.health_pct == 100.0
    assert a.health_bucket(85.0) == "80-90" and a.health_bucket(None) == "unknown"


def test_pv_ratio_and_locked_power() -> None:
    m = np.array([[100, 110, np.nan], [90, 100, 95], [20, 22, 19], [100, 105, 98.0]])
    r = a.pv_neighbour_ratio(m)
    assert r[2] < a.PV_NEIGHBOUR_RATIO < r[0]
    assert a.power_while_locked([True, True, False], [5.0, 0.2, 30.0]) == 1


def test_solvency_score_formula_and_inputs() -> None:
    now = 100 * DAY
    good = a.solvency_inputs(
        payments=[(10 * DAY, None, 40 * DAY), (35 * DAY, 40 * DAY, 70 * DAY),
                  (65 * DAY, 70 * DAY, 101 * DAY)],
        window_start=10 * DAY, now=now,
        daily_load_wh=[(d * DAY, 50.0) for d in range(10, 100)])
    assert good.payments == 2 and good.on_time_share == 1.0 and good.locked_days == 0
    assert a.solvency_score(good) == 100.0
    late = a.solvency_inputs(payments=[(10 * DAY, None, 20 * DAY), (50 * DAY, 20 * DAY, 60 * DAY)],
                             window_start=10 * DAY, now=now)
    assert late.on_time_share == 0.0 and late.locked_days == 30 + 40 and late.used_days is None
    expected = 100 * (0.5 * 0 + 0.3 * (1 - 70 / 90) + 0.2 * 0.5)
    assert a.solvency_score(late) == pytest.approx(round(expected, 1))
