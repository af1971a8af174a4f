"""MQTT -> InfluxDB bridge: kit telemetry and status in, line-protocol batches out.

The rule that shapes everything here: a message is acknowledged to the broker only
once it is durable: written to InfluxDB, appended to the fsynced local spool, or (if
refused) stored in the dead-letter store. If the bridge dies, every message not yet
durable is still held by the broker in our persistent session and redelivered.

``Bridge`` only wires the parts together:

* ``session.MqttSession``: connect, subscribe, reconnect with jitter, batched PUBACKs;
* ``decoding.Decoder`` (paho's network thread): topic + payload -> line or dead letter;
* ``writer.BatchWriter`` (its own thread): batches -> durable -> acknowledged;
* ``spooling.DurableLines`` and ``influx_writer.InfluxWriter``: InfluxDB with backoff,
  else the disk spool, replayed later;
* ``rejects.Rejects`` and ``deadletter.DeadLetterStore``: refused messages, kept;
* ``registry.KitRegistry``: which kits exist (optional);
* ``stats`` and ``metrics``: counters, ``/metrics``.

A redelivered identical message is written again; that is harmless because a point is
identified by measurement, ``kit_id`` and timestamp. A *different* reading with the same
kit and timestamp, or a reused ``(boot, seq)``, is dead-lettered (broker_bridge.dedup).
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from sqlalchemy.exc import SQLAlchemyError

from broker_bridge.deadletter import DeadLetterStore
from broker_bridge.decoding import Decoder
from broker_bridge.dedup import RecentReadings
from broker_bridge.influx_writer import InfluxWriter
from broker_bridge.metrics import MetricsServer
from broker_bridge.registry import KitRegistry
from broker_bridge.rejects import LogLimiter, RejectCounters, Rejects
from broker_bridge.session import MqttSession
from broker_bridge.spool import Spool
from broker_bridge.spooling import DurableLines
from broker_bridge.stats import BridgeStats, WriteStats
from broker_bridge.writer import BatchWriter
from cizo.clock import Clock
from cizo.settings import Settings
from telemetry.errors import InfluxError
from telemetry.influx import InfluxClient

log = logging.getLogger(__name__)

MAX_RECEIVE_MAXIMUM = 65_535  # MQTT v5 limit on the Receive Maximum property
RECEIVE_MAXIMUM_BATCHES = 2  # default window: batches in flight between broker and InfluxDB


def _safe_dirname(client_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", client_id) or "bridge"


class Bridge:
    """Subscribes to every kit's telemetry and status and stores them in InfluxDB."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        *,
        client_id: str = "cizo-bridge",
        shared_group: str | None = None,
        influx: InfluxClient | None = None,
        session_expiry_s: int = 7 * 24 * 3600,
        receive_maximum: int | None = None,
        retry_base_s: float = 0.2,
        retry_max_s: float = 10.0,
        reconnect_max_s: int = 60,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self.influx = influx if influx is not None else InfluxClient.from_settings(settings)
        self._owns_influx = influx is None
        batch_lines = max(1, settings.influx_batch_lines)
        # Mosquitto keeps at most Receive Maximum unacked QoS1 messages in flight to us
        # (without it, its max_inflight_messages: 20 by default): sized so that batches
        # waiting for their write do not stall delivery.
        self.receive_maximum = min(
            MAX_RECEIVE_MAXIMUM,
            receive_maximum or settings.bridge_receive_maximum
            or max(1_000, RECEIVE_MAXIMUM_BATCHES * batch_lines),
        )
        self.spool_dir = (settings.bridge_spool_dir or settings.data_dir / "spool") \
            / _safe_dirname(client_id)
        self.deadletter_dir = settings.bridge_deadletter_dir or settings.data_dir / "deadletter"
        self.deadletters: DeadLetterStore | None = None
        self.registry: KitRegistry | None = None
        self.metrics: MetricsServer | None = None
        self.spool: Spool | None = None

        self.counters = RejectCounters()
        self._limiter = LogLimiter()
        self._rejects = Rejects(self.counters, self._limiter)
        self._write_stats = WriteStats()
        self._decoder = Decoder(clock, self._rejects,
                                RecentReadings(settings.bridge_dedup_entries))
        self.session = MqttSession(
            settings, self._on_message, clock=clock, client_id=client_id,
            shared_group=shared_group,
            session_expiry_s=session_expiry_s, receive_maximum=self.receive_maximum,
            reconnect_max_s=reconnect_max_s)
        self._influx_writer = InfluxWriter(self.influx, self._rejects, self._write_stats,
                                           retry_base_s=retry_base_s, retry_max_s=retry_max_s)
        self._durable = DurableLines(self._influx_writer, None, self._write_stats,
                                     self._limiter)  # the spool is opened by start()
        self._writer = BatchWriter(
            self.session, self._durable, self._rejects, self._write_stats, self._limiter,
            batch_lines=batch_lines, flush_interval_s=settings.influx_flush_interval_s,
            retry_base_s=retry_base_s, retry_max_s=retry_max_s,
            kit_ts_slack_s=settings.bridge_kit_ts_slack_s)
        self._accepting = threading.Event()
        self._messages_in = 0  # only the network thread writes it
        self._started = False

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """paho's network thread, every message: decode and hand to the writer."""
        received = time.monotonic()
        self._messages_in += 1
        if not self._accepting.is_set():
            return  # stopping: left unacknowledged, the broker redelivers it next session
        self._writer.put(self._decoder.decode(msg, self.session.epoch, received))

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Open the spool and dead letters, connect (retrying in the background), start
        the writer and the metrics server; returns at once."""
        if self._started:
            raise RuntimeError("Bridge.start() called twice")
        self._started = True
        s = self.settings
        if s.bridge_spool_max_bytes > 0:
            self.spool = self._durable.spool = Spool(self.spool_dir, s.bridge_spool_max_bytes)
        self.deadletters = self._rejects.deadletters = DeadLetterStore(
            self.deadletter_dir, max_rows=s.bridge_deadletter_max_rows,
            payload_bytes=s.bridge_deadletter_payload_bytes, bridge=self.client_id)
        if s.bridge_kit_registry:
            self.registry = self._writer.registry = _open_registry(s.database_url)
        if s.bridge_metrics_port is not None:
            self.metrics = MetricsServer(s.bridge_metrics_host, s.bridge_metrics_port,
                                         self.stats)
            self.metrics.start()
        try:
            self._influx_writer.ensure_database()
        except InfluxError as exc:
            log.warning("influx not ready at start (%s); the writer will retry", exc)
        self._accepting.set()
        self._writer.start()
        self.session.start()
        log.info("bridge started client_id=%s broker=%s influx=%s db=%s spool=%s",
                 self.client_id, s.mqtt_url, self.influx.url, self.influx.db,
                 self.spool_dir if self.spool is not None else "off")

    def wait_subscribed(self, timeout_s: float = 10.0) -> bool:
        """True once the broker granted the subscriptions on the current connection."""
        return self.session.wait_subscribed(timeout_s)

    @property
    def metrics_port(self) -> int | None:
        return self.metrics.port if self.metrics is not None else None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop taking messages, make what is queued durable and ack it, then disconnect.

        Queued messages go to InfluxDB or, if it is down, to the spool. If neither takes
        them within ``timeout_s``, they stay unacknowledged: the broker keeps them in our
        session and redelivers them on the next start.
        """
        if not self._started:
            return
        self._accepting.clear()
        self.session.stopping()
        self._writer.stop(timeout_s)
        self.session.close()
        if self.metrics is not None:
            self.metrics.stop()
        if self.spool is not None:
            _close_spool(self.spool, self.spool_dir)
        if self.deadletters is not None:
            self.deadletters.close()
        if self.registry is not None:
            self.registry.close()
        if self._owns_influx:
            self.influx.close()
        log.info("bridge stopped: %s", self.stats())

    def run_forever(self, stop_event: threading.Event) -> None:
        """Run until ``stop_event`` is set, then stop cleanly."""
        self.start()
        try:
            stop_event.wait()
        finally:
            self.stop()

    def stats(self) -> BridgeStats:
        w = self._write_stats.snapshot()
        spool = self.spool
        rejected = self.counters.reasons()
        return BridgeStats(
            messages_in=self._messages_in, written=w.written, acked=w.acked,
            rejected=rejected, rejected_total=sum(rejected.values()), batches=w.batches,
            write_retries=w.write_retries, last_write_latency_s=w.last_write_latency_s,
            last_batch_lines=w.last_batch_lines,
            queue_depth=len(self._writer.items),
            connected=self.session.connected, spooled=w.spooled, replayed=w.replayed,
            deadlettered=self._rejects.stored,
            spool_bytes=spool.size_bytes if spool is not None else 0,
            spool_records=spool.records if spool is not None else 0,
            write_latency_sum_s=w.write_latency_sum_s, lag_s=w.lag_s,
            influx_up=self._influx_writer.up, connects=self.session.epoch,
            replay_requests=self.session.replay_requests,
        )


def _open_registry(database_url: str) -> KitRegistry:
    registry = KitRegistry.from_url(database_url)
    try:
        log.info("kit registry: %d kits known", registry.load_all())
    except SQLAlchemyError as exc:
        log.warning("cannot read the kits table at start (%s); looking kits up per batch",
                    type(exc).__name__)
    return registry


def _close_spool(spool: Spool, spool_dir: Path) -> None:
    spool.close()
    if not spool:
        shutil.rmtree(spool_dir, ignore_errors=True)  # nothing left to replay
        with contextlib.suppress(OSError):  # other bridges' spools: keep the root
            spool_dir.parent.rmdir()
