"""Injectable time, so tests move the clock instead of sleeping for days.

All times in the platform are UTC unix seconds (``float`` inside, ``int`` on the wire).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Current UTC time in unix seconds."""
        ...


class SystemClock:
    """The real wall clock."""

    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that runs with the wall clock from an offset the caller can move.

    ``advance(days * 86400)`` jumps forward; time keeps flowing between jumps so code
    that waits for "a little later" still works.
    """

    def __init__(self, offset_s: float = 0.0) -> None:
        self._offset = offset_s
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return time.time() + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds

    def set(self, unix_s: float) -> None:
        with self._lock:
            self._offset = unix_s - time.time()


class FrozenClock:
    """A clock that only moves when told to (for pure unit tests)."""

    def __init__(self, start: float) -> None:
        self._t = start

    def now(self) -> float:
        return self._t

    def advance(self, seconds: float) -> None:
        self._t += seconds
