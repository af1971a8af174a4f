"""The batched-PUBACK adapter (broker_bridge/puback.py) against the installed paho and a
real broker: these fail loudly when a paho release changes the private method it uses."""

from __future__ import annotations

import inspect
import threading
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from broker_bridge.puback import EXPECTED_PARAMETERS, check_paho, puback_bytes, send_pubacks
from cizo import services
from tests.support import wait_for


def test_paho_packet_queue_has_the_signature_the_adapter_uses() -> None:
    params = tuple(inspect.signature(mqtt.Client._packet_queue).parameters)
    assert params == EXPECTED_PARAMETERS
    check_paho()  # the check the bridge runs when it creates its session


def test_batched_bytes_are_the_packets_paho_ack_queues() -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, manual_ack=True)
    queued: list[bytes] = []
    for mid in (1, 300, 65_535):
        client.ack(mid, 1)  # not connected: paho keeps the packet in its queue
        queued.append(bytes(client._out_packet[-1]["packet"]))
    assert b"".join(queued) == puback_bytes([1, 300, 65_535])
    send_pubacks(client, [7, 8])  # NO_CONN, as ack() answers when not connected
    last = client._out_packet[-1]
    assert last["command"] == PacketTypes.PUBACK << 4 and last["packet"] == puback_bytes([7, 8])


class Subscriber:
    """A manual-ack QoS 1 subscriber on a persistent session, recording what it gets."""

    def __init__(self, port: int, client_id: str, topic: str) -> None:
        self.mids: list[int] = []
        self.payloads: list[bytes] = []
        self._subscribed = threading.Event()
        self._gone = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5, manual_ack=True)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_disconnect = lambda *args: self._gone.set()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 60
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        assert self._subscribed.wait(10)

    def _on_message(self, client: mqtt.Client, userdata: object,
                    msg: mqtt.MQTTMessage) -> None:
        self.mids.append(msg.mid)
        self.payloads.append(bytes(msg.payload))

    def close(self) -> None:
        """Disconnect once every queued packet is out: stopping paho's loop at once can
        drop the PUBACKs and the DISCONNECT still queued behind them."""
        self.client.disconnect()
        assert self._gone.wait(10), "the DISCONNECT never went out"
        self.client.loop_stop()


def publish(port: int, topic: str, count: int) -> None:
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        for i in range(count):
            pub.publish(topic, str(i).encode(), qos=1).wait_for_publish(5)
    finally:
        pub.disconnect()
        pub.loop_stop()


@pytest.mark.integration
def test_broker_takes_batched_pubacks_and_redelivers_only_the_rest(
    mosquitto: services.ManagedProcess,
) -> None:
    topic = f"puback/{uuid.uuid4().hex[:8]}"
    client_id = f"puback-{uuid.uuid4().hex[:8]}"
    first = Subscriber(mosquitto.port, client_id, topic)
    publish(mosquitto.port, topic, 20)
    wait_for(lambda: len(first.mids) == 20, what="20 messages")
    assert send_pubacks(first.client, first.mids[:10]) == MQTTErrorCode.MQTT_ERR_SUCCESS
    first.close()  # the PUBACKs go out before the DISCONNECT

    second = Subscriber(mosquitto.port, client_id, topic)  # same session
    wait_for(lambda: len(second.payloads) >= 10, what="the 10 unacknowledged, redelivered")
    assert second.payloads == [str(i).encode() for i in range(10, 20)]
    send_pubacks(second.client, second.mids)
    second.close()

    third = Subscriber(mosquitto.port, client_id, topic)
    publish(mosquitto.port, topic, 1)  # a marker: everything before it was acknowledged
    wait_for(lambda: len(third.payloads) >= 1, what="the marker")
    send_pubacks(third.client, third.mids)
    third.close()
    assert third.payloads == [b"0"]
