"""One simulated kit on MQTT: the firmware rules of ``KitFirmware`` behind a paho client.

It behaves like the real kit towards the broker: a retained last will marks it offline
when the link dies, a retained online status on every connect, QoS1 commands in and
acks out, telemetry on a timer that keeps running (and is buffered, oldest dropped
first) while the link is down, then flushed on reconnect. It speaks the contract version
its firmware speaks (docs/protocol.md): v1 at first, v2 after a ``protocol`` command,
announced at once in the new version's status so that the server follows.

Threads: paho's network thread runs the callbacks, a per-kit timer thread produces
telemetry. ``_lock`` guards the firmware and the buffer and is never held while
calling into paho (paho calls ``on_publish`` with its own locks held).
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cizo import protocol
from cizo.clock import Clock
from cizo.settings import Settings
from firmware_sim.firmware import KitFirmware

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KitIdentity:
    """What a kit is provisioned with at the factory."""

    kit_id: str
    mqtt_username: str | None
    mqtt_password: str | None
    command_secret: str


@dataclass(frozen=True, slots=True)
class KitStats:
    online: bool
    messages_sent: int  # acknowledged by the broker (PUBACK)
    telemetry_sent: int
    commands_applied: int
    commands_rejected: int
    buffered: int


class SimKit:
    """A kit with its own MQTT connection; ``start()`` returns at once, paho reconnects."""

    def __init__(
        self,
        identity: KitIdentity,
        settings: Settings,
        clock: Clock,
        *,
        firmware: KitFirmware | None = None,
        buffer_limit: int = 10_000,
        tick_s: float = 1.0,
    ) -> None:
        self.identity = identity
        self.kit_id = identity.kit_id
        self.settings = settings
        self.firmware = firmware or KitFirmware(identity.kit_id, identity.command_secret, clock)
        self.interval_s = settings.sim_telemetry_interval_s
        if self.interval_s <= 0:
            raise ValueError("sim_telemetry_interval_s must be positive")
        self._tick_s = min(tick_s, self.interval_s)
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()
        # (contract version, payload): a reading goes out on its own version's topic
        self._buffer: collections.deque[tuple[int, bytes]] = collections.deque(
            maxlen=buffer_limit)
        self._connected = False
        self._link_failures = 0  # consecutive failed connection attempts
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._sent = 0
        self._telemetry_sent = 0
        self._applied = 0
        self._rejected = 0
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        ident = self.identity
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=ident.mqtt_username or ident.kit_id,
            clean_session=False,  # QoS1 commands queued by the broker while offline
        )
        if ident.mqtt_username:
            client.username_pw_set(ident.mqtt_username, ident.mqtt_password)
        if self.settings.mqtt_tls_ca is not None:
            client.tls_set(ca_certs=str(self.settings.mqtt_tls_ca))
        self._set_will(client)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        return client

    def _set_will(self, client: mqtt.Client) -> None:
        """The last will in the version the kit speaks (paho sends it on the next CONNECT)."""
        client.will_set(protocol.status_topic(self.kit_id, self.firmware.protocol),
                        self.firmware.status(online=False), qos=1, retain=True)

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background and start the telemetry timer."""
        self._client.connect_async(
            self.settings.mqtt_host, self.settings.mqtt_port, self.settings.mqtt_keepalive_s
        )
        self._client.loop_start()
        self._timer = threading.Thread(
            target=self._run_timer, name=f"kit-{self.kit_id}", daemon=True
        )
        self._timer.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Graceful shutdown: say offline (a clean DISCONNECT suppresses the will)."""
        self._stop_timer()
        if self.connected:
            info = self._client.publish(
                protocol.status_topic(self.kit_id, self.firmware.protocol),
                self.firmware.status(online=False), qos=1, retain=True)
            try:
                info.wait_for_publish(timeout_s)
            except RuntimeError as exc:  # lost the link meanwhile: the will covers it
                log.warning("kit %s: offline status not sent: %s", self.kit_id, exc)
        self._client.disconnect()
        self._client.loop_stop()
        with self._lock:
            self._connected = False

    def crash(self) -> None:
        """Power cut: drop the TCP link without DISCONNECT, so the broker fires the will."""
        self._stop_timer()
        self._client.loop_stop()
        sock = self._client.socket()
        if sock is not None:
            sock.close()
        with self._lock:
            self._connected = False

    def _stop_timer(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join(timeout=5)
            self._timer = None

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._connected

    def stats(self) -> KitStats:
        with self._lock:
            online, buffered = self._connected, len(self._buffer)
        with self._stats_lock:
            return KitStats(online, self._sent, self._telemetry_sent, self._applied,
                            self._rejected, buffered)

    # --- telemetry -------------------------------------------------------------------

    def publish_telemetry(self) -> None:
        """Take a reading now; send it, or buffer it while the link is down (a v2 kit
        batches its readings, so a reading may wait in the firmware for its batch)."""
        with self._lock:
            version = self.firmware.protocol
            payloads = [(version, p) for p in self.firmware.report()]
            if not self._connected:
                self._buffer.extend(payloads)
                return
        for version, payload in payloads:
            self._publish_telemetry(version, payload)

    def _publish_telemetry(self, version: int, payload: bytes) -> None:
        # paho keeps a QoS1 message it could not send and resends it on reconnect,
        # so a link lost between the check above and here loses nothing
        self._client.publish(protocol.telemetry_topic(self.kit_id, version), payload, qos=1)
        with self._lock:
            self.firmware.published(payload, version)
        with self._stats_lock:
            self._telemetry_sent += 1

    def _run_timer(self) -> None:
        next_due = time.monotonic() + self.interval_s
        while not self._stop.wait(max(0.0, min(self._tick_s, next_due - time.monotonic()))):
            try:
                with self._lock:
                    just_locked = self.firmware.tick()
                if just_locked or time.monotonic() >= next_due:
                    self.publish_telemetry()
                    next_due = time.monotonic() + self.interval_s
            except Exception:
                log.exception("kit %s: telemetry timer failed", self.kit_id)

    # --- paho callbacks (network thread) ---------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any,
                    reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.warning("kit %s: connect refused: %s", self.kit_id, reason_code)
            return
        self._link_failures = 0
        self._announce(client)
        with self._lock:
            self._connected = True
            pending = list(self._buffer)
            self._buffer.clear()
        if pending:
            log.info("kit %s: reconnected, sending %d buffered readings",
                     self.kit_id, len(pending))
        for version, payload in pending:
            self._publish_telemetry(version, payload)
        self.publish_telemetry()

    def _announce(self, client: mqtt.Client) -> None:
        """Online in the version the kit speaks (how the server learns it), and listening
        for commands in it."""
        version = self.firmware.protocol
        client.publish(protocol.status_topic(self.kit_id, version),
                       self.firmware.status(online=True), qos=1, retain=True)
        client.subscribe([(protocol.cmd_topic(self.kit_id, version), 1),
                          (protocol.replay_topic(version), 1)])

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho retries with backoff; say so once per outage, not once per attempt
        self._link_failures += 1
        level = logging.WARNING if self._link_failures == 1 else logging.DEBUG
        log.log(level, "kit %s: cannot reach the broker %s:%d (attempt %d), retrying",
                self.kit_id, self.settings.mqtt_host, self.settings.mqtt_port,
                self._link_failures)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any,
                       reason_code: Any, properties: Any) -> None:
        with self._lock:
            self._connected = False
        if not self._stop.is_set():
            log.warning("kit %s: disconnected (%s), paho will reconnect",
                        self.kit_id, reason_code)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return  # the broker clearing a retained command
        replay = protocol.replay_version(msg.topic)
        if replay is not None:
            with self._lock:
                again = self.firmware.replay(bytes(msg.payload), replay)
            for version, payload in again:
                self._publish_telemetry(version, payload)
            return
        try:
            with self._lock:
                speaking = self.firmware.protocol
                ack = self.firmware.handle_command(
                    bytes(msg.payload), protocol.parse_topic(msg.topic).version)
                switched = self.firmware.protocol != speaking
            # acked in the version the command came in, then spoken from now on
            client.publish(protocol.ack_topic(self.kit_id, ack["v"]), protocol.encode(ack),
                           qos=1)
            if switched:
                client.unsubscribe([protocol.cmd_topic(self.kit_id, speaking),
                                    protocol.replay_topic(speaking)])
                self._set_will(client)
                self._announce(client)
            with self._stats_lock:
                if ack["result"] == "applied":
                    self._applied += 1
                else:
                    self._rejected += 1
        except Exception:
            # raising here would kill paho's network thread: log loudly instead
            log.exception("kit %s: failed to handle %r", self.kit_id, msg.payload[:200])

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int,
                    reason_code: Any, properties: Any) -> None:
        with self._stats_lock:
            self._sent += 1


def identity_from_json(item: Any) -> KitIdentity:
    """One entry of a fleet file; raises ValueError naming what is wrong."""
    if not isinstance(item, dict):
        raise ValueError(f"fleet entry is not an object: {json.dumps(item)[:80]}")
    kit_id, secret = item.get("kit_id"), item.get("command_secret")
    if not isinstance(kit_id, str) or not kit_id:
        raise ValueError(f"fleet entry without kit_id: {sorted(item)}")
    if not isinstance(secret, str):
        raise ValueError(f"kit {kit_id}: command_secret missing")
    try:
        bytes.fromhex(secret)
    except ValueError as exc:
        raise ValueError(f"kit {kit_id}: command_secret is not hex") from exc
    user, password = item.get("mqtt_username"), item.get("mqtt_password")
    if user is not None and not isinstance(user, str):
        raise ValueError(f"kit {kit_id}: mqtt_username must be a string or null")
    if password is not None and not isinstance(password, str):
        raise ValueError(f"kit {kit_id}: mqtt_password must be a string or null")
    return KitIdentity(kit_id, user, password, secret)
