"""Households' habits: daily load profiles clustered into patterns (k-means). Pure numpy.

Apart from ``telemetry.analytics`` because it is its own question (when does a household
use its power), asked on the profiles the analytics window builds. docs/analytics.md
explains the patterns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from telemetry.analytics import FloatArray, IntArray


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
