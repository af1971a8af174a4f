"""ROC AUC by average ranks (ties count one half) and its paired bootstrap, on examples small
enough to check by hand and against a count of every (bad, good) pair."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from telemetry import ranking


def test_average_ranks_share_ties() -> None:
    assert ranking.average_ranks([0.8, 0.1, 0.8, 0.3, 0.9]).tolist() == [3.5, 1, 3.5, 2, 5]
    assert ranking.average_ranks([2, 2, 2]).tolist() == [2, 2, 2]
    assert ranking.average_ranks([]).tolist() == []


def test_auc_by_hand_with_a_tie() -> None:
    # bad {0.9, 0.8} against good {0.8, 0.3, 0.1}: 6 pairs; 0.9 beats all three, 0.8 beats
    # two and ties one (one half): 5.5 / 6. By ranks: the bad hold 5 + 3.5 = 8.5, minus
    # 2 * 3 / 2 = 5.5 = U.
    risk = [0.9, 0.8, 0.8, 0.3, 0.1]
    bad = [True, False, True, False, False]
    assert ranking.roc_auc(risk, bad) == pytest.approx(5.5 / 6)


def test_auc_ends_and_middle() -> None:
    bad = [True, True, False, False]
    assert ranking.roc_auc([4, 3, 2, 1], bad) == 1.0
    assert ranking.roc_auc([1, 2, 3, 4], bad) == 0.0
    assert ranking.roc_auc([7, 7, 7, 7], bad) == 0.5  # all tied: a coin
    # days since the last payment, whole days: many ties
    days = [30, 30, 3, 0, 30, 6, 3]
    late = [True, False, True, False, True, False, False]
    # bad {30, 30, 3} against good {30, 0, 6, 3}: each 30 beats 0, 6 and 3 and ties 30
    # (3.5, twice: 7); 3 beats 0 and ties 3 (1.5); 8.5 / 12
    assert ranking.roc_auc(days, late) == pytest.approx(8.5 / 12)


def test_auc_refuses_what_has_none() -> None:
    with pytest.raises(ValueError):
        ranking.roc_auc([1, 2], [True, True])
    with pytest.raises(ValueError):
        ranking.roc_auc([1, float("nan")], [True, False])
    with pytest.raises(ValueError):
        ranking.roc_auc([1, 2, 3], [True, False])


def pairwise_auc(risk: list[int], bad: list[bool]) -> float:
    pos = [r for r, b in zip(risk, bad, strict=True) if b]
    neg = [r for r, b in zip(risk, bad, strict=True) if not b]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2, max_size=60))
def test_auc_is_the_pairwise_count(rows: list[tuple[int, bool]]) -> None:
    risk = [r for r, _ in rows]
    bad = [b for _, b in rows]
    if all(bad) or not any(bad):
        return
    assert ranking.roc_auc(risk, bad) == pytest.approx(pairwise_auc(risk, bad), abs=1e-12)


def test_bootstrap_is_paired_seeded_and_stratified() -> None:
    rng = np.random.default_rng(3)
    bad = rng.random(400) < 0.2
    good_score = bad + rng.normal(0, 0.8, 400)
    coin = rng.normal(0, 1, 400)
    a = ranking.bootstrap_aucs([good_score, coin, good_score], bad, draws=300, seed=9)
    b = ranking.bootstrap_aucs([good_score, coin, good_score], bad, draws=300, seed=9)
    assert a.shape == (300, 3) and np.array_equal(a, b)
    assert np.array_equal(a[:, 0], a[:, 2])  # the same resample for every figure
    lo, hi = ranking.interval(a[:, 0])
    assert lo < ranking.roc_auc(good_score, bad) < hi
    lo, hi = ranking.interval(a[:, 0] - a[:, 1])
    assert 0 < lo < hi
    lo, hi = ranking.interval(a[:, 1])
    assert lo < 0.5 < hi
