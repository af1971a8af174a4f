"""Scenarios: TOML/YAML loading, seed determinism, misbehaviour, clocks, data budget, and a
small fleet with faults on a real broker (last will, buffered backlog, jittered reconnects)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from paho.mqtt import subscribe

from cizo import protocol
from cizo.clock import FrozenClock
from firmware_sim.clocks import AcceleratedClock, DriftingClock
from firmware_sim.driver import FleetDriver, identity_for
from firmware_sim.firmware import KitFirmware
from firmware_sim.scenario import (
    NetworkSpec,
    RegionOutage,
    Scenario,
    build_plan,
    load_scenario,
)
from firmware_sim.wire import OPENPAYGO_METRICS_KB, monthly_budget, pings_per_month

TOML = """
name = "lome-pilot"
kits = 50
days = 10
sizes = { S = 0.6, M = 0.3, L = 0.1 }
regions = { Lome = 0.7, Kara = 0.3 }
misbehaviour = { tamper = 0.1, never_ack = 0.05 }
[network]
drop_rate_per_day = 0.5
[[network.region_outages]]
region = "Kara"
start_day = 2
hours = 6
"""

YAML = """
name: lome-pilot
kits: 50
days: 10
sizes: {S: 0.6, M: 0.3, L: 0.1}
regions: {Lome: 0.7, Kara: 0.3}
misbehaviour: {tamper: 0.1, never_ack: 0.05}
network:
  drop_rate_per_day: 0.5
  region_outages:
    - {region: Kara, start_day: 2, hours: 6}
"""


def test_toml_and_yaml_give_the_same_scenario(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(TOML)
    (tmp_path / "s.yaml").write_text(YAML)
    assert load_scenario(tmp_path / "s.toml") == load_scenario(tmp_path / "s.yaml")


def test_same_seed_same_fleet_and_events_other_seed_differs(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(TOML)
    sc = load_scenario(tmp_path / "s.toml")
    a, b, c = build_plan(sc, 1), build_plan(sc, 1), build_plan(sc, 2)
    assert a == b and a.events == b.events and len(a.events) > 50
    assert a.kits != c.kits
    kara = [k for k in a.kits if k.region == "Kara"]
    start = sc.start_ts + 2 * 86_400
    assert kara and all((start, start + 6 * 3600) in k.outages for k in kara)
    assert {k.behaviour for k in a.kits} >= {"daily", "weekly"}
    assert {k.size for k in a.kits} == {"S", "M", "L"}


@pytest.mark.parametrize("bad", [
    {"sizes": {"XL": 1.0}},
    {"payments": {"sometimes": 1.0}},
    {"misbehaviour": {"explodes": 0.1}},
    {"network": {"region_outages": [{"region": "Nowhere", "start_day": 1, "hours": 1}]}},
    {"unknown_key": 1},
])
def test_bad_scenarios_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Scenario.model_validate(bad)


def test_drifting_clock_and_paused_accelerated_clock() -> None:
    base = FrozenClock(1_767_225_600)
    kit = DriftingClock(base, drift_ppm=100, offset_s=2)
    base.advance(86_400)
    assert kit.now() - base.now() == pytest.approx(2 + 8.64)
    acc = AcceleratedClock(1_767_225_600, speed=1000)
    acc.pause()
    t = acc.now()
    assert acc.now() == t and acc.paused
    acc.resume()
    assert not acc.paused and acc.real_seconds(1000) == 1.0


def test_tamper_and_stuck_sensor() -> None:
    clock = FrozenClock(1_767_225_600 + 20 * 3600)
    fw = KitFirmware("K1", "11" * 32, clock)
    fw.tamper = True
    fw.telemetry()
    clock.advance(600)
    tele = fw.telemetry()
    assert tele["locked"] is True and tele["load_w"] > 0  # usage while locked
    fw.stuck_sensor = True
    first = fw.telemetry()
    for _ in range(5):
        clock.advance(3600)
        again = fw.telemetry()
    assert {k: again[k] for k in ("soc", "battery_v", "pv_w", "load_w", "temp_c")} == {
        k: first[k] for k in ("soc", "battery_v", "pv_w", "load_w", "temp_c")}
    assert again["load_wh_total"] > first["load_wh_total"]  # counters still move


def test_monthly_budget_arithmetic() -> None:
    assert pings_per_month(900, 300) == 2 * 2880
    assert pings_per_month(900, 1200) == 0
    b = monthly_budget(mqtt_bytes_out=1000, mqtt_bytes_in=500, packets_out=10, packets_in=5,
                       connects=1, sim_seconds=86_400, keepalive_s=1200,
                       report_interval_s=900, avg_publish_bytes=300)
    assert b.mqtt_kb == pytest.approx(45.0)
    assert b.total_kb > b.mqtt_kb and b.compact_total_kb < b.total_kb
    assert b.vs_openpaygo == pytest.approx(b.total_kb / OPENPAYGO_METRICS_KB)


def test_small_fleet_with_faults_on_a_real_broker(mosquitto) -> None:
    """Outages fire the last will, readings are buffered with their original timestamps
    and delivered on reconnect, misbehaving kits send what they are told to."""
    sc = Scenario(kits=12, days=1, speed=86_400 / 12, telemetry_interval_s=1800,
                  keepalive_s=30, regions={"A": 0.5, "B": 0.5},
                  misbehaviour={"malformed": 1.0, "wrong_kit_id": 1.0},
                  network=NetworkSpec(region_outages=[
                      RegionOutage(region="A", start_day=0.3, hours=4)],
                      reconnect_base_s=0.1, reconnect_cap_s=1.0))
    plan = build_plan(sc, 5)
    clock = AcceleratedClock(sc.start_ts, sc.speed)
    received: list[tuple[str, bytes]] = []

    async def run() -> FleetDriver:
        driver = FleetDriver(plan, clock, host="127.0.0.1", port=mosquitto.port)
        from firmware_sim.mqtt_async import MqttConnection

        async def on_msg(topic: str, payload: bytes, retained: bool) -> None:
            received.append((topic, payload))

        sub = MqttConnection("127.0.0.1", mosquitto.port, "scenario-sub", clean_session=True,
                             on_message=on_msg)
        await sub.connect()
        await sub.subscribe("kits/+/#", 1)
        await driver.run(progress_every_s=0.5)
        await asyncio.sleep(0.5)
        await sub.disconnect()
        return driver

    driver = asyncio.run(run())
    s = driver.summary()
    region_a = [k for k in driver.kits if k.plan.region == "A"]
    assert region_a and s.link_drops >= len(region_a) and s.reconnects >= len(region_a)
    assert s.buffered_total > 0 and s.buffered_now == 0
    wills = [p for t, p in received if t.endswith("/status") and json.loads(p)["online"] is False]
    assert len(wills) >= len(region_a)  # the broker announced each lost kit
    tele = [json.loads(p) for t, p in received if t.endswith("/telemetry")
            and p.startswith(b"{") and b'"ts"' in p]
    # buffered readings arrive late but keep the time they were taken: ts not monotone
    # in arrival order for region A kits
    for k in region_a:
        ts = [m["ts"] for m in tele if m["kit_id"] == k.kit_id]
        assert ts == sorted(ts) and len(ts) >= 40
    wrong = [m for m in tele if m["kit_id"].endswith("X")]
    assert wrong and s.misbehaviours > 0
    malformed = [p for t, p in received if t.endswith("/telemetry")]
    assert any(_is_malformed(p) for p in malformed)
    retained = subscribe.simple(  # type: ignore[no-untyped-call]
        protocol.status_topic(driver.kits[0].kit_id), hostname="127.0.0.1",
        port=mosquitto.port, retained=True)
    assert json.loads(retained.payload)["online"] is False  # clean stop says offline
    assert identity_for("K", 1) == identity_for("K", 1)


def _is_malformed(payload: bytes) -> bool:
    try:
        protocol.parse_telemetry("x", payload, 2e9)
    except protocol.ContractError as exc:
        return exc.reason != "kit_id_mismatch"
    return False
