"""The bridge's MQTT session: connect, subscribe, reconnect with jitter, receive, ack.

One persistent MQTT v5 session (``clean_start=False``, ``manual_ack=True``): whatever
the bridge has not acknowledged is kept by the broker and redelivered, after a bridge
crash as after a broker restart. Each successful connection is a new *epoch*: an
acknowledgement only makes sense on the connection its message came in on, and when
the broker kept our session it redelivers everything unacknowledged, so copies received
on an earlier epoch are dropped (``purge_before``) instead of being written twice.

Receive Maximum bounds the unacknowledged messages in flight to us, and so the bridge's
memory under a reconnect storm (backpressure).

Subscribed again after losing the broker, the session asks every kit to publish again
what it sent since shortly before the loss (``protocol.replay_topic``): a restarted
Mosquitto forgets ``$share`` subscriptions, so until a bridge is back what kits publish is
acknowledged to them and dropped. Their copies make the gap whole; the writes are
idempotent (same kit, same time: same point), so a reading that did arrive costs nothing.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from broker_bridge.puback import check_paho, send_pubacks
from cizo import protocol
from cizo.clock import Clock
from cizo.settings import Settings

log = logging.getLogger(__name__)

FILTERS = [*protocol.topic_filters(protocol.TELEMETRY), *protocol.topic_filters(protocol.STATUS)]

MessageHandler = Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]


class Delivery(Protocol):
    """A received message, as far as acknowledging it goes."""

    @property
    def epoch(self) -> int: ...  # the connection it came in on
    @property
    def mid(self) -> int: ...
    @property
    def qos(self) -> int: ...


class MqttSession:
    """A persistent subscription to every kit's telemetry and status.

    ``on_message`` runs on paho's network thread and must not block: keepalives flow
    only while it returns promptly.
    """

    def __init__(self, settings: Settings, on_message: MessageHandler, *, clock: Clock,
                 client_id: str, shared_group: str | None, session_expiry_s: int,
                 receive_maximum: int, reconnect_max_s: int) -> None:
        check_paho()  # the batched PUBACKs need it: refuse to start on a changed paho
        self.settings = settings
        self.clock = clock
        self.client_id = client_id
        self.shared_group = shared_group
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.reconnect_max_s = max(1, reconnect_max_s)
        self.epoch = 0  # connection generation; written on the network thread only
        self._lock = threading.Lock()
        self._connected = False
        self._purge_before = 0  # items from epochs below this are redelivered by the broker
        self._reconnect_attempt = 0
        self._subscribed = threading.Event()
        self._stopping = threading.Event()
        # When the broker was lost, until the replay request is made. A starting bridge
        # cannot know whether the broker restarted while it was not running: it asks too.
        self._lost_at: float | None = clock.now()
        self.replay_requests = 0  # replay requests published (both versions count as one)
        self.client = self._make_client(on_message)

    def _make_client(self, on_message: MessageHandler) -> mqtt.Client:
        s = self.settings
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5, manual_ack=True)
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
        client.on_message = on_message
        return client

    @property
    def filters(self) -> list[str]:
        filters = list(FILTERS)
        if self.shared_group:
            filters = [f"$share/{self.shared_group}/{f}" for f in filters]
        return filters

    # --- state, read from the writer thread ----------------------------------------

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._connected

    @property
    def purge_before(self) -> int:
        with self._lock:
            return self._purge_before

    def wait_subscribed(self, timeout_s: float) -> bool:
        return self._subscribed.wait(timeout_s)

    def ack(self, batch: Sequence[Delivery]) -> int:
        """PUBACK, in order, the QoS 1 messages of ``batch`` that came in on the current
        connection (older ones are redelivered, or gone from the broker); returns how
        many were acknowledged."""
        with self._lock:
            if not self._connected:
                return 0
            epoch = self.epoch
            mids = [d.mid for d in batch if d.epoch == epoch and d.qos == 1]
            result = send_pubacks(self.client, mids)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.warning("PUBACKs for %d messages not queued (%s): the broker redelivers them",
                        len(mids), mqtt.error_string(result))
            return 0
        return len(mids)

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (retrying until ``close``) and start paho's thread."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.session_expiry_s
        props.ReceiveMaximum = self.receive_maximum
        self.client.connect_async(self.settings.mqtt_host, self.settings.mqtt_port,
                                  keepalive=self.settings.mqtt_keepalive_s, clean_start=False,
                                  properties=props)
        self.client.loop_start()

    def stopping(self) -> None:
        """The bridge is stopping: a disconnect from now on is not an outage."""
        self._stopping.set()

    def close(self) -> None:
        """Disconnect after the queued PUBACKs; no acknowledgement may follow."""
        self._stopping.set()
        with self._lock:
            self._connected = False
        self.client.disconnect()  # queued PUBACKs go out before the DISCONNECT
        self.client.loop_stop()

    # --- paho callbacks (network thread) ---------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason_code: ReasonCode, properties: Properties | None) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        with self._lock:
            self.epoch += 1
            self._connected = True
            if flags.session_present:
                # The broker redelivers everything we have not acknowledged: drop our
                # copies instead of holding (and writing) them twice.
                self._purge_before = self.epoch
            self._reconnect_attempt = 0
        client.reconnect_delay_set(1, self.reconnect_max_s)
        log.info("connected to broker %s client_id=%s session_present=%s",
                 self.settings.mqtt_url, self.client_id, flags.session_present)
        # Always (re)subscribe: cheap, and the only way to be sure after a broker that
        # lost its state (the Telegraf failure mode in docs/telemetry.md).
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        result, _mid = client.subscribe([(f, options) for f in self.filters])
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.error("subscribe request failed: %s", mqtt.error_string(result))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reason_codes: list[ReasonCode], properties: Properties | None) -> None:
        failed = [str(rc) for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("broker refused subscriptions %s: %s", self.filters, failed)
            return
        log.info("subscribed to %s", self.filters)
        self._subscribed.set()
        if self._lost_at is not None:
            self._ask_replay(client, self._lost_at)
            self._lost_at = None

    def _ask_replay(self, client: mqtt.Client, lost_at: float) -> None:
        """Ask every kit, in each contract version, for what it published from the
        margin before ``lost_at`` on (QoS 1: a kit offline now gets it when back)."""
        since = max(protocol.EARLIEST_TS, int(lost_at - self.settings.bridge_replay_margin_s))
        for version in protocol.VERSIONS:
            client.publish(protocol.replay_topic(version),
                           protocol.replay_request(since, version), qos=1)
        self.replay_requests += 1
        log.info("asked the kits to publish again what they sent since %d", since)

    def _next_reconnect_delay(self, client: mqtt.Client) -> int:
        with self._lock:
            self._reconnect_attempt += 1
            attempt = self._reconnect_attempt
        # paho only takes whole seconds; full jitter between 1 s and the capped doubling,
        # so a fleet of bridges never reconnects in lockstep.
        delay = random.randint(1, max(1, min(self.reconnect_max_s, 2 ** min(attempt, 16))))
        client.reconnect_delay_set(delay, delay)
        return delay

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       reason_code: ReasonCode, properties: Properties | None) -> None:
        with self._lock:
            self._connected = False
        self._subscribed.clear()
        if self._stopping.is_set():
            log.info("disconnected from broker (stopping)")
            return
        if self._lost_at is None:  # still unanswered from an earlier loss: keep the earliest
            self._lost_at = self.clock.now()
        delay = self._next_reconnect_delay(client)
        log.warning("disconnected from broker: %s; reconnecting in %d s", reason_code, delay)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        delay = self._next_reconnect_delay(client)
        log.warning("cannot reach broker %s; retrying in %d s", self.settings.mqtt_url, delay)
