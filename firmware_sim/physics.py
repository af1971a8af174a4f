"""Plausible, deliberately simple energy physics of one solar home kit in Lomé.

Kept apart from the firmware rules so it can be deepened (weather, battery ageing,
inverter losses) without touching the lock/unlock logic. Everything is a pure function
of time and state: no I/O, no wall clock. Lomé is on UTC (no daylight saving) at about
1.2°E, so solar noon is close to 12:00 UTC and days are ~12 h long all year.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

SUNRISE_H = 6.0
SUNSET_H = 18.2
_DAY_S = 86_400.0


@dataclass(frozen=True, slots=True)
class KitProfile:
    """The hardware and household of one kit (fixed for its life)."""

    pv_peak_w: float = 60.0
    battery_wh: float = 300.0
    evening_load_w: float = 25.0  # lights, TV, radio from dusk to late evening
    night_load_w: float = 4.0  # a light or a fan overnight
    day_load_w: float = 3.0  # phone charging during the day
    charge_efficiency: float = 0.9

    @classmethod
    def for_kit(cls, kit_id: str) -> KitProfile:
        """A stable per-kit variation, so a fleet does not move in lock-step."""
        rng = random.Random(kit_id)
        return cls(
            pv_peak_w=rng.choice((40.0, 60.0, 80.0, 100.0)),
            battery_wh=rng.choice((200.0, 300.0, 500.0)),
            evening_load_w=round(rng.uniform(12.0, 40.0), 1),
            night_load_w=round(rng.uniform(1.0, 6.0), 1),
            day_load_w=round(rng.uniform(0.0, 5.0), 1),
        )


def hour_of_day(t: float) -> float:
    """Local hour in Lomé (UTC+0) as a float in [0, 24)."""
    return (t % _DAY_S) / 3600.0


def pv_power(profile: KitProfile, t: float, cloud: float = 1.0) -> float:
    """Available PV power: a half-sine between sunrise and sunset, scaled by ``cloud``."""
    h = hour_of_day(t)
    if h <= SUNRISE_H or h >= SUNSET_H:
        return 0.0
    phase = (h - SUNRISE_H) / (SUNSET_H - SUNRISE_H)
    return profile.pv_peak_w * math.sin(math.pi * phase) * max(0.0, min(1.0, cloud))


def load_demand(profile: KitProfile, t: float) -> float:
    """What the household would draw if the kit lets it (evening peak)."""
    h = hour_of_day(t)
    if 18.0 <= h < 23.0:
        return profile.evening_load_w
    if h >= 23.0 or h < 6.0:
        return profile.night_load_w
    return profile.day_load_w


def battery_voltage(soc: float, net_w: float) -> float:
    """A 12.8 V LiFePO4 pack: flat middle, steep ends, lifted while charging."""
    s = max(0.0, min(100.0, soc)) / 100.0
    rest = 12.0 + 1.2 * s + 0.4 * s**8 - 0.6 * (1.0 - s) ** 8
    return rest + max(-0.3, min(0.4, net_w / 150.0))


def ambient_temp(t: float) -> float:
    """Lomé air temperature: ~25 °C before dawn, ~31 °C mid-afternoon."""
    h = hour_of_day(t)
    return 28.0 + 3.0 * math.sin(2.0 * math.pi * (h - 9.0) / 24.0)


@dataclass(slots=True)
class PhysicsState:
    """Battery charge, instantaneous powers and energy counters of one kit."""

    soc: float = 70.0
    pv_w: float = 0.0
    load_w: float = 0.0
    pv_wh_total: float = 0.0
    load_wh_total: float = 0.0
    temp_c: float = 28.0
    battery_v: float = 12.8

    def step(self, profile: KitProfile, t: float, dt: float, *, load_enabled: bool,
             cloud: float = 1.0) -> None:
        """Advance by ``dt`` seconds ending at ``t``; the load is cut when locked or empty."""
        available = pv_power(profile, t, cloud)
        demand = load_demand(profile, t) if load_enabled and self.soc > 1.0 else 0.0
        headroom_wh = profile.battery_wh * (100.0 - self.soc) / 100.0
        hours = dt / 3600.0
        # a full battery curtails PV down to what the load takes
        max_charge_w = headroom_wh / hours / profile.charge_efficiency if hours > 0 else 0.0
        pv = min(available, demand + max_charge_w) if hours > 0 else available
        net_w = pv * profile.charge_efficiency - demand if pv >= demand else pv - demand
        self.soc = max(0.0, min(100.0, self.soc + 100.0 * net_w * hours / profile.battery_wh))
        self.pv_w = pv
        self.load_w = demand
        self.pv_wh_total += pv * hours
        self.load_wh_total += demand * hours
        self.battery_v = battery_voltage(self.soc, net_w)
        self.temp_c = ambient_temp(t) + pv / max(profile.pv_peak_w, 1.0) * 6.0
