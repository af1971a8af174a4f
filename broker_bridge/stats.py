"""The bridge's counters: updated by its threads, read as one ``BridgeStats`` snapshot.

``BridgeStats`` is what ``Bridge.stats()`` returns and what ``/metrics`` renders
(broker_bridge/metrics.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BridgeStats:
    """A snapshot of the bridge's counters (``Bridge.stats()``)."""

    messages_in: int
    written: int
    acked: int
    rejected: dict[str, int]
    rejected_total: int
    batches: int
    write_retries: int
    last_write_latency_s: float | None
    last_batch_lines: int
    queue_depth: int
    connected: bool
    spooled: int = 0
    replayed: int = 0
    deadlettered: int = 0
    spool_bytes: int = 0
    spool_records: int = 0
    write_latency_sum_s: float = 0.0
    lag_s: float | None = None
    influx_up: bool = True
    connects: int = 0  # successful broker connections since start
    replay_requests: int = 0  # kits asked to publish again what a broker may have dropped


@dataclass(frozen=True, slots=True)
class WriteSnapshot:
    """The write-side counters at one moment (a consistent set, taken under one lock)."""

    written: int
    acked: int
    batches: int
    write_retries: int
    spooled: int
    replayed: int
    last_write_latency_s: float | None
    write_latency_sum_s: float
    lag_s: float | None
    last_batch_lines: int


class WriteStats:
    """Counters of the write side (writer thread), read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._written = 0
        self._acked = 0
        self._batches = 0
        self._write_retries = 0
        self._spooled = 0
        self._replayed = 0
        self._last_latency: float | None = None
        self._latency_sum = 0.0
        self._lag: float | None = None
        self._last_batch_lines = 0

    def influx_write(self, written: int, rejected: int, latency_s: float) -> None:
        """One successful InfluxDB request (``rejected``: lines it refused, dead-lettered)."""
        with self._lock:
            self._last_latency = latency_s
            self._latency_sum += latency_s
            self._last_batch_lines = written + rejected
            self._batches += 1
            self._written += written

    def write_failed(self) -> None:
        with self._lock:
            self._write_retries += 1

    def spooled(self, lines: int) -> None:
        with self._lock:
            self._spooled += lines

    def replayed(self, lines: int) -> None:
        with self._lock:
            self._replayed += lines

    def acked(self, messages: int) -> None:
        with self._lock:
            self._acked += messages

    def durable(self, lag_s: float) -> None:
        """A batch became durable ``lag_s`` after its first message arrived."""
        with self._lock:
            self._lag = lag_s

    def snapshot(self) -> WriteSnapshot:
        with self._lock:
            return WriteSnapshot(
                written=self._written, acked=self._acked, batches=self._batches,
                write_retries=self._write_retries, spooled=self._spooled,
                replayed=self._replayed, last_write_latency_s=self._last_latency,
                write_latency_sum_s=self._latency_sum, lag_s=self._lag,
                last_batch_lines=self._last_batch_lines)
