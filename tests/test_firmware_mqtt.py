"""A simulated kit against a real Mosquitto: status, telemetry, signed commands, last will."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cizo import protocol as p
from cizo import services
from cizo.clock import SystemClock
from cizo.settings import Settings
from firmware_sim import Fleet, KitIdentity, SimKit, load_identities
from tests.support import Watcher

pytestmark = pytest.mark.integration

SECRET = "ab" * 32


@pytest.fixture
def settings(mosquitto: services.ManagedProcess) -> Settings:
    return Settings(mqtt_port=mosquitto.port, sim_telemetry_interval_s=0.5, mqtt_keepalive_s=5)


@pytest.fixture
def kit_id() -> str:
    return f"SIM{uuid.uuid4().hex[:8]}"


@pytest.fixture
def watcher(mosquitto: services.ManagedProcess, kit_id: str) -> Iterator[Watcher]:
    w = Watcher(mosquitto.port, kit_id)
    yield w
    for topic in (p.status_topic(kit_id), p.cmd_topic(kit_id)):  # leave no retained state
        w.publish(topic, b"", retain=True)
    w.close()


def test_sim_kit_status_telemetry_command_ack_and_last_will(
    settings: Settings, kit_id: str, watcher: Watcher
) -> None:
    status_t, tele_t, ack_t = p.status_topic(kit_id), p.telemetry_topic(kit_id), p.ack_topic(kit_id)
    kit = SimKit(KitIdentity(kit_id, None, None, SECRET), settings, SystemClock())
    kit.start()
    try:
        _, status = watcher.wait_for(lambda t, d, r: t == status_t and d is not None)
        assert p.parse_status(json.dumps(status).encode()).online is True

        _, tele = watcher.wait_for(lambda t, d, r: t == tele_t)
        parsed = p.parse_telemetry(kit_id, json.dumps(tele).encode(), time.time())
        assert parsed.locked is True and parsed.load_w == 0
        _, later = watcher.wait_for(lambda t, d, r: t == tele_t)  # the timer keeps sending
        assert later["seq"] > tele["seq"]

        now = int(time.time())
        cmd = p.build_command(
            kit_id=kit_id, command_id="c-1", seq=1, action="unlock", credit_until=now + 86_400,
            issued_at=now, expires_at=now + 3600, secret_hex=SECRET,
        )
        watcher.publish(p.cmd_topic(kit_id), p.encode(cmd), retain=True)
        _, ack = watcher.wait_for(lambda t, d, r: t == ack_t)
        assert p.parse_ack(json.dumps(ack).encode()).result == "applied"
        assert (ack["id"], ack["locked"], ack["credit_until"]) == ("c-1", False, now + 86_400)
        _, tele = watcher.wait_for(lambda t, d, r: t == tele_t and d["seq"] > later["seq"])
        assert tele["locked"] is False and tele["credit_until"] == now + 86_400

        forged = dict(cmd, id="c-2", seq=2, credit_until=now + 10 * 86_400)
        watcher.publish(p.cmd_topic(kit_id), p.encode(forged), retain=True)
        _, ack = watcher.wait_for(lambda t, d, r: t == ack_t)
        assert (ack["id"], ack["result"], ack["reason"]) == ("c-2", "rejected", "bad_signature")
        assert kit.stats().commands_applied == 1 and kit.stats().commands_rejected == 1
    finally:
        kit.crash()  # power cut: no DISCONNECT packet
    _, status = watcher.wait_for(lambda t, d, r: t == status_t and d is not None)
    assert status == {"v": 1, "online": False}


def test_graceful_stop_and_restart_keeps_state_and_reports_offline(
    settings: Settings, kit_id: str, watcher: Watcher
) -> None:
    status_t = p.status_topic(kit_id)
    kit = SimKit(KitIdentity(kit_id, None, None, SECRET), settings, SystemClock())
    kit.start()
    watcher.wait_for(lambda t, d, r: t == status_t and d is not None and d["online"])
    kit.stop()
    _, status = watcher.wait_for(lambda t, d, r: t == status_t and d is not None)
    assert status["online"] is False and not kit.connected


def test_telemetry_is_buffered_while_the_broker_is_down(
    mosquitto: services.ManagedProcess, settings: Settings, kit_id: str
) -> None:
    kit = SimKit(KitIdentity(kit_id, None, None, SECRET), settings, SystemClock())
    kit.start()
    try:
        deadline = time.monotonic() + 10
        while not kit.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert kit.connected
        mosquitto.stop()
        try:
            deadline = time.monotonic() + 10
            while kit.stats().buffered < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert kit.stats().buffered >= 3
        finally:
            mosquitto.start()
        watcher = Watcher(mosquitto.port, kit_id)
        try:
            deadline = time.monotonic() + 40  # paho's reconnect backoff
            while kit.stats().buffered and time.monotonic() < deadline:
                time.sleep(0.1)
            assert kit.connected and kit.stats().buffered == 0
        finally:
            watcher.close()
    finally:
        kit.stop()


def test_fleet_runs_kits_from_a_fleet_file(settings: Settings, tmp_path: Path) -> None:
    ids = [f"FL{uuid.uuid4().hex[:6]}" for _ in range(3)]
    fleet_file = tmp_path / "fleet.json"
    fleet_file.write_text(json.dumps([
        {"kit_id": k, "mqtt_username": None, "mqtt_password": None, "command_secret": SECRET}
        for k in ids
    ]))
    identities = load_identities(fleet_file)
    assert [i.kit_id for i in identities] == ids
    fleet = Fleet(identities, settings, SystemClock())
    fleet.start()
    try:
        deadline = time.monotonic() + 10
        while fleet.stats().online < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = fleet.stats()
        assert stats.online == 3 and stats.kits == 3
    finally:
        fleet.stop()
    assert fleet.stats().online == 0 and fleet.stats().messages_sent >= 6


def test_fleet_file_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "fleet.json"
    bad.write_text(json.dumps([{"kit_id": "K1", "command_secret": "zz"}]))
    with pytest.raises(ValueError, match="not hex"):
        load_identities(bad)
    bad.write_text(json.dumps([{"kit_id": "K1", "command_secret": SECRET}] * 2))
    with pytest.raises(ValueError, match="twice"):
        load_identities(bad)
