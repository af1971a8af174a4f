"""Sliding-window counters for rate limits (pure: the caller passes the time).

Kept in process memory: each control process limits on its own, so with N processes
the effective limit is at most N times the configured one (docs/security.md). That is
enough for what they guard: brute force against 256-bit API keys is hopeless anyway;
the limits stop a flood of failed logins from filling logs and the database, and stop
one support key from handing out free days in bulk.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque


class SlidingWindow:
    """At most ``limit`` events per ``window_s`` per key; bounded memory (``max_keys``)."""

    def __init__(self, limit: int, window_s: float, *, max_keys: int = 100_000) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("limit must be >= 1 and window_s > 0")
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._events: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _trim(self, key: str, now: float) -> deque[float]:
        q = self._events.get(key)
        if q is None:
            q = self._events[key] = deque()
            if len(self._events) > self.max_keys:
                self._events.popitem(last=False)  # forget the least recently active key
        else:
            self._events.move_to_end(key)
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def retry_after(self, key: str, now: float) -> float:
        """0 if ``key`` is under its limit, else seconds until one event leaves the window."""
        with self._lock:
            q = self._trim(key, now)
            if len(q) < self.limit:
                return 0.0
            return max(0.0, q[0] + self.window_s - now)

    def add(self, key: str, now: float) -> None:
        with self._lock:
            self._trim(key, now).append(now)

    def hit(self, key: str, now: float) -> float:
        """Record an event if allowed and return 0; else record nothing, return the wait."""
        with self._lock:
            q = self._trim(key, now)
            if len(q) >= self.limit:
                return max(0.0, q[0] + self.window_s - now)
            q.append(now)
            return 0.0
