"""A batch's PUBACKs as ONE queued write, through paho's private packet queue.

paho's public ``Client.ack(mid, 1)`` queues one 4-byte packet per message and wakes the
network thread through its socket pair for each (a syscall per ack, and one ``send`` per
packet when the thread writes them out). With 5,000-message batches that is the
bridge's largest cost after paho's own receive loop. A PUBACK is 4 fixed bytes (MQTT v5
allows omitting the success reason code), so the batch's PUBACKs are concatenated and
handed to ``Client._packet_queue`` in one call: the call ``ack`` itself ends in.

Measured with bench/ingest.py (N=200,000, the same tree with ``ack()`` per message
instead, runs alternating; docs/benchmarks.md, "Batched PUBACKs against ack()"): the
bridge drained at 0.58 and 0.48 of the bare paho subscriber's rate with ``ack()``, at
0.73 and 0.71 with this module (CPU ratio 0.74/0.69 against 0.83/0.90). So the private
write stays, here and nowhere else.

``check_paho()`` (called when a session is created) refuses to run on a paho whose
``_packet_queue`` is not the method this was written against: no silent fallback.
tests/test_bridge_puback.py checks the signature and, against a real broker, that the
acknowledged messages are not redelivered while unacknowledged ones are.
"""

from __future__ import annotations

import inspect
import struct

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes

_PUBACK = struct.Struct("!BBH")  # fixed header (type 4 << 4), remaining length 2, packet id
_COMMAND = PacketTypes.PUBACK << 4
# paho-mqtt 2.x: _packet_queue(self, command, packet, mid, qos, info=None)
EXPECTED_PARAMETERS = ("self", "command", "packet", "mid", "qos", "info")


class PahoChanged(RuntimeError):
    """The installed paho-mqtt no longer has the private method this adapter uses."""


def check_paho() -> None:
    """Raise PahoChanged unless ``Client._packet_queue`` has the expected signature."""
    method = getattr(mqtt.Client, "_packet_queue", None)
    if method is None:
        raise PahoChanged("paho.mqtt.client.Client._packet_queue is gone: update "
                          "broker_bridge/puback.py for this paho-mqtt release")
    params = tuple(inspect.signature(method).parameters)
    if params != EXPECTED_PARAMETERS:
        raise PahoChanged(f"paho.mqtt.client.Client._packet_queue{params} is not "
                          f"{EXPECTED_PARAMETERS}: update broker_bridge/puback.py")


def puback_bytes(mids: list[int]) -> bytes:
    """The PUBACK packets of ``mids``, in order, concatenated."""
    pack = _PUBACK.pack
    return b"".join([pack(_COMMAND, 2, mid) for mid in mids])


def send_pubacks(client: mqtt.Client, mids: list[int]) -> MQTTErrorCode:
    """Queue the PUBACKs of ``mids`` (QoS 1, in receive order) as one write."""
    if not mids:
        return MQTTErrorCode.MQTT_ERR_SUCCESS
    result: MQTTErrorCode = client._packet_queue(_COMMAND, puback_bytes(mids), 0, 1)
    return result
