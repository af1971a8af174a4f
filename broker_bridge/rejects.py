"""Refused messages: counted per reason and kit, logged at a bounded rate, dead-lettered.

Both bridge threads refuse messages: the MQTT network thread (contract violations,
conflicting readings) and the writer (unknown kits, lines InfluxDB refuses). A refused
message is acknowledged only once its dead letter is stored (``Rejects.store``).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter, OrderedDict

from broker_bridge.deadletter import DeadLetter, DeadLetterStore

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0  # one WARNING per reason (or condition) at most this often


class LogLimiter:
    """Says whether a WARNING for ``key`` is due: at most one every ``every_s`` seconds,
    so a flood of bad input cannot flood the log."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}

    def due(self, key: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(key, -self.every_s) >= self.every_s:
            self._last[key] = now
            return True
        return False

    def warning(self, key: str, message: str, *args: object) -> None:
        """``log.warning(message, *args)`` if due for ``key``, else DEBUG."""
        log.log(logging.WARNING if self.due(key) else logging.DEBUG, message, *args)


class RejectCounters:
    """Invalid messages per reason, and per kit for the most recently seen kits.

    Per-kit counts are kept for at most ``max_kits`` kits (least recently rejected are
    dropped) so a flood of made-up kit ids cannot exhaust memory.
    """

    def __init__(self, max_kits: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._max_kits = max_kits
        self.by_reason: Counter[str] = Counter()
        self.by_kit: OrderedDict[str, Counter[str]] = OrderedDict()

    def add(self, kit_id: str, reason: str) -> None:
        with self._lock:
            self.by_reason[reason] += 1
            per_kit = self.by_kit.get(kit_id)
            if per_kit is None:
                per_kit = self.by_kit[kit_id] = Counter()
                if len(self.by_kit) > self._max_kits:
                    self.by_kit.popitem(last=False)
            else:
                self.by_kit.move_to_end(kit_id)
            per_kit[reason] += 1

    def reasons(self) -> dict[str, int]:
        with self._lock:
            return dict(self.by_reason)

    def for_kit(self, kit_id: str) -> dict[str, int]:
        with self._lock:
            return dict(self.by_kit.get(kit_id, {}))

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.by_reason.values())


class Rejects:
    """Turns a refusal into a counted, logged ``DeadLetter``, and stores dead letters."""

    def __init__(self, counters: RejectCounters, limiter: LogLimiter) -> None:
        self.counters = counters
        self.limiter = limiter
        self.deadletters: DeadLetterStore | None = None  # opened by the bridge's start()
        self._lock = threading.Lock()
        self._stored = 0

    def reject(self, kit_id: str, reason: str, detail: str, topic: str,
               payload: bytes) -> DeadLetter:
        self.counters.add(kit_id, reason)
        if self.limiter.due(reason):
            log.warning("rejected message kit_id=%s reason=%s detail=%s (further rejects of "
                        "this reason for %.0f s at DEBUG; see cizo deadletter list)",
                        kit_id, reason, detail[:200], self.limiter.every_s,
                        extra={"kit_id": kit_id})
        else:
            log.debug("rejected message kit_id=%s reason=%s detail=%s", kit_id, reason,
                      detail[:200], extra={"kit_id": kit_id})
        return DeadLetter(received_at=time.time(), kit_id=kit_id, reason=reason, detail=detail,
                          topic=topic, payload=payload)

    def store(self, letters: list[DeadLetter]) -> bool:
        """Store letters durably; False (logged) if the store failed: retry, do not ack."""
        if not letters:
            return True
        if self.deadletters is None:
            return True  # not started (unit use): counted and logged only
        try:
            self.deadletters.add_many(letters)
        except sqlite3.Error:
            log.exception("cannot store %d dead letters in %s; retrying", len(letters),
                          self.deadletters.path)
            return False
        with self._lock:
            self._stored += len(letters)
        return True

    @property
    def stored(self) -> int:
        with self._lock:
            return self._stored
