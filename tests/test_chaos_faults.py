"""Faults the chaos month (docs/chaos.md) found, each pinned on its own.

Open fault: Mosquitto 2.0 (Debian's 2.0.11) does not bring a ``$share`` subscription back
from its persistence until a member of the group connects again. Between a broker restart
and the first bridge's reconnect, a kit's reading matches no subscriber: the broker
acknowledges it (PUBACK) and drops it. A reading queued for the group *before* the
restart survives. MQTT 5 publishers are told ("No matching subscribers", reason 0x10),
which is what a kit needs to keep the reading and send it again; v1 kits speak MQTT 3.1.1
and cannot know. This test pins both facts, so that a broker upgrade that changes either
shows up here.
"""

from __future__ import annotations

import json
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cizo import protocol
from telemetry.influx import InfluxClient
from tests.bridge_support import FaultRig, unique
from tests.support import wait_for


def _publish_v5(port: int, kit: str, seq: int) -> str:
    """One reading from an MQTT 5 kit; the reason the broker's PUBACK gives."""
    reasons: list[str] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique("kit"),
                         protocol=mqtt.MQTTv5)
    client.on_publish = lambda _c, _u, _mid, rc, _p: reasons.append(str(rc))
    client.connect("127.0.0.1", port)
    client.loop_start()
    body = {"v": 1, "kit_id": kit, "ts": int(time.time()) - 3_600 + seq, "seq": seq,
            "boot": 1, "battery_v": 12.5, "soc": 50.0, "pv_w": 40.0, "load_w": 5.0,
            "pv_wh_total": 1000.0 + seq, "load_wh_total": 500.0, "locked": False,
            "credit_until": None, "temp_c": 30.0}
    try:
        client.publish(protocol.telemetry_topic(kit), json.dumps(body).encode(),
                       qos=1).wait_for_publish(5)
        wait_for(lambda: reasons, timeout_s=5, what="PUBACK")
    finally:
        client.disconnect()
        client.loop_stop()
    return reasons[0]


def test_a_restarted_broker_drops_readings_until_a_shared_bridge_is_back(
    fault_rig: FaultRig,
) -> None:
    settings = fault_rig.settings("share")
    kit = unique("SHARE")
    bridge = fault_rig.bridge(settings, shared_group="bridges", client_id=unique("bridge"))
    client_id = bridge.client_id
    assert _publish_v5(fault_rig.broker.port, kit, 1) == "Success"
    bridge.stop()
    assert _publish_v5(fault_rig.broker.port, kit, 2) == "Success"  # queued for the group
    fault_rig.broker.restart()
    # the group's subscription is not back until a member reconnects: acknowledged, dropped
    assert _publish_v5(fault_rig.broker.port, kit, 3) == "No matching subscribers"
    again = fault_rig.bridge(settings, shared_group="bridges", client_id=client_id)
    wait_for(lambda: again.stats().connected and again.wait_subscribed(0), timeout_s=20,
             what="the bridge back and subscribed")
    assert _publish_v5(fault_rig.broker.port, kit, 4) == "Success"
    with InfluxClient.from_settings(settings) as influx:
        def seqs() -> list[int]:
            return sorted(int(r["seq"]) for r in influx.query(
                f"SELECT seq FROM kit_telemetry WHERE kit_id = '{kit}'"))
        wait_for(lambda: 4 in seqs(), timeout_s=20, what="the reading after the restart")
        assert seqs() == [1, 2, 4]  # 3 went to no one
