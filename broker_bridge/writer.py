"""The writer thread: received messages in batches -> durable -> acknowledged.

A batch is up to ``influx_batch_lines`` messages or what arrived within
``influx_flush_interval_s``. Its refused messages are stored as dead letters, its lines
written to InfluxDB (or the spool), and only then is the batch acknowledged, in receive
order. What cannot be made durable is retried with jittered backoff and acknowledged
nothing meanwhile. Between batches, and whenever idle, the spool is replayed.

The queue from the network thread is a plain deque (atomic append/popleft) rather than
a ``queue.Queue``: profiling showed the Queue's condition variable (a lock and a notify
per message) as the bridge's largest cost after paho itself. The writer is woken only
when it sleeps idle. Items in flight on one connection are bounded by Receive Maximum,
so the deque needs no bound of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from broker_bridge.decoding import Received
from broker_bridge.influx_writer import full_jitter
from broker_bridge.registry import KitRegistry
from broker_bridge.rejects import LogLimiter, Rejects
from broker_bridge.session import MqttSession
from broker_bridge.spooling import DurableLines
from broker_bridge.stats import WriteStats

log = logging.getLogger(__name__)

UNKNOWN_KIT = "unknown_kit"  # not in the ledger's kits table (bridge_kit_registry)
TS_BEFORE_KIT = "ts_before_kit"  # stamped before the kit was provisioned (minus the slack)


class BatchWriter:
    """Batches ``Received`` items, makes them durable, acknowledges them."""

    def __init__(self, session: MqttSession, durable: DurableLines, rejects: Rejects,
                 stats: WriteStats, limiter: LogLimiter, *, batch_lines: int,
                 flush_interval_s: float, retry_base_s: float, retry_max_s: float,
                 registry: KitRegistry | None = None, kit_ts_slack_s: float = 0.0) -> None:
        self.session = session
        self.durable = durable
        self.rejects = rejects
        self.stats = stats
        self.limiter = limiter
        self.batch_lines = max(1, batch_lines)
        self.flush_interval_s = flush_interval_s
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.registry = registry
        self.kit_ts_slack_s = kit_ts_slack_s
        self.items: deque[Received] = deque()
        self._queue_warn_at = 2 * session.receive_maximum + 16
        self._wakeup = threading.Event()
        self._idle = False
        self._stopping = threading.Event()
        self._abandon = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bridge-writer", daemon=True)

    # --- network thread -------------------------------------------------------------

    def put(self, item: Received) -> None:
        items = self.items
        items.append(item)
        if self._idle:
            self._wakeup.set()
        if len(items) > self._queue_warn_at:  # Receive Maximum should make this impossible
            self.limiter.warning("queue_size", "bridge holds %d undurable items (more than "
                                 "Receive Maximum allows): is the broker ignoring it?",
                                 len(items))

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Flush what is queued; after ``timeout_s`` give up on what is not durable (left
        unacknowledged, so the broker redelivers it)."""
        self._stopping.set()
        self._wakeup.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._abandon.set()
            self._thread.join(30.0)

    # --- writer thread --------------------------------------------------------------

    def _run(self) -> None:
        items = self.items
        while True:
            if not items:
                if self._stopping.is_set():
                    break
                self._idle = True
                woken = self._wakeup.wait(0.1) if not items else True
                self._idle = False
                self._wakeup.clear()
                if not woken:
                    self.durable.replay_some(self._live_waiting)
                continue
            self._flush(self._next_batch())
            if not self._stopping.is_set():
                self.durable.replay_some(self._live_waiting)
        log.debug("writer thread finished")

    def _live_waiting(self) -> bool:
        return bool(self.items)

    def _next_batch(self) -> list[Received]:
        items, popleft, size = self.items, self.items.popleft, self.batch_lines
        batch: list[Received] = []
        deadline = time.monotonic() + self.flush_interval_s
        while True:
            while items and len(batch) < size:
                batch.append(popleft())
            if len(batch) >= size or self._stopping.is_set() or time.monotonic() >= deadline:
                return batch
            time.sleep(0.002)  # let the batch fill; cheaper than a wakeup per message

    def _flush(self, batch: list[Received]) -> None:
        """Make one batch durable (dead letters, then InfluxDB or the spool), then ack it."""
        batch = self._drop_redelivered(batch)
        if self.registry is not None and batch:
            batch = self._check_kits(batch, self.registry)
        dead_done = lines_done = False
        attempt = 0
        while batch:
            if not dead_done:
                dead_done = self.rejects.store([d for it in batch for d in it.dead])
            if not lines_done:
                lines = [(it.kit_id, line) for it in batch for line in it.lines]
                lines_done = not lines or self.durable.store(lines, batch[0].received)
            if dead_done and lines_done:
                break
            attempt += 1
            if self._abandon.is_set():
                log.warning("giving up on %d undurable messages at shutdown; left "
                            "unacknowledged for redelivery", len(batch))
                return
            self._abandon.wait(full_jitter(attempt, self.retry_base_s, self.retry_max_s))
            batch = self._drop_redelivered(batch)
        self.stats.acked(self.session.ack(batch))

    def _drop_redelivered(self, batch: list[Received]) -> list[Received]:
        purge_before = self.session.purge_before
        if batch and batch[0].epoch >= purge_before:
            return batch
        kept = [it for it in batch if it.epoch >= purge_before]
        log.info("dropped %d items the broker redelivers on the new session",
                 len(batch) - len(kept))
        return kept

    def _check_kits(self, batch: list[Received], registry: KitRegistry) -> list[Received]:
        """Dead-letter readings of unknown kits, or stamped before the kit existed (a v2
        message by its earliest reading: a kit does not straddle its own provisioning)."""
        created = registry.created_at([it.kit_id for it in batch if it.lines])
        if created is None:
            return batch  # cannot tell: store rather than lose (the registry logged why)
        slack = self.kit_ts_slack_s
        out = []
        for it in batch:
            if it.lines:
                since = created.get(it.kit_id)
                if since is None:
                    it = it._replace(lines=(), dead=(*it.dead, self.rejects.reject(
                        it.kit_id, UNKNOWN_KIT, "not in the kits table", it.topic,
                        it.payload)))
                elif it.ts and it.ts < since - slack:
                    it = it._replace(lines=(), dead=(*it.dead, self.rejects.reject(
                        it.kit_id, TS_BEFORE_KIT, f"ts={it.ts} provisioned={since:.0f}",
                        it.topic, it.payload)))
            out.append(it)
        return out
