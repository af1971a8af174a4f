"""A simulated fleet's telemetry for the dashboard, analytics and Grafana tests.

Readings come from the simulator's own physics (firmware_sim.physics), stepped over a few
days, and go into the real influxd through the real ``/write`` API. A few kits are given
the faults the analytics must find: an undersized and an oversized kit, a shaded panel,
a bypassed lock and a battery that fades fast (its profile's fade per cycle).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cizo.protocol import Telemetry
from firmware_sim.physics import KitProfile, PhysicsState
from telemetry.influx import InfluxClient
from telemetry.schema import encode_line

DAY = 86_400


@dataclass
class FleetSpec:
    kit_ids: list[str]
    profiles: dict[str, KitProfile] = field(default_factory=dict)
    shaded: set[str] = field(default_factory=set)  # PV at 20 %
    bypassed: set[str] = field(default_factory=set)  # reports locked, draws power anyway


def standard_fleet(n: int = 12, prefix: str = "KIT-") -> FleetSpec:
    """Medium kits in large households, plus one kit of each fault (the first five)."""
    ids = [f"{prefix}{i:04d}" for i in range(n)]
    spec = FleetSpec(ids)
    for kit_id in ids:
        spec.profiles[kit_id] = KitProfile(pv_peak_w=80.0, battery_wh=400.0, household="large")
    spec.profiles[ids[0]] = KitProfile(pv_peak_w=40.0, battery_wh=200.0, household="large",
                                       load_scale=1.3)  # undersized
    spec.profiles[ids[1]] = KitProfile(pv_peak_w=150.0, battery_wh=800.0, household="basic",
                                       load_scale=0.7)  # oversized
    spec.shaded = {ids[2]}
    spec.bypassed = {ids[3]}
    spec.profiles[ids[4]] = KitProfile(pv_peak_w=80.0, battery_wh=400.0, household="large",
                                       fade_per_cycle=0.05)  # fades fast
    return spec


def simulate(spec: FleetSpec, start: int, end: int, step_s: int = 600) -> list[Telemetry]:
    """Readings of every kit from ``start`` to ``end`` (a Telemetry each ``step_s``)."""
    out: list[Telemetry] = []
    for kit_id in spec.kit_ids:
        profile = spec.profiles.get(kit_id) or KitProfile.for_kit(kit_id)
        state = PhysicsState(soc=60.0)
        for seq, t in enumerate(range(start, end, step_s), start=1):
            cloud = 0.2 if kit_id in spec.shaded else 1.0
            state.step(profile, float(t), float(step_s), load_enabled=True, cloud=cloud)
            out.append(Telemetry(
                v=1, kit_id=kit_id, ts=t, seq=seq, boot=1, battery_v=state.battery_v,
                soc=state.soc, pv_w=state.pv_w, load_w=state.load_w,
                pv_wh_total=state.pv_wh_total, load_wh_total=state.load_wh_total,
                locked=kit_id in spec.bypassed, credit_until=None, temp_c=state.temp_c,
            ))
    return out


def write_readings(url: str, db: str, readings: list[Telemetry], batch: int = 5000) -> None:
    with InfluxClient(url, db) as client:
        for i in range(0, len(readings), batch):
            client.write("\n".join(encode_line(r) for r in readings[i:i + batch]).encode())


@dataclass
class InfluxFleet:
    """A simulated fleet's readings in a real influxd, rolled up into the tiers."""

    url: str
    db: str
    spec: FleetSpec
    readings: list[Telemetry]
    start: int
    now: int


def load_fleet(url: str, db: str, now: int, days: int = 9, n: int = 12,
               step_s: int = 900) -> InfluxFleet:
    spec = standard_fleet(n)
    start = (now // DAY - days) * DAY
    readings = simulate(spec, start, now, step_s)
    write_readings(url, db, readings)
    return InfluxFleet(url, db, spec, readings, start, now)
