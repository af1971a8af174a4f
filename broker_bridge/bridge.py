"""MQTT -> InfluxDB bridge: kit telemetry and status in, line-protocol batches out.

The rule that shapes everything here: a message is acknowledged to the broker only
after its point is written (or after it is judged invalid for good). The client runs
with ``manual_ack=True`` and a persistent session, so if the bridge dies, or InfluxDB is
down, every unwritten message is still held by Mosquitto and redelivered.

Threads:
  * paho's network thread runs ``_on_message``: parse, encode, enqueue; never blocks
    on I/O, so keepalives keep flowing while InfluxDB is slow.
  * the writer thread batches up to ``influx_batch_lines`` items or
    ``influx_flush_interval_s``, writes one HTTP request per batch, retries with jittered
    backoff while InfluxDB is unavailable, then acknowledges the batch in receive order.

A redelivered message is written again; that is harmless because a point is identified
by measurement, ``kit_id`` and timestamp, so a rewrite replaces it with the same values.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from cizo import protocol
from cizo.clock import Clock
from cizo.settings import Settings
from telemetry.errors import InfluxError, InfluxQueryError, InfluxUnavailable, InfluxWriteRejected
from telemetry.influx import InfluxClient
from telemetry.schema import LineProtocolError, encode_line, encode_status_line

log = logging.getLogger(__name__)

TELEMETRY_FILTER = f"{protocol.TOPIC_ROOT}/+/{protocol.TELEMETRY}"
STATUS_FILTER = f"{protocol.TOPIC_ROOT}/+/{protocol.STATUS}"
INFLUX_REJECTED = "influx_rejected"  # a single line the server refused (e.g. type conflict)
INTERNAL_ERROR = "internal_error"  # a bug in our own parsing code (logged with traceback)
_MAX_RECEIVE_MAXIMUM = 65_535  # MQTT v5 limit on the Receive Maximum property


class _Item(NamedTuple):
    """One received message on its way to InfluxDB and then to its ack."""

    epoch: int  # connection generation it arrived on: acks only go back on that one
    mid: int
    qos: int
    line: str | None  # None: invalid, acked without a write
    kit_id: str


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


def _full_jitter(attempt: int, base_s: float, cap_s: float) -> float:
    """Exponential backoff with full jitter, so many clients never retry in lockstep."""
    return random.uniform(0, min(cap_s, base_s * 2 ** min(attempt, 30)))


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
        self.clock = clock
        self.client_id = client_id
        self.shared_group = shared_group
        self.influx = influx if influx is not None else InfluxClient.from_settings(settings)
        self._owns_influx = influx is None
        self.session_expiry_s = session_expiry_s
        # Mosquitto keeps at most Receive Maximum unacked QoS1 messages in flight to us
        # (without it, its max_inflight_messages: 20 by default): size it so that a
        # full batch can be waiting for its write without stalling delivery.
        self.batch_lines = max(1, settings.influx_batch_lines)
        self.receive_maximum = min(
            _MAX_RECEIVE_MAXIMUM, receive_maximum or max(1_000, 2 * self.batch_lines)
        )
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.reconnect_max_s = max(1, reconnect_max_s)

        self.counters = RejectCounters()
        # Items in flight on one connection are bounded by Receive Maximum; stale ones
        # from earlier connections are purged when the broker kept our session. Twice
        # that bound leaves room for one connection's worth of leftovers.
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=2 * self.receive_maximum + 16)

        self._conn_lock = threading.Lock()
        self._epoch = 0
        self._connected = False
        self._purge_before = 0  # items from epochs below this are redelivered by the broker
        self._reconnect_attempt = 0
        self._subscribed = threading.Event()
        self._accepting = threading.Event()
        self._stopping = threading.Event()
        self._abandon = threading.Event()
        self._db_ready = False
        self._writer: threading.Thread | None = None
        self._started = False

        self._stats_lock = threading.Lock()
        self._messages_in = 0
        self._written = 0
        self._acked = 0
        self._batches = 0
        self._write_retries = 0
        self._last_latency: float | None = None
        self._last_batch_lines = 0

        self.client = self._make_client()

    # --- MQTT client ------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if s.mqtt_username:
            client.username_pw_set(
                s.mqtt_username,
                s.mqtt_password.get_secret_value() if s.mqtt_password else None,
            )
        if s.mqtt_tls_ca is not None:
            client.tls_set(ca_certs=str(s.mqtt_tls_ca))
        client.reconnect_delay_set(1, self.reconnect_max_s)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _filters(self) -> list[str]:
        filters = [TELEMETRY_FILTER, STATUS_FILTER]
        if self.shared_group:
            filters = [f"$share/{self.shared_group}/{f}" for f in filters]
        return filters

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        with self._conn_lock:
            self._epoch += 1
            self._connected = True
            if flags.session_present:
                # The broker redelivers everything we have not acknowledged: drop our
                # copies instead of holding (and writing) them twice.
                self._purge_before = self._epoch
            self._reconnect_attempt = 0
        client.reconnect_delay_set(1, self.reconnect_max_s)
        log.info("connected to broker %s client_id=%s session_present=%s",
                 self.settings.mqtt_url, self.client_id, flags.session_present)
        # Always (re)subscribe: cheap, and the only way to be sure after a broker that
        # lost its state (the Telegraf failure mode in docs/telemetry.md).
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        result, _mid = client.subscribe([(f, options) for f in self._filters()])
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.error("subscribe request failed: %s", mqtt.error_string(result))

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("broker refused subscriptions %s: %s", self._filters(), failed)
            return
        log.info("subscribed to %s", self._filters())
        self._subscribed.set()

    def _next_reconnect_delay(self, client: mqtt.Client) -> int:
        with self._conn_lock:
            self._reconnect_attempt += 1
            attempt = self._reconnect_attempt
        # paho only takes whole seconds; full jitter between 1 s and the capped doubling.
        delay = random.randint(1, max(1, min(self.reconnect_max_s, 2 ** min(attempt, 16))))
        client.reconnect_delay_set(delay, delay)
        return delay

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._conn_lock:
            self._connected = False
        self._subscribed.clear()
        if self._stopping.is_set() and not self._accepting.is_set():
            log.info("disconnected from broker (stopping)")
            return
        delay = self._next_reconnect_delay(client)
        log.warning("disconnected from broker: %s; reconnecting in %d s", reason_code, delay)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        delay = self._next_reconnect_delay(client)
        log.warning("cannot reach broker %s; retrying in %d s", self.settings.mqtt_url, delay)

    # --- receive path (paho network thread: must not block) ---------------------------

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._stats_lock:
            self._messages_in += 1
        if not self._accepting.is_set():
            return  # stopping: left unacknowledged, the broker redelivers it next session
        kit_id = "?"
        line: str | None = None
        try:
            topic = protocol.parse_topic(msg.topic)
            kit_id = topic.kit_id
            payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload)
            if topic.kind == protocol.TELEMETRY:
                line = encode_line(protocol.parse_telemetry(kit_id, payload, self.clock.now()))
            elif topic.kind == protocol.STATUS:
                status = protocol.parse_status(payload)
                line = encode_status_line(kit_id, status, int(self.clock.now()))
            else:
                raise protocol.ContractError("bad_topic", msg.topic)
        except protocol.ContractError as exc:
            self._reject(kit_id, exc.reason, exc.detail)
        except LineProtocolError as exc:
            self._reject(kit_id, exc.reason, str(exc))
        except UnicodeDecodeError as exc:  # paho raises this for a non-UTF-8 topic
            self._reject(kit_id, "bad_topic", str(exc))
        except Exception:
            # A bug of ours must not stall ingestion (an unacked message would hold an
            # in-flight slot forever); it is logged with its traceback and counted.
            log.exception("unexpected error handling message kit_id=%s mid=%d", kit_id, msg.mid)
            self.counters.add(kit_id, INTERNAL_ERROR)
        item = _Item(self._epoch, msg.mid, msg.qos, line, kit_id)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            # Unreachable while Receive Maximum bounds what is in flight; block rather
            # than drop, and say so.
            log.error("bridge queue full (%d items): blocking the network thread",
                      self._queue.qsize())
            self._queue.put(item)

    def _reject(self, kit_id: str, reason: str, detail: str) -> None:
        self.counters.add(kit_id, reason)
        log.warning("rejected message kit_id=%s reason=%s detail=%s", kit_id, reason, detail)

    # --- write path (writer thread) ---------------------------------------------------

    def _ensure_database(self) -> None:
        """Create the database once; on 2.x/3.x the refusal (4xx) is expected."""
        if self._db_ready:
            return
        try:
            self.influx.create_database()
        except InfluxQueryError as exc:
            log.warning("CREATE DATABASE %s refused (%s); assuming it exists (bucket/DBRP "
                        "on InfluxDB 2.x/3.x)", self.influx.db, exc)
        self._db_ready = True

    def _writer_main(self) -> None:
        batch: list[_Item] = []
        while True:
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stopping.is_set():
                    break
                continue
            batch.append(first)
            deadline = time.monotonic() + self.settings.influx_flush_interval_s
            while len(batch) < self.batch_lines:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except queue.Empty:
                    pass
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping.is_set():
                    break
                try:
                    batch.append(self._queue.get(timeout=remaining))
                except queue.Empty:
                    break
            self._flush(batch)
            batch = []
        log.debug("writer thread finished")

    def _drop_redelivered(self, batch: list[_Item]) -> list[_Item]:
        with self._conn_lock:
            purge_before = self._purge_before
        if batch and batch[0].epoch >= purge_before:
            return batch
        kept = [it for it in batch if it.epoch >= purge_before]
        log.info("dropped %d items the broker redelivers on the new session",
                 len(batch) - len(kept))
        return kept

    def _flush(self, batch: list[_Item]) -> None:
        """Write one batch until it is stored, then acknowledge it; never ack unwritten."""
        attempt = 0
        while True:
            batch = self._drop_redelivered(batch)
            if not batch:
                return
            written = rejected = 0
            try:
                if any(it.line is not None for it in batch):
                    self._ensure_database()
                    started = time.monotonic()
                    written, rejected = self._write_items([it for it in batch if it.line])
                    with self._stats_lock:
                        self._last_latency = time.monotonic() - started
                        self._last_batch_lines = written + rejected
                        self._batches += 1
                        self._written += written
                break
            except (InfluxUnavailable, InfluxWriteRejected, InfluxQueryError) as exc:
                if isinstance(exc, InfluxWriteRejected) and exc.status_code == 404:
                    self._db_ready = False  # "database not found": create it, then retry
                attempt += 1
                with self._stats_lock:
                    self._write_retries += 1
                if self._abandon.is_set():
                    log.warning("giving up on %d unwritten messages at shutdown; left "
                                "unacknowledged for redelivery: %s", len(batch), exc)
                    return
                delay = _full_jitter(attempt, self.retry_base_s, self.retry_max_s)
                log.warning("influx write of %d lines failed (attempt %d): %s; retrying in "
                            "%.2f s", len(batch), attempt, exc, delay)
                self._abandon.wait(delay)
        self._ack(batch)

    def _write_items(self, items: list[_Item]) -> tuple[int, int]:
        """Write items' lines; returns (written, rejected).

        A 400/413 for a batch is narrowed down by halving, so one line the server will
        never take (a field type conflict) is rejected alone and the rest is stored.
        Anything else propagates for a retry of the whole batch; rewrites are idempotent.
        """
        body = "\n".join([it.line for it in items if it.line]).encode()
        try:
            self.influx.write(body)
            return len(items), 0
        except InfluxWriteRejected as exc:
            if exc.status_code not in (400, 413):
                raise
            if len(items) == 1:
                self._reject(items[0].kit_id, INFLUX_REJECTED, exc.error)
                return 0, 1
            log.warning("influx refused a batch of %d lines (%s); splitting it", len(items),
                        exc.error)
        half = len(items) // 2
        w1, r1 = self._write_items(items[:half])
        w2, r2 = self._write_items(items[half:])
        return w1 + w2, r1 + r2

    def _ack(self, batch: list[_Item]) -> None:
        acked = 0
        with self._conn_lock:
            # Acks only make sense on the connection the message came in on; older
            # ones are either redelivered (persistent session) or gone from the broker.
            if self._connected:
                epoch = self._epoch
                for it in batch:
                    if it.epoch == epoch and it.qos > 0:
                        self.client.ack(it.mid, it.qos)
                        acked += 1
        with self._stats_lock:
            self._acked += acked

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Connect (retrying in the background) and start the writer; returns at once."""
        if self._started:
            raise RuntimeError("Bridge.start() called twice")
        self._started = True
        try:
            self._ensure_database()
        except InfluxError as exc:
            log.warning("influx not ready at start (%s); the writer will retry", exc)
        self._accepting.set()
        self._writer = threading.Thread(target=self._writer_main, name="bridge-writer",
                                        daemon=True)
        self._writer.start()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.session_expiry_s
        props.ReceiveMaximum = self.receive_maximum
        self.client.connect_async(
            self.settings.mqtt_host,
            self.settings.mqtt_port,
            keepalive=self.settings.mqtt_keepalive_s,
            clean_start=False,
            properties=props,
        )
        self.client.loop_start()
        log.info("bridge started client_id=%s broker=%s influx=%s db=%s",
                 self.client_id, self.settings.mqtt_url, self.influx.url, self.influx.db)

    def wait_subscribed(self, timeout_s: float = 10.0) -> bool:
        """True once the broker granted the subscriptions on the current connection."""
        return self._subscribed.wait(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop taking messages, write and ack what is queued, then disconnect.

        If InfluxDB stays down past ``timeout_s``, the rest stays unacknowledged: the
        broker keeps it in our session and redelivers it on the next start.
        """
        if not self._started:
            return
        self._accepting.clear()
        self._stopping.set()
        if self._writer is not None:
            self._writer.join(timeout_s)
            if self._writer.is_alive():
                self._abandon.set()
                self._writer.join(30.0)
        with self._conn_lock:
            self._connected = False  # no ack may follow the DISCONNECT
        self.client.disconnect()  # queued PUBACKs go out before the DISCONNECT
        self.client.loop_stop()
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
        with self._stats_lock:
            messages_in = self._messages_in
            written, acked = self._written, self._acked
            batches, retries = self._batches, self._write_retries
            latency, last_lines = self._last_latency, self._last_batch_lines
        with self._conn_lock:
            connected = self._connected
        rejected = self.counters.reasons()
        return BridgeStats(
            messages_in=messages_in,
            written=written,
            acked=acked,
            rejected=rejected,
            rejected_total=sum(rejected.values()),
            batches=batches,
            write_retries=retries,
            last_write_latency_s=latency,
            last_batch_lines=last_lines,
            queue_depth=self._queue.qsize(),
            connected=connected,
        )
