"""The bridge end to end: real Mosquitto and influxd, paho publishers, InfluxQL checks."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from broker_bridge import Bridge
from cizo import protocol, services
from cizo.clock import SystemClock
from cizo.settings import Settings
from telemetry import InfluxClient, InfluxQueryError, quote_string
from tests.bridge_support import (
    FaultRig,
    bridge_settings,
    metric_samples,
    start_bridge,
    unique,
)

pytestmark = pytest.mark.integration


def reading(kit_id: str, seq: int, ts: int | None = None, **over: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "v": 1, "kit_id": kit_id, "ts": ts if ts is not None else int(time.time()) - 3600 + seq,
        "seq": seq, "boot": 3, "battery_v": 12.75, "soc": 64.5, "pv_w": 41.0, "load_w": 6.5,
        "pv_wh_total": 1200.25, "load_wh_total": 800.0, "locked": False, "credit_until": None,
        "temp_c": 31.5,
    }
    msg.update(over)
    return msg


def wait_until(check: Callable[[], Any], timeout_s: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or check}")
        time.sleep(0.05)


def complete(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """``row`` once every column holds a value, else None (to wait on)."""
    return row if row and all(v is not None for v in row.values()) else None


class Publisher:
    """A kit-side paho client publishing at QoS1 and waiting for each PUBACK."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique("pub"),
                                  protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes | dict[str, Any]) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        info = self.client.publish(topic, body, qos=1)
        info.wait_for_publish(5)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(mosquitto: services.ManagedProcess) -> Iterator[Publisher]:
    pub = Publisher(mosquitto.port)
    yield pub
    pub.close()


@pytest.fixture
def settings(mosquitto: services.ManagedProcess, influxd: services.InfluxProcess,
             influx_db: str, tmp_path: Path) -> Settings:
    return bridge_settings(mosquitto.port, influxd.port, influx_db, tmp_path / "var")


@pytest.fixture
def bridge(settings: Settings) -> Iterator[Bridge]:
    b = start_bridge(settings)
    yield b
    b.stop()


def count_points(influx: InfluxClient, kit_id: str) -> int:
    q = f"SELECT count(seq) FROM kit_telemetry WHERE kit_id = {quote_string(kit_id)}"
    rows = influx.query(q)
    return int(rows[0]["count"]) if rows else 0


def seqs(influx: InfluxClient, kit_id: str) -> list[int]:
    rows = influx.query(f"SELECT seq FROM kit_telemetry WHERE kit_id = {quote_string(kit_id)}")
    return sorted(int(r["seq"]) for r in rows)


# --- (a) one reading, exact values --------------------------------------------------------


def test_published_telemetry_is_queryable_with_exact_values(
    bridge: Bridge, publisher: Publisher, settings: Settings
) -> None:
    kit = unique("TG")
    ts = int(time.time()) - 5
    publisher.send(protocol.telemetry_topic(kit),
                   reading(kit, 42, ts=ts, locked=True, credit_until=ts + 86400, load_w=7))
    publisher.send(protocol.status_topic(kit), {"v": 1, "online": True, "fw": "1.4.2"})
    with InfluxClient.from_settings(settings) as influx:
        # InfluxDB 1.x gives a query no isolation from a write in flight: a point's fields
        # land in its cache one series at a time, so an early read can see half a point.
        row = wait_until(lambda: complete(influx.last_telemetry(kit)), what="telemetry point")
        assert row == {
            "time": ts, "kit_id": kit, "battery_v": 12.75, "soc": 64.5, "pv_w": 41.0,
            "load_w": 7.0, "pv_wh_total": 1200.25, "load_wh_total": 800.0, "temp_c": 31.5,
            "seq": 42, "boot": 3, "locked": True, "credit_until": ts + 86400,
        }
        status = wait_until(lambda: influx.query(
            f"SELECT online, fw FROM kit_status WHERE kit_id = {quote_string(kit)}"), what="status")
        assert status[0]["online"] is True and status[0]["fw"] == "1.4.2"
    # the points are visible in InfluxDB a moment before the bridge counts its write
    wait_until(lambda: bridge.stats().written >= 2, what="writes counted")
    assert bridge.stats().last_write_latency_s is not None


def test_run_forever_stops_on_event_and_flushes(settings: Settings, publisher: Publisher) -> None:
    kit = unique("KIT")
    stop = threading.Event()
    bridge = Bridge(settings, SystemClock(), client_id=unique("bridge"), session_expiry_s=30)
    runner = threading.Thread(target=bridge.run_forever, args=(stop,))
    runner.start()
    try:
        assert bridge.wait_subscribed(10)
        publisher.send(protocol.telemetry_topic(kit), reading(kit, 1))
        wait_until(lambda: bridge.stats().messages_in >= 1, what="message received")
    finally:
        stop.set()
        runner.join(15)
    assert not runner.is_alive()
    with InfluxClient.from_settings(settings) as influx:
        assert seqs(influx, kit) == [1]  # written by stop() at the latest


# --- (b) invalid messages are counted, acked, and do not disturb valid ones ----------------


def test_invalid_messages_are_rejected_by_reason_and_valid_ones_all_land(
    settings: Settings, publisher: Publisher
) -> None:
    kit, other = unique("KIT"), unique("OTHER")
    topic = protocol.telemetry_topic(kit)
    client_id = unique("bridge")
    bridge = start_bridge(settings, client_id=client_id)
    invalid: list[bytes | dict[str, Any]] = [
        b"this is not json",
        reading(kit, 100, soc=150),
        json.dumps(reading(kit, 101)).replace('"soc": 64.5', '"soc": NaN').encode(),
        reading(other, 102),
        reading(kit, 103, ts=int(time.time()) + 86400),
    ]
    try:
        for i, bad in enumerate(invalid):
            publisher.send(topic, reading(kit, i))
            publisher.send(topic, bad)
        publisher.send(topic, reading(kit, len(invalid)))
        expected = len(invalid) + 1
        with InfluxClient.from_settings(settings) as influx:
            wait_until(lambda: count_points(influx, kit) == expected, what="valid points")
            assert seqs(influx, kit) == list(range(expected))
            assert count_points(influx, other) == 0
        wait_until(lambda: sum(bridge.counters.for_kit(kit).values()) == len(invalid))
        assert bridge.counters.for_kit(kit) == {
            "not_json": 1, "invalid_field": 1, "non_finite": 1, "kit_id_mismatch": 1,
            "ts_in_future": 1,
        }
        wait_until(lambda: bridge.stats().acked >= expected + len(invalid), what="acks")
    finally:
        bridge.stop()

    # Everything above was acknowledged (valid after its write, invalid at once): the
    # same persistent session gets only what was published while the bridge was away.
    publisher.send(topic, reading(kit, 50))
    again = start_bridge(settings, client_id=client_id)
    try:
        with InfluxClient.from_settings(settings) as influx:
            wait_until(lambda: count_points(influx, kit) == expected + 1, what="queued point")
        time.sleep(0.3)  # room for any (wrong) redelivery to show up
        stats = again.stats()
        assert stats.messages_in == 1 and stats.written == 1 and stats.rejected_total == 0
    finally:
        again.stop()


def test_line_influx_refuses_is_rejected_alone_and_the_rest_lands(
    settings: Settings, publisher: Publisher
) -> None:
    kit = unique("KIT")
    old_ts = int(time.time()) - 60 * 86400  # another shard, where seq is already a float
    with InfluxClient.from_settings(settings) as influx:
        influx.write(f"kit_telemetry,kit_id=seed seq=0.5 {old_ts - 10}".encode())
        # long flush interval: all three go out in one batch, which influx refuses (400)
        bridge = start_bridge(settings.model_copy(update={"influx_flush_interval_s": 1.0}))
        try:
            topic = protocol.telemetry_topic(kit)
            publisher.send(topic, reading(kit, 1))
            publisher.send(topic, reading(kit, 2, ts=old_ts))
            publisher.send(topic, reading(kit, 3))
            wait_until(lambda: count_points(influx, kit) == 2, what="the two good points")
            wait_until(lambda: bridge.counters.for_kit(kit) == {"influx_rejected": 1})
            assert seqs(influx, kit) == [1, 3]
        finally:
            bridge.stop()


def test_dropped_database_is_recreated_and_nothing_is_lost(
    settings: Settings, publisher: Publisher
) -> None:
    kit = unique("KIT")
    bridge = start_bridge(settings)
    try:
        with InfluxClient.from_settings(settings) as influx:
            publisher.send(protocol.telemetry_topic(kit), reading(kit, 1))
            wait_until(lambda: count_points(influx, kit) == 1)
            influx.query(f'DROP DATABASE "{settings.influx_db}"', db="")
            publisher.send(protocol.telemetry_topic(kit), reading(kit, 2))

            def recreated_with_point() -> bool:
                try:
                    return seqs(influx, kit) == [2]
                except InfluxQueryError:  # "database not found" until the bridge recreates it
                    return False

            wait_until(recreated_with_point, what="point in the recreated db")
    finally:
        bridge.stop()


# --- (d) InfluxDB down and back: every message lands exactly once ---------------------------


def test_influxd_restart_while_publishing_loses_and_duplicates_nothing(
    tmp_path: Path, mosquitto: services.ManagedProcess, publisher: Publisher
) -> None:
    influxd = services.influxd(tmp_path / "influxd", services.free_port())
    influxd.start()
    try:
        settings = bridge_settings(mosquitto.port, influxd.port, "cizo_restart",
                                   tmp_path / "var")
        kit = unique("KIT")
        topic = protocol.telemetry_topic(kit)
        bridge = start_bridge(settings)
        total = 60
        try:
            with InfluxClient.from_settings(settings) as influx:
                for seq in range(20):
                    publisher.send(topic, reading(kit, seq))
                # Wait for the bridge's own success, not just visibility: a loaded influxd
                # 1.6 can store a batch and still answer 500, which the bridge retries.
                wait_until(lambda: bridge.stats().written == 20, what="first 20 written")
                assert count_points(influx, kit) == 20
                influxd.stop()
                for seq in range(20, 45):
                    publisher.send(topic, reading(kit, seq))
                    time.sleep(0.01)
                wait_until(lambda: bridge.stats().spooled == 25, what="outage spooled")
                assert bridge.stats().written == 20 and bridge.stats().write_retries > 0
                influxd.start()
                for seq in range(45, total):
                    publisher.send(topic, reading(kit, seq))
                wait_until(lambda: count_points(influx, kit) == total, timeout_s=15,
                           what="all points after restart")
                assert seqs(influx, kit) == list(range(total))
            wait_until(lambda: bridge.stats().acked == total, what="all acks")
            stats = bridge.stats()
            assert stats.written == total and stats.messages_in == total
            assert stats.rejected_total == 0
        finally:
            bridge.stop()
    finally:
        influxd.stop()


# --- broker restart while InfluxDB is down: session redelivery, no duplicates ---------------


def test_broker_restart_redelivers_unwritten_messages_once(fault_rig: FaultRig) -> None:
    # spool off: this test is about the broker holding what the bridge did not ack
    settings = fault_rig.settings("cizo_broker_restart", bridge_spool_max_bytes=0)
    kit = unique("KIT")
    topic = protocol.telemetry_topic(kit)
    bridge = start_bridge(settings, reconnect_max_s=2)
    publisher = Publisher(fault_rig.broker.port)
    try:
        fault_rig.stop_influxd()
        for seq in range(10):
            publisher.send(topic, reading(kit, seq))
        wait_until(lambda: bridge.stats().messages_in == 10 and
                   bridge.stats().write_retries > 0, what="10 received, write failing")
        fault_rig.broker.restart()  # the bridge's session and its 10 unacked messages persist
        assert bridge.wait_subscribed(15), "bridge did not resubscribe after restart"
        fault_rig.influxd.start()
        publisher.close()
        publisher = Publisher(fault_rig.broker.port)
        for seq in range(10, 15):
            publisher.send(topic, reading(kit, seq))
        with InfluxClient.from_settings(settings) as influx:
            wait_until(lambda: count_points(influx, kit) == 15, timeout_s=15,
                       what="all 15 points")
            assert seqs(influx, kit) == list(range(15))
        wait_until(lambda: bridge.stats().acked == 15, what="acks on the new connection")
        stats = bridge.stats()
        # the 10 were received twice (before and after the restart) and written once
        assert stats.messages_in == 25 and stats.written == 15
    finally:
        bridge.stop()
        publisher.close()


# --- redelivery vs conflict, dead letters, /metrics ------------------------------------------


def scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert "# TYPE cizo_bridge_messages_in_total counter" in text
    return metric_samples(text)


def test_same_kit_and_ts_is_idempotent_when_identical_and_dead_lettered_when_not(
    settings: Settings, publisher: Publisher
) -> None:
    kit = unique("KIT")
    topic = protocol.telemetry_topic(kit)
    ts = int(time.time()) - 100
    bridge = start_bridge(settings.model_copy(update={"bridge_metrics_port": 0}))
    try:
        original = reading(kit, 5, ts=ts)
        publisher.send(topic, original)
        publisher.send(topic, original)  # a redelivery: the same point again
        publisher.send(topic, json.dumps(original, indent=1).encode())  # same values
        publisher.send(topic, reading(kit, 5, ts=ts, soc=10.0))  # would overwrite: refused
        publisher.send(topic, reading(kit, 5, ts=ts + 30))  # (boot, seq) reused: refused
        publisher.send(topic, b"x" * (protocol.MAX_PAYLOAD_BYTES + 1))
        publisher.send(topic, reading(kit, 6, ts=ts + 60))
        with InfluxClient.from_settings(settings) as influx:
            wait_until(lambda: count_points(influx, kit) == 2, what="two distinct points")
            wait_until(lambda: bridge.stats().acked == 7, what="all acked")
            row = influx.query(f"SELECT soc FROM kit_telemetry WHERE kit_id = "
                               f"{quote_string(kit)} AND time = {ts}s")
            assert row[0]["soc"] == 64.5  # the first reading was not overwritten
        assert bridge.counters.for_kit(kit) == {"ts_conflict": 1, "duplicate_seq": 1,
                                                "oversized": 1}
        assert bridge.deadletters is not None
        letters = bridge.deadletters.list(kit_id=kit)
        assert sorted(d.reason for d in letters) == ["duplicate_seq", "oversized", "ts_conflict"]
        conflict = bridge.deadletters.list(kit_id=kit, reason="ts_conflict")[0]
        assert json.loads(conflict.payload)["soc"] == 10.0 and conflict.topic == topic
        assert bridge.metrics_port is not None
        m = scrape(bridge.metrics_port)
        assert m["cizo_bridge_messages_in_total"] == 7
        assert m['cizo_bridge_rejected_total{reason="ts_conflict"}'] == 1
        assert m["cizo_bridge_deadletters_total"] == 3 and m["cizo_bridge_written_total"] == 4
        assert m["cizo_bridge_write_latency_seconds"] > 0 and m["cizo_bridge_lag_seconds"] >= 0
        assert m["cizo_bridge_spool_bytes"] == 0 and m["cizo_bridge_connected"] == 1
    finally:
        bridge.stop()


def test_kit_registry_dead_letters_unknown_kits_and_readings_before_provisioning(
    settings: Settings, publisher: Publisher, tmp_path: Path
) -> None:
    from control.ledger.db import Database, migrate
    from control.ledger.models import Desco, Kit

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate(url)
    db = Database(url)
    now = time.time()
    known = unique("KNOWN")
    with db.session() as s:
        s.add(Desco(id="d1", name="D1", created_at=now))
        s.flush()
        s.add(Kit(id=known, desco_id="d1", mqtt_username=known, mqtt_password_hash="x",
                  secret_enc="x", cmd_seq=0, online=False, created_at=now - 7 * 86400))
    bridge = start_bridge(settings.model_copy(update={
        "bridge_kit_registry": True, "database_url": url, "bridge_kit_ts_slack_s": 3600}))
    late = unique("LATE")
    try:
        stranger = unique("STRANGER")
        publisher.send(protocol.telemetry_topic(stranger), reading(stranger, 1))
        publisher.send(protocol.telemetry_topic(known),
                       reading(known, 1, ts=int(now) - 9 * 86400))  # before provisioning
        publisher.send(protocol.telemetry_topic(known), reading(known, 2))
        with db.session() as s:  # provisioned while the bridge runs: known at first reading
            s.add(Kit(id=late, desco_id="d1", mqtt_username=late, mqtt_password_hash="x",
                      secret_enc="x", cmd_seq=0, online=False, created_at=now))
        publisher.send(protocol.telemetry_topic(late), reading(late, 1))
        with InfluxClient.from_settings(settings) as influx:
            wait_until(lambda: count_points(influx, late) == 1, what="late kit's point")
            assert seqs(influx, known) == [2] and count_points(influx, stranger) == 0
        assert bridge.counters.for_kit(stranger) == {"unknown_kit": 1}
        assert bridge.counters.for_kit(known) == {"ts_before_kit": 1}
        assert bridge.deadletters is not None
        assert bridge.deadletters.counts() == {"unknown_kit": 1, "ts_before_kit": 1}
    finally:
        bridge.stop()
        db.dispose()
