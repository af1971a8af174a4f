"""Hostile payloads through a real Mosquitto and the real bridge: oversized, deeply nested,
invalid UTF-8, NaN/Infinity, far-future timestamps are rejected and counted by reason in
the bridge's public stats, nothing of them reaches InfluxDB, and ingestion goes on.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from broker_bridge import Bridge
from cizo import protocol, services
from cizo.clock import SystemClock
from cizo.settings import Settings
from telemetry import InfluxClient, quote_string
from tests.support import wait_for


def _reading(kit_id: str, **over: object) -> dict[str, object]:
    msg: dict[str, object] = {
        "v": 1, "kit_id": kit_id, "ts": int(time.time()) - 60, "seq": 1, "boot": 1,
        "battery_v": 12.7, "soc": 80.0, "pv_w": 40.0, "load_w": 5.0, "pv_wh_total": 100.0,
        "load_wh_total": 50.0, "locked": False, "credit_until": None, "temp_c": 30.0,
    }
    msg.update(over)
    return msg


def test_hostile_payloads_are_rejected_counted_and_never_stored(
    mosquitto: services.ManagedProcess, influxd: services.InfluxProcess, influx_db: str,
    tmp_path: Path,
) -> None:
    kit = f"BAD-{uuid.uuid4().hex[:8]}"
    settings = Settings(mqtt_port=mosquitto.port, influx_url=f"http://127.0.0.1:{influxd.port}",
                        influx_db=influx_db, influx_flush_interval_s=0.1, data_dir=tmp_path)
    bridge = Bridge(settings, SystemClock(), client_id=f"bridge-{kit}", session_expiry_s=30)
    bridge.start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{kit}",
                      protocol=mqtt.MQTTv5)
    try:
        assert bridge.wait_subscribed(10)
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        topic = protocol.telemetry_topic(kit)
        hostile = {
            "oversized": json.dumps(_reading(kit, pad="x" * 5000)).encode(),
            "too_deep": b'{"v":1,"x":' + b"[" * 500 + b"]" * 500 + b"}",
            "invalid_utf8": b'{"v":1,"kit_id":"\xff\xfe"}',
            "non_finite": json.dumps(_reading(kit, soc=float("nan"))).encode(),
            "ts_in_future": json.dumps(_reading(kit, ts=int(time.time()) + 10 * 365 * 86_400,
                                                seq=2)).encode(),
        }
        for payload in [*hostile.values(), b'{"v":1,"kit_id":"' + kit.encode()
                        + b'","soc":1e999}']:
            pub.publish(topic, payload, qos=1).wait_for_publish(5)
        pub.publish(topic, json.dumps(_reading(kit, seq=3)).encode(),
                    qos=1).wait_for_publish(5)
        # the session broker is shared: other tests' retained status messages may reach
        # this bridge too, so everything is judged per kit
        wait_for(lambda: sum(bridge.counters.for_kit(kit).values()) >= len(hostile) + 1, 15,
                 "the bridge to judge every hostile message")
        stats = bridge.stats()
        for reason in hostile:
            assert stats.rejected.get(reason, 0) >= 1, (reason, stats.rejected)
        assert bridge.counters.for_kit(kit) == {r: (2 if r == "non_finite" else 1)
                                                for r in hostile}
        influx = InfluxClient(f"http://127.0.0.1:{influxd.port}", influx_db)

        def stored() -> list[int]:
            rows = influx.query(
                f"SELECT seq FROM kit_telemetry WHERE kit_id = {quote_string(kit)}")
            return [int(r["seq"]) for r in rows]

        try:
            assert wait_for(stored, 10, "the valid reading stored") == [3]  # only that one
        finally:
            influx.close()
        wait_for(lambda: (s := bridge.stats()).acked == s.messages_in, 10,
                 "every message, bad ones included, acknowledged (never redelivered)")
        # a packet beyond the broker's max_packet_size never reaches the bridge at all
        before = bridge.stats().messages_in
        pub.publish(topic, b"x" * 70_000, qos=0)
        time.sleep(0.3)
        assert bridge.stats().messages_in == before
    finally:
        pub.loop_stop()
        pub.disconnect()
        bridge.stop()
