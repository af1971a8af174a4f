"""How well a risk figure ranks the accounts that went bad: ROC AUC and a bootstrap interval.
Pure numpy.

Used to check the solvency score against what later happened (bench/solvency_backtest.py,
docs/analytics.md "Backtest"). The AUC is the Mann-Whitney U statistic over the two groups'
sizes: the chance that a randomly picked account that went bad was ranked riskier than a
randomly picked one that did not, a tie counting one half (average ranks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
Values = Sequence[float] | Sequence[bool] | npt.NDArray[Any]


def average_ranks(values: Values) -> FloatArray:
    """1-based ranks of ``values``, tied values sharing the mean of the ranks they span."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError("ranks of a 1-D array only")
    order = np.argsort(v, kind="stable")
    s = v[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]]) if s.size else np.zeros(0, int)
    ends = np.r_[starts[1:], s.size]  # exclusive
    ranks = np.empty(v.size)
    ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)
    return ranks


def roc_auc(risk: Values, bad: Values) -> float:
    """ROC AUC of ``risk`` (higher = riskier) for the accounts flagged ``bad``.

    1.0: every bad account ranked above every good one; 0.5: no better than chance. Raises
    ValueError on NaN or when either group is empty (no AUC exists then).
    """
    r = np.asarray(risk, dtype=np.float64)
    y = np.asarray(bad, dtype=bool)
    if r.shape != y.shape or r.ndim != 1:
        raise ValueError("risk and bad must be 1-D arrays of the same length")
    if np.isnan(r).any():
        raise ValueError("risk has NaN")
    n_bad = int(y.sum())
    n_good = y.size - n_bad
    if n_bad == 0 or n_good == 0:
        raise ValueError("need at least one bad and one good account")
    u = average_ranks(r)[y].sum() - n_bad * (n_bad + 1) / 2.0
    return float(u / (n_bad * n_good))


def bootstrap_aucs(risks: Sequence[Values], bad: Values, *, draws: int, seed: int
                   ) -> FloatArray:
    """(draws, len(risks)) AUCs, each row on one resample of the accounts.

    Every risk figure is scored on the same resample (paired), so the spread of a row-wise
    difference is the spread of the difference. Bad and good accounts are resampled apart
    (stratified), keeping each group's size: every resample has an AUC.
    """
    y = np.asarray(bad, dtype=bool)
    rs = [np.asarray(r, dtype=np.float64) for r in risks]
    bad_i, good_i = np.flatnonzero(y), np.flatnonzero(~y)
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(bad_i.size, bool), np.zeros(good_i.size, bool)]
    out = np.empty((draws, len(rs)))
    for d in range(draws):
        idx = np.r_[rng.choice(bad_i, bad_i.size), rng.choice(good_i, good_i.size)]
        for j, r in enumerate(rs):
            out[d, j] = roc_auc(r[idx], labels)
    return out


def interval(values: Values, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap values."""
    v = np.asarray(values, dtype=np.float64)
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(v, [tail, 100.0 - tail])
    return float(lo), float(hi)
