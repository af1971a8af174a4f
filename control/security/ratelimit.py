"""Sliding-window rate limits as two counters per key (pure: the caller passes the time).

The counters live in the ledger database (control/security/shared_limits.py) so that every
control process counts against the same limit; two numbers per key keep each hit one
atomic upsert. The window slides: events of the previous fixed window count in proportion
to how much of it still overlaps the last ``window_s`` seconds (the usual sliding-window
counter, exact when events are spread evenly, never more than the previous window's count
off). Within one window the count is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """At most ``limit`` events per ``window_s`` seconds per key."""

    limit: int
    window_s: float

    def __post_init__(self) -> None:
        if self.limit < 1 or not self.window_s > 0:
            raise ValueError("limit must be >= 1 and window_s > 0")

    def window_start(self, now: float) -> float:
        """The start of the fixed window ``now`` falls in (aligned on the epoch, so every
        process agrees)."""
        return math.floor(now / self.window_s) * self.window_s


@dataclass(frozen=True)
class Counts:
    """A key's counters as stored: hits in the window starting ``window_start`` and in
    the one before it."""

    window_start: float
    hits: int
    prev_hits: int

    def at(self, rule: Rule, now: float) -> Counts:
        """The counters as seen from ``now``'s window (older windows roll off)."""
        start = rule.window_start(now)
        if self.window_start == start:
            return self
        if self.window_start == start - rule.window_s:
            return Counts(start, 0, self.hits)
        return Counts(start, 0, 0)


def estimate(rule: Rule, counts: Counts, now: float) -> float:
    """Events in the ``window_s`` seconds before ``now``, from ``counts`` rolled to ``now``."""
    c = counts.at(rule, now)
    overlap = 1.0 - (now - c.window_start) / rule.window_s
    return c.prev_hits * overlap + c.hits


def retry_after(rule: Rule, counts: Counts, now: float) -> float:
    """0 while the estimate is under the limit, else seconds until it will be (with no
    further events)."""
    c = counts.at(rule, now)
    if estimate(rule, c, now) < rule.limit:
        return 0.0
    w = rule.window_s
    if c.hits < rule.limit:  # the previous window's share fades out first
        # prev * (1 - (t - start) / w) + hits < limit
        fades_at = c.window_start + w * (1.0 - (rule.limit - c.hits) / c.prev_hits)
    else:  # this window's hits become the previous window's and fade in the next one
        fades_at = c.window_start + w + w * (1.0 - rule.limit / c.hits)
    return max(fades_at - now, 0.0) + 1e-3
