"""Energy physics of one solar home kit in Lomé: sun, weather, battery, household loads.

Pure functions of time and state (no I/O, no wall clock), apart from the firmware rules
so it can be deepened without touching lock/unlock logic.

- Sun: elevation from the solar declination and hour angle at Lomé (6.13°N, 1.22°E,
  UTC+0, no daylight saving), with the equation of time; clear-sky irradiance from the
  elevation through a simple air-mass model.
- Weather: each day is clear, hazy or cloudy, drawn from a per-kit-area seed and the day
  number (rainy seasons April-July and September-October are cloudier); within the day a
  smooth per-step noise.
- Battery: nominal capacity that fades with equivalent full cycles (LiFePO4: ~20 % after
  2,000), charge and discharge efficiencies, a 12.8 V voltage curve with the usual flat
  middle and steep ends.
- Loads: appliances with daily windows by household type; a locked kit (or an empty
  battery) delivers nothing.

Energy accounting: ``pv_wh_total`` in, ``load_wh_total`` out, ``loss_wh_total`` (charge
and discharge losses plus capacity lost to ageing above the new capacity) so that
``in - out - losses == stored energy change`` exactly; the unit tests check it.
"""

from __future__ import annotations

import functools
import math
import random
import time
from dataclasses import dataclass, field
from typing import Literal

LATITUDE_DEG = 6.13
LONGITUDE_DEG = 1.22
_DAY_S = 86_400.0
SOLAR_CONSTANT_W_M2 = 1361.0

Household = Literal["basic", "standard", "large"]
HOUSEHOLDS: tuple[Household, ...] = ("basic", "standard", "large")


@dataclass(frozen=True, slots=True)
class Appliance:
    name: str
    watts: float
    start_h: float  # local hour it is switched on
    end_h: float  # local hour it is switched off (may wrap past midnight)

    def on(self, h: float) -> bool:
        if self.start_h <= self.end_h:
            return self.start_h <= h < self.end_h
        return h >= self.start_h or h < self.end_h


# What a household of each type runs on a kit (watts as the DC appliances draw).
HOUSEHOLD_APPLIANCES: dict[Household, tuple[Appliance, ...]] = {
    "basic": (
        Appliance("lights", 6.0, 18.3, 22.0),
        Appliance("night_light", 1.5, 22.0, 6.0),
        Appliance("phone", 5.0, 12.0, 14.0),
    ),
    "standard": (
        Appliance("lights", 9.0, 18.3, 22.5),
        Appliance("night_light", 1.5, 22.5, 6.0),
        Appliance("phone", 5.0, 12.0, 15.0),
        Appliance("radio", 4.0, 7.0, 9.0),
        Appliance("radio_evening", 4.0, 19.0, 22.0),
    ),
    "large": (
        Appliance("lights", 12.0, 18.3, 23.0),
        Appliance("night_light", 2.0, 23.0, 6.0),
        Appliance("phone", 10.0, 12.0, 16.0),
        Appliance("radio", 4.0, 7.0, 10.0),
        Appliance("tv", 20.0, 19.0, 22.5),
        Appliance("fan", 12.0, 13.0, 16.0),
    ),
}


@dataclass(frozen=True, slots=True)
class KitProfile:
    """The hardware and household of one kit (fixed for its life)."""

    pv_peak_w: float = 60.0
    battery_wh: float = 300.0  # nominal, when new
    household: Household = "standard"
    charge_efficiency: float = 0.95
    discharge_efficiency: float = 0.95
    fade_per_cycle: float = 0.0001  # capacity fraction lost per equivalent full cycle
    load_scale: float = 1.0  # this household's habits around the type's typical use
    weather_seed: int = 0  # kits in one area share weather

    @classmethod
    def for_kit(cls, kit_id: str, household: Household | None = None,
                size: str | None = None, weather_seed: int = 0) -> KitProfile:
        """A stable per-kit variation, so a fleet does not move in lock-step."""
        rng = random.Random(kit_id)
        hh: Household = household if household is not None else rng.choice(HOUSEHOLDS)
        sizes = KIT_SIZES.get(size or "") or KIT_SIZES[
            {"basic": "S", "standard": "M", "large": "L"}[hh]]
        return cls(
            pv_peak_w=sizes[0],
            battery_wh=sizes[1],
            household=hh,
            load_scale=round(rng.uniform(0.7, 1.3), 2),
            weather_seed=weather_seed,
        )


# kit size -> (PV peak W, battery Wh)
KIT_SIZES: dict[str, tuple[float, float]] = {
    "S": (40.0, 200.0),
    "M": (80.0, 400.0),
    "L": (150.0, 800.0),
}


def hour_of_day(t: float) -> float:
    """Local clock hour in Lomé (UTC+0) as a float in [0, 24)."""
    return (t % _DAY_S) / 3600.0


def day_of_year(t: float) -> int:
    """1..366, from unix seconds (UTC)."""
    return time.gmtime(t).tm_yday


def solar_elevation_deg(t: float) -> float:
    """Sun elevation above the horizon at Lomé at unix time ``t`` (degrees)."""
    doy = day_of_year(t)
    gamma = 2.0 * math.pi / 365.0 * (doy - 1 + (hour_of_day(t) - 12.0) / 24.0)
    decl = (0.006918 - 0.399912 * math.cos(gamma) + 0.070257 * math.sin(gamma)
            - 0.006758 * math.cos(2 * gamma) + 0.000907 * math.sin(2 * gamma)
            - 0.002697 * math.cos(3 * gamma) + 0.00148 * math.sin(3 * gamma))
    eot_min = 229.18 * (0.000075 + 0.001868 * math.cos(gamma) - 0.032077 * math.sin(gamma)
                        - 0.014615 * math.cos(2 * gamma) - 0.040849 * math.sin(2 * gamma))
    solar_time_h = hour_of_day(t) + (eot_min + 4.0 * LONGITUDE_DEG) / 60.0
    hour_angle = math.radians(15.0 * (solar_time_h - 12.0))
    lat = math.radians(LATITUDE_DEG)
    sin_el = (math.sin(lat) * math.sin(decl)
              + math.cos(lat) * math.cos(decl) * math.cos(hour_angle))
    return math.degrees(math.asin(max(-1.0, min(1.0, sin_el))))


def clear_sky_irradiance(elevation_deg: float) -> float:
    """Global horizontal irradiance on a clear tropical day, W/m² (Meinel air-mass model)."""
    if elevation_deg <= 0.0:
        return 0.0
    sin_el = math.sin(math.radians(elevation_deg))
    air_mass = 1.0 / (sin_el + 0.50572 * (elevation_deg + 6.07995) ** -1.6364)
    direct = SOLAR_CONSTANT_W_M2 * 0.7 ** (air_mass**0.678)
    return float(1.1 * direct * sin_el)  # +10 % diffuse


def day_cloudiness(weather_seed: int, t: float) -> float:
    """Fraction of clear-sky output that reaches the panel today (0.15..1.0).

    The same seed and day always give the same weather, so runs are reproducible.
    """
    return _cloudiness(weather_seed, int(t // _DAY_S))


@functools.lru_cache(maxsize=4096)
def _cloudiness(weather_seed: int, day: int) -> float:
    rng = random.Random(weather_seed * 1_000_003 + day)
    month = time.gmtime(day * _DAY_S).tm_mon
    p_cloudy = 0.45 if month in (4, 5, 6, 7, 9, 10) else 0.15
    roll = rng.random()
    if roll < p_cloudy:
        return rng.uniform(0.15, 0.5)  # overcast or a storm
    if roll < p_cloudy + 0.25:
        return rng.uniform(0.6, 0.85)  # harmattan haze / broken cloud
    return float(rng.uniform(0.85, 1.0))


def pv_power(profile: KitProfile, t: float, cloud: float = 1.0) -> float:
    """Available PV power (before curtailment) at time ``t``; ``cloud`` scales it."""
    irradiance = clear_sky_irradiance(solar_elevation_deg(t))
    # panels are rated at 1000 W/m²; 0.85 for soiling, heat and wiring
    return profile.pv_peak_w * irradiance / 1000.0 * 0.85 * max(0.0, min(1.0, cloud))


def load_demand(profile: KitProfile, t: float) -> float:
    """What the household would draw now if the kit lets it."""
    h = hour_of_day(t)
    watts = sum(a.watts for a in HOUSEHOLD_APPLIANCES[profile.household] if a.on(h))
    return watts * profile.load_scale


def battery_voltage(soc: float, net_w: float, capacity_wh: float = 300.0) -> float:
    """A 12.8 V LiFePO4 pack: flat middle, steep ends, lifted while charging (IR drop)."""
    s = max(0.0, min(100.0, soc)) / 100.0
    rest = 12.0 + 1.2 * s + 0.4 * s**8 - 0.6 * (1.0 - s) ** 8
    current_a = net_w / 12.8
    internal_ohm = 0.02 * 300.0 / max(capacity_wh, 1.0)
    return rest + max(-0.5, min(0.6, current_a * internal_ohm))


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
    loss_wh_total: float = 0.0
    throughput_wh: float = 0.0  # energy discharged, for ageing
    capacity_wh: float | None = None  # current (aged) capacity; None: nominal
    temp_c: float = 28.0
    battery_v: float = 12.8
    noise_seed: int = 0
    _noise: random.Random = field(default_factory=random.Random, repr=False)
    _noise_level: float = 1.0

    def __post_init__(self) -> None:
        self._noise = random.Random(self.noise_seed)

    def stored_wh(self, profile: KitProfile) -> float:
        return self.soc / 100.0 * self.capacity(profile)

    def capacity(self, profile: KitProfile) -> float:
        return profile.battery_wh if self.capacity_wh is None else self.capacity_wh

    def step(self, profile: KitProfile, t: float, dt: float, *, load_enabled: bool,
             cloud: float | None = None) -> None:
        """Advance by ``dt`` seconds ending at ``t``; the load is cut when locked or empty.

        ``cloud`` overrides the day's weather (tests); None uses ``day_cloudiness``.
        """
        if cloud is None:
            # slowly wandering noise (passing clouds) around the day's weather
            self._noise_level += (self._noise.gauss(1.0, 0.1) - self._noise_level) * 0.3
            cloud = day_cloudiness(profile.weather_seed, t) * max(
                0.3, min(1.15, self._noise_level))
        cap = self.capacity(profile)
        stored = self.soc / 100.0 * cap
        hours = dt / 3600.0
        available = pv_power(profile, t, cloud)
        demand = load_demand(profile, t) if load_enabled else 0.0
        eta_c, eta_d = profile.charge_efficiency, profile.discharge_efficiency
        if hours <= 0:
            pv = available
            load = demand if stored > 0 else 0.0
            net_w = pv - load
        else:
            # PV serves the load directly; the surplus charges, a deficit discharges
            direct = min(available, demand)
            surplus = available - direct
            deficit = demand - direct
            charge_wh = min(surplus * hours * eta_c, cap - stored)
            drawn_wh = min(deficit * hours / eta_d, stored)  # taken out of the cells
            supplied_deficit = drawn_wh * eta_d / hours
            pv = direct + charge_wh / eta_c / hours  # curtailed when full
            load = direct + supplied_deficit  # brown-out when empty
            loss = charge_wh * (1.0 / eta_c - 1.0) + drawn_wh * (1.0 - eta_d)
            stored = stored + charge_wh - drawn_wh
            self.pv_wh_total += pv * hours
            self.load_wh_total += load * hours
            self.loss_wh_total += loss
            self.throughput_wh += drawn_wh
            # ageing: capacity fades with equivalent full cycles
            nominal = profile.battery_wh
            new_cap = nominal * max(0.5, 1.0 - profile.fade_per_cycle
                                    * self.throughput_wh / nominal)
            if new_cap < cap:
                self.capacity_wh = new_cap
                if stored > new_cap:
                    self.loss_wh_total += stored - new_cap
                    stored = new_cap
                cap = new_cap
            net_w = (charge_wh - drawn_wh) / hours
        self.soc = max(0.0, min(100.0, 100.0 * stored / cap))
        self.pv_w = pv
        self.load_w = load
        self.battery_v = battery_voltage(self.soc, net_w, cap)
        self.temp_c = ambient_temp(t) + pv / max(profile.pv_peak_w, 1.0) * 6.0
