"""Line batches into InfluxDB: one request per batch, jittered backoff while it fails.

While InfluxDB is failing, ``write`` refuses at once until the backoff delay has passed
(the caller spools or holds the batch meanwhile), so a dead server costs one attempt per
delay, not one per batch. A batch the server refuses as a whole (400/413) is split in
halves until the one line it will never take (a field type conflict) is found: that
line is dead-lettered and the rest stored.
"""

from __future__ import annotations

import logging
import random
import time

from broker_bridge.rejects import Rejects
from broker_bridge.stats import WriteStats
from cizo import protocol
from telemetry.errors import InfluxError, InfluxQueryError, InfluxUnavailable, InfluxWriteRejected
from telemetry.influx import InfluxClient

log = logging.getLogger(__name__)

INFLUX_REJECTED = "influx_rejected"  # a single line the server refused (e.g. type conflict)


def full_jitter(attempt: int, base_s: float, cap_s: float) -> float:
    """Exponential backoff with full jitter, so many clients never retry in lockstep."""
    return random.uniform(0, min(cap_s, base_s * 2 ** min(attempt, 30)))


class InfluxWriter:
    """Writes ``(kit_id, line)`` batches; remembers whether InfluxDB is up."""

    def __init__(self, influx: InfluxClient, rejects: Rejects, stats: WriteStats, *,
                 retry_base_s: float, retry_max_s: float) -> None:
        self.influx = influx
        self.rejects = rejects
        self.stats = stats
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self._db_ready = False
        self._attempt = 0  # consecutive failures
        self._retry_at = 0.0  # monotonic time before which writes are refused at once

    @property
    def up(self) -> bool:
        """False from a failed request until the next successful one."""
        return self._attempt == 0

    @property
    def backing_off(self) -> bool:
        return time.monotonic() < self._retry_at

    def ensure_database(self) -> None:
        """Create the database once; on 2.x/3.x the refusal (4xx) is expected."""
        if self._db_ready:
            return
        if self.influx.write_api == "v2":
            self._db_ready = True  # buckets are created by the operator on 2.x
            return
        try:
            self.influx.create_database()
        except InfluxQueryError as exc:
            log.warning("CREATE DATABASE %s refused (%s); assuming it exists (bucket/DBRP "
                        "on InfluxDB 2.x/3.x)", self.influx.db, exc)
        self._db_ready = True

    def write(self, lines: list[tuple[str, str]], what: str) -> bool:
        """One write attempt (none while backing off); True once stored."""
        if self.backing_off:
            return False
        try:
            self.ensure_database()
            started = time.monotonic()
            written, rejected = self._write_lines(lines)
        except (InfluxUnavailable, InfluxWriteRejected, InfluxQueryError) as exc:
            self._failed(exc, what)
            return False
        self._attempt = 0
        self.stats.influx_write(written, rejected, time.monotonic() - started)
        return True

    def _failed(self, exc: InfluxError, what: str) -> None:
        if isinstance(exc, InfluxWriteRejected) and exc.status_code == 404:
            self._db_ready = False  # "database not found": create it, then retry
        self._attempt += 1
        delay = full_jitter(self._attempt, self.retry_base_s, self.retry_max_s)
        self._retry_at = time.monotonic() + delay
        self.stats.write_failed()
        log.warning("influx %s failed (attempt %d): %s; next try in %.2f s", what,
                    self._attempt, exc, delay)

    def _write_lines(self, lines: list[tuple[str, str]]) -> tuple[int, int]:
        """Write ``(kit_id, line)`` pairs; returns (written, rejected).

        Anything but a 400/413 propagates for a retry of the whole batch; rewrites are
        idempotent (a point is identified by measurement, kit and time).
        """
        body = "\n".join([line for _, line in lines]).encode()
        try:
            self.influx.write(body)
            return len(lines), 0
        except InfluxWriteRejected as exc:
            if exc.status_code not in (400, 413):
                raise
            if len(lines) == 1:
                kit_id, line = lines[0]
                letter = self.rejects.reject(kit_id, INFLUX_REJECTED, exc.error,
                                             protocol.telemetry_topic(kit_id), line.encode())
                if not self.rejects.store([letter]):
                    raise InfluxUnavailable("dead-letter store unavailable") from exc
                return 0, 1
            log.warning("influx refused a batch of %d lines (%s); splitting it", len(lines),
                        exc.error)
        half = len(lines) // 2
        w1, r1 = self._write_lines(lines[:half])
        w2, r2 = self._write_lines(lines[half:])
        return w1 + w2, r1 + r2
