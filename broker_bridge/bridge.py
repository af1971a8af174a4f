"""MQTT -> InfluxDB bridge: kit telemetry and status in, line-protocol batches out.

The rule that shapes everything here: a message is acknowledged to the broker only
once it is durable: written to InfluxDB, appended to the fsynced local spool, or (if
refused) stored in the dead-letter store. The client runs with ``manual_ack=True`` and
a persistent session, so if the bridge dies every message not yet durable is still held
by the broker and redelivered.

Threads:
  * paho's network thread runs ``_on_message``: parse, encode, enqueue; never blocks
    on I/O, so keepalives keep flowing while InfluxDB is slow.
  * the writer thread batches up to ``influx_batch_lines`` items or
    ``influx_flush_interval_s``, stores the batch's refused messages in the dead-letter
    store, writes its lines in one HTTP request, then acknowledges the batch in receive
    order. While InfluxDB is unavailable the batch goes to the local disk spool instead
    (fsynced once per batch: group commit) and is acknowledged once durable there; the
    spool is replayed when InfluxDB answers again. If the spool is full (or disabled),
    the writer retries with jittered backoff and acknowledges nothing meanwhile, so the
    backlog waits in the broker (backpressure through Receive Maximum).

A redelivered identical message is written again; that is harmless because a point is
identified by measurement, ``kit_id`` and timestamp. A *different* reading with the same
kit and timestamp, or a reused ``(boot, seq)``, is dead-lettered (broker_bridge.dedup).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import random
import re
import shutil
import sqlite3
import struct
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy.exc import SQLAlchemyError

from broker_bridge.deadletter import DeadLetter, DeadLetterStore
from broker_bridge.dedup import NEW, REPEAT, RecentReadings
from broker_bridge.fastpath import fast_telemetry
from broker_bridge.metrics import MetricsServer
from broker_bridge.registry import KitRegistry
from broker_bridge.spool import Spool
from cizo import protocol
from cizo.clock import Clock
from cizo.settings import Settings
from telemetry.errors import InfluxError, InfluxQueryError, InfluxUnavailable, InfluxWriteRejected
from telemetry.influx import InfluxClient
from telemetry.schema import LineProtocolError, encode_line, encode_status_line, line_kit_id

log = logging.getLogger(__name__)

TELEMETRY_FILTER = f"{protocol.TOPIC_ROOT}/+/{protocol.TELEMETRY}"
STATUS_FILTER = f"{protocol.TOPIC_ROOT}/+/{protocol.STATUS}"
INFLUX_REJECTED = "influx_rejected"  # a single line the server refused (e.g. type conflict)
INTERNAL_ERROR = "internal_error"  # a bug in our own parsing code (logged with traceback)
UNKNOWN_KIT = "unknown_kit"  # not in the ledger's kits table (bridge_kit_registry)
TS_BEFORE_KIT = "ts_before_kit"  # stamped before the kit was provisioned (minus the slack)
_MAX_RECEIVE_MAXIMUM = 65_535  # MQTT v5 limit on the Receive Maximum property
RECEIVE_MAXIMUM_BATCHES = 2  # default window: batches in flight between broker and InfluxDB
_REPLAY_SLICE_S = 0.5  # longest the writer replays the spool before looking at live traffic
_LOG_EVERY_S = 10.0  # rejects of one reason are logged at WARNING at most this often
_PUBACK = struct.Struct("!BBH")  # PUBACK: type 4 << 4, remaining length 2, packet id


def _paho_packet_queue_ok() -> bool:
    """True if paho's internal ``_packet_queue`` has the signature we rely on."""
    method = getattr(mqtt.Client, "_packet_queue", None)
    if method is None:
        return False
    params = list(inspect.signature(method).parameters)
    return params[:5] == ["self", "command", "packet", "mid", "qos"]


_PAHO_PACKET_QUEUE_OK = _paho_packet_queue_ok()


class _Item(NamedTuple):
    """One received message on its way to InfluxDB (or the dead letters) and its ack."""

    epoch: int  # connection generation it arrived on: acks only go back on that one
    mid: int
    qos: int
    line: str | None  # None: refused (``dead`` says why) or an internal error
    kit_id: str
    dead: DeadLetter | None
    received: float  # time.monotonic() at receipt (lag)
    ts: int  # the reading's ts (0 for a status)
    topic: str
    payload: bytes


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
    spooled: int = 0
    replayed: int = 0
    deadlettered: int = 0
    spool_bytes: int = 0
    spool_records: int = 0
    write_latency_sum_s: float = 0.0
    lag_s: float | None = None
    influx_up: bool = True
    connects: int = 0  # successful broker connections since start


def _full_jitter(attempt: int, base_s: float, cap_s: float) -> float:
    """Exponential backoff with full jitter, so many clients never retry in lockstep."""
    return random.uniform(0, min(cap_s, base_s * 2 ** min(attempt, 30)))


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
        self.clock = clock
        self.client_id = client_id
        self.shared_group = shared_group
        self.influx = influx if influx is not None else InfluxClient.from_settings(settings)
        self._owns_influx = influx is None
        self.session_expiry_s = session_expiry_s
        # Mosquitto keeps at most Receive Maximum unacked QoS1 messages in flight to us
        # (without it, its max_inflight_messages: 20 by default): size it so that batches
        # waiting for their write do not stall delivery. It is also what bounds the
        # bridge's memory under a reconnect storm (backpressure).
        self.batch_lines = max(1, settings.influx_batch_lines)
        self.receive_maximum = min(
            _MAX_RECEIVE_MAXIMUM,
            receive_maximum or settings.bridge_receive_maximum
            or max(1_000, RECEIVE_MAXIMUM_BATCHES * self.batch_lines),
        )
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.reconnect_max_s = max(1, reconnect_max_s)

        self.counters = RejectCounters()
        self.recent = RecentReadings(settings.bridge_dedup_entries)
        spool_root = settings.bridge_spool_dir or settings.data_dir / "spool"
        self.spool_dir = spool_root / _safe_dirname(client_id)
        self.spool: Spool | None = None
        dl_dir = settings.bridge_deadletter_dir or settings.data_dir / "deadletter"
        self.deadletter_dir = dl_dir
        self.deadletters: DeadLetterStore | None = None
        self.metrics: MetricsServer | None = None
        self.registry: KitRegistry | None = None
        # Received items on their way to the writer. Items in flight on one connection are
        # bounded by Receive Maximum (stale ones from earlier connections are purged when
        # the broker kept our session), so the deque needs no bound of its own. A plain
        # deque (atomic append/popleft) instead of queue.Queue: profiling showed the
        # Queue's condition variable (a lock and a notify per message) as the bridge's
        # largest cost after paho itself. The writer is only woken when it sleeps idle.
        self._items: deque[_Item] = deque()
        self._wakeup = threading.Event()
        self._writer_idle = False
        self._queue_warn_at = 2 * self.receive_maximum + 16

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
        self._influx_retry_at = 0.0  # monotonic time before which writes go to the spool
        self._influx_attempt = 0
        self._last_logged: dict[str, float] = {}

        self._stats_lock = threading.Lock()
        self._messages_in = 0  # only the network thread writes it
        self._written = 0
        self._acked = 0
        self._batches = 0
        self._write_retries = 0
        self._spooled = 0
        self._replayed = 0
        self._deadlettered = 0
        self._last_latency: float | None = None
        self._latency_sum = 0.0
        self._lag: float | None = None
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
        received = time.monotonic()
        self._messages_in += 1
        if not self._accepting.is_set():
            return  # stopping: left unacknowledged, the broker redelivers it next session
        kit_id = "?"
        line: str | None = None
        dead: DeadLetter | None = None
        payload = b""
        topic_name = ""
        ts = 0
        try:
            topic_name = msg.topic
            payload = msg.payload if isinstance(msg.payload, bytes) else bytes(msg.payload)
            parts = topic_name.split("/")
            if len(parts) == 3 and parts[0] == protocol.TOPIC_ROOT and parts[1]:
                kit_id, kind = parts[1], parts[2]  # the common case, without a Topic object
            else:
                topic = protocol.parse_topic(topic_name)
                kit_id, kind = topic.kit_id, topic.kind
            if kind == protocol.TELEMETRY:
                now = self.clock.now()
                fast = fast_telemetry(kit_id, payload, now)
                if fast is not None:
                    line, ts, boot, seq = fast
                else:  # anything unusual: the contract's own parser says why
                    tele = protocol.parse_telemetry(kit_id, payload, now)
                    line, ts, boot, seq = encode_line(tele), tele.ts, tele.boot, tele.seq
                verdict = self.recent.check(kit_id, ts, boot, seq, hash(line))
                if verdict is not NEW and verdict is not REPEAT:
                    line = None
                    dead = self._reject(kit_id, verdict, f"ts={ts} boot={boot} seq={seq}",
                                        topic_name, payload)
            elif kind == protocol.STATUS:
                status = protocol.parse_status(payload)
                line = encode_status_line(kit_id, status, int(self.clock.now()))
            else:
                raise protocol.ContractError("bad_topic", topic_name)
        except protocol.ContractError as exc:
            dead = self._reject(kit_id, exc.reason, exc.detail, topic_name, payload)
        except LineProtocolError as exc:
            dead = self._reject(kit_id, exc.reason, str(exc), topic_name, payload)
        except UnicodeDecodeError as exc:  # paho raises this for a non-UTF-8 topic
            dead = self._reject(kit_id, "bad_topic", str(exc), topic_name, payload)
        except Exception as exc:
            # A bug of ours must not stall ingestion (an unacked message would hold an
            # in-flight slot forever); it is logged with its traceback and counted.
            log.exception("unexpected error handling message kit_id=%s mid=%d", kit_id, msg.mid,
                          extra={"kit_id": kit_id})
            line = None
            dead = self._reject(kit_id, INTERNAL_ERROR, repr(exc), topic_name, payload)
        items = self._items
        items.append(_Item(self._epoch, msg.mid, msg.qos, line, kit_id, dead, received, ts,
                           topic_name, payload))
        if self._writer_idle:
            self._wakeup.set()
        if len(items) > self._queue_warn_at:  # Receive Maximum should make this impossible
            self._log_limited("queue_size", "bridge holds %d undurable items (more than "
                              "Receive Maximum allows): is the broker ignoring it?", len(items))

    def _reject(self, kit_id: str, reason: str, detail: str, topic: str,
                payload: bytes) -> DeadLetter:
        self.counters.add(kit_id, reason)
        now = time.monotonic()
        if now - self._last_logged.get(reason, -_LOG_EVERY_S) >= _LOG_EVERY_S:
            self._last_logged[reason] = now
            log.warning("rejected message kit_id=%s reason=%s detail=%s (further rejects of "
                        "this reason for %.0f s at DEBUG; see cizo deadletter list)",
                        kit_id, reason, detail[:200], _LOG_EVERY_S, extra={"kit_id": kit_id})
        else:
            log.debug("rejected message kit_id=%s reason=%s detail=%s", kit_id, reason,
                      detail[:200], extra={"kit_id": kit_id})
        return DeadLetter(received_at=time.time(), kit_id=kit_id, reason=reason, detail=detail,
                          topic=topic, payload=payload)

    # --- write path (writer thread) ---------------------------------------------------

    def _ensure_database(self) -> None:
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

    def _writer_main(self) -> None:
        items = self._items
        popleft = items.popleft
        flush_s = self.settings.influx_flush_interval_s
        while True:
            if not items:
                if self._stopping.is_set():
                    break
                self._writer_idle = True
                woken = self._wakeup.wait(0.1) if not items else True
                self._writer_idle = False
                self._wakeup.clear()
                if not woken:
                    self._replay_some()
                continue
            batch: list[_Item] = []
            deadline = time.monotonic() + flush_s
            while True:
                while items and len(batch) < self.batch_lines:
                    batch.append(popleft())
                if (len(batch) >= self.batch_lines or self._stopping.is_set()
                        or time.monotonic() >= deadline):
                    break
                time.sleep(0.002)  # let the batch fill; cheaper than a wakeup per message
            self._flush(batch)
            if not self._stopping.is_set():
                self._replay_some()
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

    def _check_kits(self, batch: list[_Item]) -> list[_Item]:
        """Dead-letter readings of unknown kits, or stamped before the kit existed."""
        assert self.registry is not None
        created = self.registry.created_at([it.kit_id for it in batch if it.line is not None])
        if created is None:
            return batch  # cannot tell: store rather than lose (the registry logged why)
        slack = self.settings.bridge_kit_ts_slack_s
        out = []
        for it in batch:
            if it.line is not None:
                since = created.get(it.kit_id)
                if since is None:
                    it = it._replace(line=None, dead=self._reject(
                        it.kit_id, UNKNOWN_KIT, "not in the kits table", it.topic, it.payload))
                elif it.ts and it.ts < since - slack:
                    it = it._replace(line=None, dead=self._reject(
                        it.kit_id, TS_BEFORE_KIT, f"ts={it.ts} provisioned={since:.0f}",
                        it.topic, it.payload))
            out.append(it)
        return out

    def _flush(self, batch: list[_Item]) -> None:
        """Make one batch durable (dead letters, then InfluxDB or the spool), then ack it."""
        batch = self._drop_redelivered(batch)
        if self.registry is not None and batch:
            batch = self._check_kits(batch)
        dead_done = lines_done = False
        attempt = 0
        while batch:
            if not dead_done:
                dead_done = self._store_dead([it.dead for it in batch if it.dead is not None])
            if not lines_done:
                lines = [(it.kit_id, it.line) for it in batch if it.line is not None]
                lines_done = not lines or self._store_lines(lines, batch[0].received)
            if dead_done and lines_done:
                break
            attempt += 1
            if self._abandon.is_set():
                log.warning("giving up on %d undurable messages at shutdown; left "
                            "unacknowledged for redelivery", len(batch))
                return
            self._abandon.wait(_full_jitter(attempt, self.retry_base_s, self.retry_max_s))
            batch = self._drop_redelivered(batch)
        self._ack(batch)

    def _store_dead(self, letters: list[DeadLetter]) -> bool:
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
        with self._stats_lock:
            self._deadlettered += len(letters)
        return True

    def _influx_failed(self, exc: InfluxError, what: str) -> None:
        if isinstance(exc, InfluxWriteRejected) and exc.status_code == 404:
            self._db_ready = False  # "database not found": create it, then retry
        self._influx_attempt += 1
        delay = _full_jitter(self._influx_attempt, self.retry_base_s, self.retry_max_s)
        self._influx_retry_at = time.monotonic() + delay
        with self._stats_lock:
            self._write_retries += 1
        log.warning("influx %s failed (attempt %d): %s; next try in %.2f s", what,
                    self._influx_attempt, exc, delay)

    def _write_to_influx(self, lines: list[tuple[str, str]], what: str) -> bool:
        """One write attempt (unless InfluxDB is backing off); True once stored."""
        if time.monotonic() < self._influx_retry_at:
            return False
        try:
            self._ensure_database()
            started = time.monotonic()
            written, rejected = self._write_lines(lines)
        except (InfluxUnavailable, InfluxWriteRejected, InfluxQueryError) as exc:
            self._influx_failed(exc, what)
            return False
        latency = time.monotonic() - started
        self._influx_attempt = 0
        with self._stats_lock:
            self._last_latency = latency
            self._latency_sum += latency
            self._last_batch_lines = written + rejected
            self._batches += 1
            self._written += written
        return True

    def _store_lines(self, lines: list[tuple[str, str]], first_received: float) -> bool:
        """Write to InfluxDB, else append to the spool; True once durable in either."""
        durable = self._write_to_influx(lines, f"write of {len(lines)} lines")
        if not durable and self.spool is not None:
            body = "\n".join([line for _, line in lines]).encode()
            try:
                durable = self.spool.append(body)
            except OSError:
                log.exception("cannot append %d lines to the spool %s", len(lines),
                              self.spool.dir)
            else:
                if durable:
                    with self._stats_lock:
                        self._spooled += len(lines)
                else:
                    self._log_limited("spool_full", "spool %s is full (%d bytes): holding %d "
                                      "messages unacknowledged in the broker", self.spool.dir,
                                      self.spool.size_bytes, len(lines))
        if durable:
            with self._stats_lock:
                self._lag = time.monotonic() - first_received
        return durable

    def _log_limited(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_logged.get(key, -_LOG_EVERY_S) >= _LOG_EVERY_S:
            self._last_logged[key] = now
            log.warning(message, *args)

    def _replay_some(self) -> None:
        """Replay spooled batches for up to ``_REPLAY_SLICE_S``, oldest first."""
        spool = self.spool
        if spool is None or not spool or time.monotonic() < self._influx_retry_at:
            return
        deadline = time.monotonic() + _REPLAY_SLICE_S
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
            if not self._write_to_influx(lines, f"replay of {len(lines)} spooled lines"):
                return
            spool.commit()
            with self._stats_lock:
                self._replayed += len(lines)
            if self._items:
                return  # live traffic first; the rest on the next pass

    def _write_lines(self, lines: list[tuple[str, str]]) -> tuple[int, int]:
        """Write ``(kit_id, line)`` pairs; returns (written, rejected).

        A 400/413 for a batch is narrowed down by halving, so one line the server will
        never take (a field type conflict) is rejected alone and the rest is stored.
        Anything else propagates for a retry of the whole batch; rewrites are idempotent.
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
                letter = self._reject(kit_id, INFLUX_REJECTED, exc.error,
                                      protocol.telemetry_topic(kit_id), line.encode())
                if not self._store_dead([letter]):
                    raise InfluxUnavailable("dead-letter store unavailable") from exc
                return 0, 1
            log.warning("influx refused a batch of %d lines (%s); splitting it", len(lines),
                        exc.error)
        half = len(lines) // 2
        w1, r1 = self._write_lines(lines[:half])
        w2, r2 = self._write_lines(lines[half:])
        return w1 + w2, r1 + r2

    def _ack(self, batch: list[_Item]) -> None:
        acked = 0
        with self._conn_lock:
            # Acks only make sense on the connection the message came in on; older
            # ones are either redelivered (persistent session) or gone from the broker.
            if self._connected:
                epoch = self._epoch
                mids = [it.mid for it in batch if it.epoch == epoch and it.qos == 1]
                self._send_pubacks(mids)
                acked = len(mids)
        with self._stats_lock:
            self._acked += acked

    def _send_pubacks(self, mids: list[int]) -> None:
        """PUBACK every mid, in order, as ONE queued write.

        ``client.ack`` queues one packet and wakes paho's network thread once per
        message; profiling showed that at ~10% of the bridge's time. A PUBACK is 4 fixed
        bytes (MQTT v5 allows omitting the success reason code), so the batch's PUBACKs
        are concatenated and handed to paho's packet queue in one call — the same call
        ``client.ack`` ends in. If that private method is missing (a paho release that
        changed it), fall back to ``client.ack`` per message.
        """
        if not mids:
            return
        queue_packet = getattr(self.client, "_packet_queue", None)
        if queue_packet is None or not _PAHO_PACKET_QUEUE_OK:
            for mid in mids:
                self.client.ack(mid, 1)
            return
        pack = _PUBACK.pack
        command = PacketTypes.PUBACK << 4
        queue_packet(command, b"".join([pack(command, 2, mid) for mid in mids]), 0, 1)

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Open the spool and dead letters, connect (retrying in the background), start
        the writer and the metrics server; returns at once."""
        if self._started:
            raise RuntimeError("Bridge.start() called twice")
        self._started = True
        s = self.settings
        if s.bridge_spool_max_bytes > 0:
            self.spool = Spool(self.spool_dir, s.bridge_spool_max_bytes)
        self.deadletters = DeadLetterStore(
            self.deadletter_dir, max_rows=s.bridge_deadletter_max_rows,
            payload_bytes=s.bridge_deadletter_payload_bytes, bridge=self.client_id)
        if s.bridge_kit_registry:
            self.registry = KitRegistry.from_url(s.database_url)
            try:
                log.info("kit registry: %d kits known", self.registry.load_all())
            except SQLAlchemyError as exc:
                log.warning("cannot read the kits table at start (%s); looking kits up per "
                            "batch", type(exc).__name__)
        if s.bridge_metrics_port is not None:
            self.metrics = MetricsServer(s.bridge_metrics_host, s.bridge_metrics_port,
                                         self.stats)
            self.metrics.start()
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
        log.info("bridge started client_id=%s broker=%s influx=%s db=%s spool=%s",
                 self.client_id, self.settings.mqtt_url, self.influx.url, self.influx.db,
                 self.spool_dir if self.spool is not None else "off")

    def wait_subscribed(self, timeout_s: float = 10.0) -> bool:
        """True once the broker granted the subscriptions on the current connection."""
        return self._subscribed.wait(timeout_s)

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
        if self.metrics is not None:
            self.metrics.stop()
        if self.spool is not None:
            self.spool.close()
            if not self.spool:
                shutil.rmtree(self.spool_dir, ignore_errors=True)  # nothing left to replay
                with contextlib.suppress(OSError):  # other bridges' spools: keep the root
                    self.spool_dir.parent.rmdir()
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
        with self._stats_lock:
            written, acked = self._written, self._acked
            batches, retries = self._batches, self._write_retries
            latency, last_lines = self._last_latency, self._last_batch_lines
            spooled, replayed, dead = self._spooled, self._replayed, self._deadlettered
            latency_sum, lag = self._latency_sum, self._lag
        with self._conn_lock:
            connected = self._connected
        spool = self.spool
        rejected = self.counters.reasons()
        return BridgeStats(
            messages_in=self._messages_in,
            written=written,
            acked=acked,
            rejected=rejected,
            rejected_total=sum(rejected.values()),
            batches=batches,
            write_retries=retries,
            last_write_latency_s=latency,
            last_batch_lines=last_lines,
            queue_depth=len(self._items),
            connected=connected,
            spooled=spooled,
            replayed=replayed,
            deadlettered=dead,
            spool_bytes=spool.size_bytes if spool is not None else 0,
            spool_records=spool.records if spool is not None else 0,
            write_latency_sum_s=latency_sum,
            lag_s=lag,
            influx_up=self._influx_attempt == 0,
            connects=self._epoch,
        )
