"""The control service's MQTT connection: publishes signed commands, reads acks and presence.

paho runs its network loop in its own thread; ``on_message`` only enqueues, and one
worker thread hands messages to the ControlService, so a slow database never stalls
keepalives. Acks and presence go ahead of telemetry: an ack is what stops a command's
re-sends, and one waiting behind a telemetry backlog got its command re-sent over and
over (``acks_waiting`` lets the sweep hold re-sends until they are read). The session
is persistent (MQTT v5 session expiry) so acks sent while the service restarts are
delivered when it comes back.
"""

from __future__ import annotations

import itertools
import logging
import queue
import random
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from cizo import protocol
from cizo.settings import Settings
from control.commands.service import ControlService

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 7 * 24 * 3600
SUBSCRIPTIONS = [(topic, 1) for kind in (protocol.CMD_ACK, protocol.STATUS, protocol.TELEMETRY)
                 for topic in protocol.topic_filters(kind)]
# inbox lanes, read in this order; first come first served within a lane
ACK_LANE, TELEMETRY_LANE, STOP_LANE = 0, 1, 2
_TELEMETRY_SUFFIXES = tuple(f[f.rindex("/"):] for f in protocol.topic_filters(protocol.TELEMETRY))


class MqttLink:
    def __init__(
        self, settings: Settings, service: ControlService, *, client_id: str = "cizo-control"
    ) -> None:
        self.settings = settings
        self.service = service
        self._inbox: queue.PriorityQueue[tuple[int, int, mqtt.MQTTMessage | None]] = (
            queue.PriorityQueue(maxsize=100_000))
        self._arrival = itertools.count()
        self._acks_waiting = 0
        self._acks_lock = threading.Lock()
        self._connected = threading.Event()
        self._worker = threading.Thread(target=self._work, name="control-inbox", daemon=True)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        if settings.mqtt_username:
            pw = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
            self.client.username_pw_set(settings.mqtt_username, pw)
        if settings.mqtt_tls_ca:
            self.client.tls_set(ca_certs=str(settings.mqtt_tls_ca))
        # jittered reconnect: a fleet-wide outage must not bring every client back in lockstep
        self.client.reconnect_delay_set(min_delay=1, max_delay=30 + random.randint(0, 10))
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def start(self) -> None:
        self._worker.start()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self.client.connect_async(
            self.settings.mqtt_host, self.settings.mqtt_port,
            keepalive=self.settings.mqtt_keepalive_s, clean_start=False, properties=props,
        )
        self.client.loop_start()

    def wait_connected(self, timeout_s: float = 10.0) -> bool:
        return self._connected.wait(timeout_s)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self._inbox.put((STOP_LANE, next(self._arrival), None))
        self._worker.join(timeout=10)

    @property
    def acks_waiting(self) -> int:
        """Acks and status messages received but not yet handled."""
        return self._acks_waiting

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def publish_command(self, kit_id: str, payload: bytes,
                        version: int = protocol.PROTOCOL_VERSION) -> bool:
        """Retained QoS1: a kit that reconnects later still gets its latest command."""
        if not self._connected.is_set():
            return False
        info = self.client.publish(protocol.cmd_topic(kit_id, version), payload, qos=1,
                                   retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("command publish failed", extra={"kit_id": kit_id, "rc": info.rc})
            return False
        return True

    def clear_retained(self, kit_id: str) -> bool:
        """An empty retained message removes a decommissioned kit's command."""
        if not self._connected.is_set():
            return False
        info = self.client.publish(protocol.cmd_topic(kit_id), b"", qos=1, retain=True)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    # --- paho callbacks (network thread) ------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _ud: object, _flags: object, rc: ReasonCode, _p: object
    ) -> None:
        if rc.is_failure:
            log.error("broker refused the control service: %s", rc)
            return
        group = self.settings.control_shared_group
        client.subscribe(SUBSCRIPTIONS if group is None else
                         [(f"$share/{group}/{topic}", qos) for topic, qos in SUBSCRIPTIONS])
        log.info("control connected to broker",
                 extra={"host": self.settings.mqtt_host, "port": self.settings.mqtt_port})

    def _on_subscribe(self, _c: mqtt.Client, _ud: object, _mid: int,
                      codes: list[ReasonCode], _p: object) -> None:
        # "connected" once the broker has the subscriptions: an ack or a reading sent from
        # then on reaches us, and a command published from then on has its ack heard
        failed = [str(rc) for rc in codes if rc.is_failure]
        if failed:
            log.error("broker refused the control service's subscriptions: %s", failed)
            return
        self._connected.set()

    def _on_disconnect(
        self, _c: mqtt.Client, _ud: object, _flags: object, rc: ReasonCode, _p: object
    ) -> None:
        self._connected.clear()
        log.warning("control disconnected from broker: %s", rc)

    def _on_message(self, _c: mqtt.Client, _ud: object, msg: mqtt.MQTTMessage) -> None:
        lane = TELEMETRY_LANE if msg.topic.endswith(_TELEMETRY_SUFFIXES) else ACK_LANE
        if lane == ACK_LANE:
            with self._acks_lock:
                self._acks_waiting += 1
        self._inbox.put((lane, next(self._arrival), msg))

    # --- worker thread ----------------------------------------------------------------

    def _work(self) -> None:
        while True:
            lane, _, msg = self._inbox.get()
            if msg is None:
                return
            try:
                self._dispatch(msg)
            except Exception:
                # one bad message must never kill the loop: log it with its topic, go on
                log.exception("failed to handle message", extra={"topic": msg.topic})
            finally:
                if lane == ACK_LANE:
                    with self._acks_lock:
                        self._acks_waiting -= 1

    def _dispatch(self, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = protocol.parse_topic(msg.topic)
        except protocol.ContractError:
            self.service.counters.bad("bad_topic")
            return
        payload = bytes(msg.payload)
        if topic.kind == protocol.CMD_ACK:
            self.service.handle_ack(topic.kit_id, payload, topic.version)
        elif topic.kind == protocol.STATUS:
            self.service.handle_status(topic.kit_id, payload, topic.version)
        elif topic.kind == protocol.TELEMETRY:
            self.service.handle_telemetry(topic.kit_id, payload, topic.version)
