"""Lines made durable: in InfluxDB, or in the local disk spool while it is down.

A batch the InfluxDB writer cannot store (down, or backing off) is appended to the
fsynced spool (broker_bridge/spool.py) and so may be acknowledged; the spool is
replayed, oldest first, once InfluxDB answers again. With the spool full (or off)
nothing is durable: the caller holds the batch unacknowledged and the backlog waits in
the broker (backpressure through Receive Maximum).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from broker_bridge.influx_writer import InfluxWriter
from broker_bridge.rejects import LogLimiter
from broker_bridge.spool import Spool
from broker_bridge.stats import WriteStats
from telemetry.schema import line_kit_id

log = logging.getLogger(__name__)

REPLAY_SLICE_S = 0.5  # longest one replay pass runs before the writer looks at live traffic


class DurableLines:
    """InfluxDB first, the spool second; replays the spool when InfluxDB is back."""

    def __init__(self, influx: InfluxWriter, spool: Spool | None, stats: WriteStats,
                 limiter: LogLimiter) -> None:
        self.influx = influx
        self.spool = spool
        self.stats = stats
        self.limiter = limiter

    def store(self, lines: list[tuple[str, str]], first_received: float) -> bool:
        """Write to InfluxDB, else append to the spool; True once durable in either."""
        durable = self.influx.write(lines, f"write of {len(lines)} lines")
        if not durable and self.spool is not None:
            durable = self._append(lines, self.spool)
        if durable:
            self.stats.durable(time.monotonic() - first_received)
        return durable

    def _append(self, lines: list[tuple[str, str]], spool: Spool) -> bool:
        body = "\n".join([line for _, line in lines]).encode()
        try:
            appended = spool.append(body)
        except OSError:
            log.exception("cannot append %d lines to the spool %s", len(lines), spool.dir)
            return False
        if appended:
            self.stats.spooled(len(lines))
        else:
            self.limiter.warning("spool_full", "spool %s is full (%d bytes): holding %d "
                                 "messages unacknowledged in the broker", spool.dir,
                                 spool.size_bytes, len(lines))
        return appended

    def replay_some(self, live_waiting: Callable[[], bool]) -> None:
        """Replay spooled batches for up to ``REPLAY_SLICE_S``, oldest first; stops early
        when InfluxDB fails or ``live_waiting()`` (live traffic goes first)."""
        spool = self.spool
        if spool is None or not spool or self.influx.backing_off:
            return
        deadline = time.monotonic() + REPLAY_SLICE_S
        while time.monotonic() < deadline:
            try:
                body = spool.peek()
            except OSError:
                log.exception("cannot read the spool %s", spool.dir)
                return
            if body is None:
                log.info("spool replayed completely")
                return
            lines = [(line_kit_id(line), line) for line in body.decode().split("\n")]
            if not self.influx.write(lines, f"replay of {len(lines)} spooled lines"):
                return
            spool.commit()
            self.stats.replayed(len(lines))
            if live_waiting():
                return
