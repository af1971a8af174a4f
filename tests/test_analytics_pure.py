"""The analytics rules on hand-made arrays: energy, patterns, sizing, fade, solvency."""

from __future__ import annotations

import numpy as np
import pytest

from telemetry import analytics as a
from telemetry import habits, solvency

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
    p = habits.household_patterns(np.vstack(rows), k=2)
    assert p.labels[0] == p.labels[1] == p.labels[2] != p.labels[3] == p.labels[4]
    assert p.name_of(0) == "evening-peak" and p.name_of(3) == "daytime"
    again = habits.household_patterns(np.vstack(rows), k=2)
    assert again.labels.tolist() == p.labels.tolist()  # stable


def window_of(days: int, **fields: np.ndarray) -> a.Window:
    """The window of kits whose hourly fields are given as (kits, days * 24) arrays."""
    kits = next(iter(fields.values())).shape[0]
    builder = a.WindowBuilder(kits)
    prev_present, prev_last = np.zeros(kits, dtype=bool), np.zeros(kits)
    for d in range(days):
        day = {f: fields.get(f, np.zeros((kits, days * 24)))[:, d * 24:(d + 1) * 24]
               for f in a.HOURLY_FIELDS}
        stats = a.day_stats(a.DayHours(np.ones((kits, 24), dtype=bool), day, prev_present,
                                       prev_last))
        builder.add(stats, a.pv_ratios(stats.pv))
        prev_present, prev_last = np.ones(kits, dtype=bool), day["soc_last"][:, 23]
    return builder.finish()


def test_sizing_verdicts() -> None:
    hour = np.arange(4 * 24) % 24
    empty = np.where(hour >= 20, 2.0, 50.0)
    full = np.where((hour >= 9) & (hour < 16), 60.0, 0.0)
    w = window_of(4, soc_min=np.vstack([empty, np.full(96, 90.0), np.full(96, 40.0)]),
                  full_n=np.vstack([np.zeros(96), full, full]), n=np.full((3, 96), 60.0))
    assert w.sizing == ["undersized", "oversized", "ok"]  # deep use: not oversized


def test_capacity_fade_and_health() -> None:
    health, fade, span = a.capacity_fade(np.vstack([400 * (1 - 0.01 * np.arange(20)),
                                                    np.full(20, 400.0)]))
    assert health[0] < 90 and fade[0] > a.FAST_FADE_PER_YEAR and span[0] == 19
    assert health[1] == 100.0 and fade[1] == 0.0
    assert a.health_bucket(85.0) == "80-90" and a.health_bucket(None) == "unknown"


def test_pv_ratio_against_the_other_kits() -> None:
    m = np.array([[100, 110, np.nan], [90, 100, 95], [20, 22, 19], [100, 105, 98.0]])
    r = a.row_median(a.pv_ratios(m))
    assert r[2] < a.PV_NEIGHBOUR_RATIO < r[0]
    # kit 2 against the median of kits 0, 1 and 3 in the first hour: 100
    assert a.pv_ratios(m)[2, 0] == 20 / 100


def test_solvency_score_formula_and_inputs() -> None:
    now = 100 * DAY
    good = solvency.solvency_inputs(
        payments=[(10 * DAY, None, 40 * DAY), (35 * DAY, 40 * DAY, 70 * DAY),
                  (65 * DAY, 70 * DAY, 101 * DAY)],
        window_start=10 * DAY, now=now,
        daily_load_wh=[(d * DAY, 50.0) for d in range(10, 100)])
    assert good.payments == 2 and good.on_time_share == 1.0 and good.locked_days == 0
    assert solvency.solvency_score(good) == 100.0
    late = solvency.solvency_inputs(
        payments=[(10 * DAY, None, 20 * DAY), (50 * DAY, 20 * DAY, 60 * DAY)],
        window_start=10 * DAY, now=now)
    assert late.on_time_share == 0.0 and late.locked_days == 30 + 40 and late.used_days is None
    expected = 100 * (0.5 * 0 + 0.3 * (1 - 70 / 90) + 0.2 * 0.5)
    assert solvency.solvency_score(late) == pytest.approx(round(expected, 1))


def test_solvency_reads_the_ledger_as_the_nightly_job_does() -> None:
    """The deposit (no credit bought) is not a payment; the first top-up has no credit
    before it and counts as late; the window is 90 days or since the sale."""
    entries = [(0.0, "deposit", None, None), (3600.0, "payment", None, 7 * DAY + 3600),
               (7 * DAY, "payment", 7 * DAY + 3600, 14 * DAY + 3600)]
    assert solvency.ledger_payments(entries) == [
        (0.0, None, None), (3600.0, 0.0, 7 * DAY + 3600.0),
        (7 * DAY, 7 * DAY + 3600.0, 14 * DAY + 3600.0)]
    x = solvency.solvency_inputs(payments=solvency.ledger_payments(entries),
                                 window_start=solvency.window_start(0.0, 10 * DAY),
                                 now=10 * DAY)
    assert (x.payments, x.on_time_share, x.window_days, x.locked_days) == (2, 0.5, 10, 0)
    assert solvency.window_start(0.0, 200 * DAY) == 110 * DAY
    assert solvency.window_start(150 * DAY, 200 * DAY) == 150 * DAY
