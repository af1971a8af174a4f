"""Simulated time: one accelerated clock shared by the whole platform, and kit clocks that drift.

``AcceleratedClock`` runs ``speed`` simulated seconds per real second from a chosen start;
the control service (``build_app(settings, clock)``), the PayGate simulator
(``PayGateSimConfig.clock``) and every simulated kit read the same object, so a month of
credit, sweeps, payments and fail-safe locks happens in minutes and all parts agree on
"now". It can be paused (the end-of-run check freezes time so credit does not run out
while it is being compared) and is thread-safe (uvicorn, APScheduler and the fleet's
event loop read it from different threads). See docs/simulation.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

from cizo.clock import Clock


class AcceleratedClock:
    """``now() = start + speed * (real seconds elapsed while running)``, never past
    ``until`` when given: at a high speed a few milliseconds of a late event loop are
    minutes simulated, and a history that must end at the wall clock's now would otherwise
    stamp its last payments in the future."""

    def __init__(self, start: float, speed: float = 1.0, *, until: float | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = float(speed)
        self.until = until
        self._lock = threading.Lock()
        self._base_sim = float(start)
        self._base_real: float | None = time.monotonic()

    def _capped(self, t: float) -> float:
        return t if self.until is None else min(t, self.until)

    def now(self) -> float:
        with self._lock:
            if self._base_real is None:
                return self._base_sim
            return self._capped(
                self._base_sim + (time.monotonic() - self._base_real) * self.speed)

    def pause(self) -> None:
        with self._lock:
            if self._base_real is not None:
                self._base_sim = self._capped(
                    self._base_sim + (time.monotonic() - self._base_real) * self.speed)
                self._base_real = None

    def resume(self) -> None:
        with self._lock:
            if self._base_real is None:
                self._base_real = time.monotonic()

    @property
    def paused(self) -> bool:
        with self._lock:
            return self._base_real is None

    def real_seconds(self, sim_seconds: float) -> float:
        """How long ``sim_seconds`` of simulated time takes on the wall clock."""
        return sim_seconds / self.speed


class DriftingClock:
    """A kit's own RTC: set from ``base`` at boot with an offset, then drifting in ppm.

    A cheap crystal drifts 20-100 ppm (2-9 s a day); the fail-safe lock and command
    expiry are judged on this clock, not the server's.
    """

    def __init__(self, base: Clock, drift_ppm: float = 0.0, offset_s: float = 0.0) -> None:
        self.base = base
        self.drift_ppm = drift_ppm
        self.offset_s = offset_s
        self._t0 = base.now()

    def now(self) -> float:
        t = self.base.now()
        return t + self.offset_s + (t - self._t0) * self.drift_ppm * 1e-6


def clock_speed(clock: Clock) -> float:
    """Simulated seconds per real second (1 for a clock that is not accelerated)."""
    speed = getattr(clock, "speed", 1.0)
    return float(speed) if isinstance(speed, int | float) and speed > 0 else 1.0


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` of real time, or return True early if ``stop`` is set. Yields to
    the event loop even for nothing to wait: a kit's loop must never starve the others."""
    if seconds <= 0:
        await asyncio.sleep(0)
        return stop.is_set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
