"""The solvency backtest (bench/solvency_backtest.py, docs/analytics.md "Backtest") on a small
seeded fleet: the bench as a user runs it, its last line one JSON object of figures.

What is asserted is what this seed shows: the score ranks the households that default by
day 90 better than chance and better than the days since their last payment. At 400
households only ten of the accounts still current at day 30 default later, so the intervals
are wide; the full-size run in docs/analytics.md is the evidence, this test keeps the bench
working and its figures reproducible.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "solvency_backtest.py"
ARGS = ["--households", "400", "--seed", "2026", "--draws", "200"]


@pytest.fixture(scope="module")
def figures() -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(BENCH), *ARGS], cwd=ROOT, capture_output=True,
                          text=True, timeout=240, check=True)
    assert "scored 400/400" in done.stderr  # progress goes to stderr
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def test_the_fleet_and_the_truth(figures: dict[str, Any]) -> None:
    assert figures["households"] == 400 and figures["seed"] == 2026
    assert (figures["score_day"], figures["outcome_day"]) == (30, 90)
    b = figures["behaviours"]
    assert set(b) == {"daily", "weekly", "late", "stops", "early", "never", "fades"}
    assert sum(x["households"] for x in b.values()) == 400
    # who defaults by day 90: everyone who stopped or never paid, some of the faders, none
    # of those who keep paying or paid the kit off
    for name in ("stops", "never"):
        assert b[name]["defaulted"] == b[name]["households"]
    for name in ("daily", "weekly", "late", "early"):
        assert b[name]["defaulted"] == 0
    assert 0 < b["fades"]["defaulted"] < b["fades"]["households"]
    assert b["early"]["owned"] == b["early"]["households"] == figures["owned_at_score_day"]
    # the main evaluation keeps the defaults already visible at day 30 out
    assert b["stops"]["current"] == b["never"]["current"] == 0
    assert figures["evaluated"] < figures["all_evaluated"] == 400 - figures["owned_at_score_day"]
    assert figures["defaulters"] == 10


def test_the_score_beats_chance_and_the_baseline_on_this_seed(figures: dict[str, Any]) -> None:
    for prefix in ("", "all_"):
        score, days = figures[f"{prefix}auc_score"], figures[f"{prefix}auc_days_since_payment"]
        assert score > 0.5 and score > days, prefix
        assert figures[f"{prefix}auc_diff"] == pytest.approx(score - days, abs=1e-3)
        lo, hi = figures[f"{prefix}auc_diff_ci95"]
        assert lo < score - days < hi
    assert figures["all_auc_score_ci95"][0] > 0.5
