"""The fleet page's derived figures as pure functions: each kit in exactly one health bin,
the repayment rate a share of what was due (docs/analytics.md, "Pre-aggregation")."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control.fleet import figures

healths = st.one_of(st.none(), st.just(float("nan")), st.floats(min_value=0, max_value=150))
money = st.integers(min_value=0, max_value=10_000_000)


@given(st.lists(healths, max_size=300))
def test_health_bins_sum_to_the_kits_counted(values: list[float | None]) -> None:
    hist = figures.health_histogram(values)
    assert tuple(hist) == figures.HEALTH_BINS
    assert sum(hist.values()) == len(values)
    assert hist["unknown"] == sum(v is None or v != v for v in values)


@given(st.dictionaries(st.sampled_from(figures.HEALTH_BINS), st.integers(0, 1000)),
       st.integers(0, 5000))
def test_completed_bins_place_every_kit_or_refuse(counts: dict[str, int], kits: int) -> None:
    if sum(counts.values()) > kits:
        with pytest.raises(ValueError):
            figures.complete_health_bins(counts, kits)
        return
    hist = figures.complete_health_bins(counts, kits)
    assert sum(hist.values()) == kits and all(n >= 0 for n in hist.values())
    assert all(hist[b] == counts.get(b, 0) for b in figures.HEALTH_BINS if b != "unknown")


def test_a_fleet_without_analytics_is_all_unknown() -> None:
    assert figures.complete_health_bins({}, 50) == {
        "90-100": 0, "80-90": 0, "70-80": 0, "<70": 0, "unknown": 50}


@given(st.lists(st.tuples(money, money), max_size=200))
def test_repayment_rate_is_a_share_or_undefined(accounts: list[tuple[int, int]]) -> None:
    rate = figures.accounts_repayment_rate(accounts)
    if sum(e for _, e in accounts) == 0:
        assert rate is None
    else:
        assert rate is not None and 0.0 <= rate <= 1.0


def test_paying_ahead_does_not_push_the_rate_above_one() -> None:
    # the 100.6 % seen on the fleet page: one customer 10 days ahead, another a day behind
    assert figures.accounts_repayment_rate([(5000 + 2000, 5000 + 1000), (5000 + 900,
                                                                          5000 + 1000)]) \
        == round((6000 + 5900) / 12000, 4)
    assert figures.repayment_rate(0, 0) is None
    assert figures.repayment_rate(12_000, 10_000) == 1.0
