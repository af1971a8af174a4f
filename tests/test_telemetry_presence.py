"""Presence: online/offline from the retained status and the last will, last seen per
kit, and silent kits, on a real broker, bridge and influxd."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from broker_bridge import Bridge
from cizo import protocol, services
from cizo.clock import SystemClock
from cizo.settings import Settings
from telemetry import InfluxClient
from telemetry.presence import KitPresence, classify_silent, presence, silent_kits
from tests.support import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(mosquitto: services.ManagedProcess, influxd: services.InfluxProcess,
             influx_db: str, tmp_path: Path) -> Settings:
    return Settings(mqtt_port=mosquitto.port, influx_url=f"http://127.0.0.1:{influxd.port}",
                    influx_db=influx_db, influx_flush_interval_s=0.1, data_dir=tmp_path)


@pytest.fixture
def bridge(settings: Settings) -> Iterator[Bridge]:
    b = Bridge(settings, SystemClock(), client_id=f"presence-{uuid.uuid4().hex[:8]}",
               session_expiry_s=30)
    b.start()
    assert b.wait_subscribed(10)
    yield b
    b.stop()


def kit_client(port: int, kit_id: str) -> mqtt.Client:
    """A kit as the contract says: retained will offline, retained online on connect."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=kit_id, protocol=mqtt.MQTTv5)
    c.will_set(protocol.status_topic(kit_id), b'{"v":1,"online":false}', qos=1, retain=True)
    c.connect("127.0.0.1", port, keepalive=5)
    c.loop_start()
    c.publish(protocol.status_topic(kit_id), b'{"v":1,"online":true,"fw":"1.0"}', qos=1,
              retain=True).wait_for_publish(5)
    return c


def reading(kit_id: str, ts: int) -> bytes:
    return json.dumps({"v": 1, "kit_id": kit_id, "ts": ts, "seq": ts % 1000, "boot": 1,
                       "battery_v": 12.5, "soc": 50.0, "pv_w": 1.0, "load_w": 1.0,
                       "pv_wh_total": 1.0, "load_wh_total": 1.0, "locked": False,
                       "credit_until": None, "temp_c": 25.0}).encode()


def test_online_offline_last_seen_and_silent(bridge: Bridge, settings: Settings,
                                             mosquitto: services.ManagedProcess) -> None:
    now = int(time.time())
    fresh, stale = f"P-{uuid.uuid4().hex[:8]}", f"P-{uuid.uuid4().hex[:8]}"
    kits = {k: kit_client(mosquitto.port, k) for k in (fresh, stale)}
    kits[fresh].publish(protocol.telemetry_topic(fresh), reading(fresh, now - 10),
                        qos=1).wait_for_publish(5)
    kits[stale].publish(protocol.telemetry_topic(stale), reading(stale, now - 7200),
                        qos=1).wait_for_publish(5)
    with InfluxClient.from_settings(settings) as influx:
        def both_present() -> dict[str, KitPresence] | None:
            p = presence(influx)
            ok = all(k in p and p[k].online is not None and p[k].last_seen is not None
                     for k in (fresh, stale))
            return p if ok else None

        seen = wait_for(both_present, what="presence of both kits")
        assert seen is not None
        assert seen[fresh].online is True and seen[fresh].last_seen == now - 10
        assert seen[stale].last_seen == now - 7200

        silent = silent_kits(influx, older_than_s=3600, expected=[fresh, stale, "NEVER-1"])
        assert silent == {stale: now - 7200, "NEVER-1": None}

        # the stale kit's radio dies: no DISCONNECT, the broker publishes its will
        sock = kits[stale].socket()
        assert isinstance(sock, socket.socket)
        kits[stale].loop_stop()
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        wait_for(lambda: presence(influx)[stale].online is False, timeout_s=20,
                 what="offline from the last will")
        assert presence(influx)[fresh].online is True
    kits[fresh].disconnect()
    kits[fresh].loop_stop()


def test_classify_silent_is_pure() -> None:
    assert classify_silent({"a": 100, "b": 950, "c": None}, now=1000, older_than_s=100,
                           expected=["d", "a"]) == {"a": 100, "c": None, "d": None}
