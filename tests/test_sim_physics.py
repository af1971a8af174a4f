"""Kit physics: the sun at Lomé, weather, battery ageing, household loads, energy balance."""

from __future__ import annotations

import pytest

from firmware_sim.physics import (
    HOUSEHOLD_APPLIANCES,
    KitProfile,
    PhysicsState,
    day_cloudiness,
    load_demand,
    pv_power,
    solar_elevation_deg,
)

JAN1 = 1_767_225_600  # 2026-01-01T00:00Z
JUN21 = JAN1 + 171 * 86_400
DAY = 86_400


def test_sun_at_lome_rises_about_six_and_is_higher_in_june() -> None:
    assert solar_elevation_deg(JAN1 + 3 * 3600) < 0  # night
    assert solar_elevation_deg(JAN1 + 7 * 3600) > 0  # morning
    noon_jan, noon_jun = solar_elevation_deg(JAN1 + 12 * 3600), solar_elevation_deg(
        JUN21 + 12 * 3600)
    # latitude 6.1°N: noon elevation ~61° at the winter solstice, ~73° at the summer one
    assert 58 < noon_jan < 64 and 70 < noon_jun < 76
    assert pv_power(KitProfile(), JAN1 + 2 * 3600) == 0.0


def test_weather_is_reproducible_and_varies_by_day() -> None:
    days = [day_cloudiness(7, JAN1 + d * DAY) for d in range(60)]
    assert days == [day_cloudiness(7, JAN1 + d * DAY) for d in range(60)]
    assert min(days) < 0.5 < 0.85 < max(days)  # cloudy and clear days both happen
    assert days != [day_cloudiness(8, JAN1 + d * DAY) for d in range(60)]


def test_households_differ_and_only_large_kits_watch_tv() -> None:
    evening = JAN1 + 20 * 3600
    loads = {hh: load_demand(KitProfile(household=hh), evening)
             for hh in ("basic", "standard", "large")}
    assert loads["basic"] < loads["standard"] < loads["large"]
    tv = {hh for hh, apps in HOUSEHOLD_APPLIANCES.items() if any(a.name == "tv" for a in apps)}
    assert tv == {"large"}


@pytest.mark.parametrize("household", ["basic", "standard", "large"])
@pytest.mark.parametrize("size", ["S", "M", "L"])
def test_energy_balance_over_a_month(household: str, size: str) -> None:
    """PV in - load out - losses == change in stored energy; losses within efficiencies."""
    profile = KitProfile.for_kit(f"K-{household}-{size}", household=household,  # type: ignore[arg-type]
                                 size=size, weather_seed=3)
    state = PhysicsState(soc=50.0, noise_seed=1)
    stored0 = state.stored_wh(profile)
    for i in range(1, 30 * 288 + 1):  # a month in 5-minute steps
        state.step(profile, JAN1 + i * 300, 300, load_enabled=True)
        assert 0.0 <= state.soc <= 100.0
    delta = state.stored_wh(profile) - stored0
    balance = state.pv_wh_total - state.load_wh_total - state.loss_wh_total
    assert balance == pytest.approx(delta, abs=1e-6)
    assert state.pv_wh_total > 0 and state.load_wh_total > 0
    # losses: at most what the two efficiencies and the ageing allow
    cell_losses = state.pv_wh_total * (1 - profile.charge_efficiency) / profile.charge_efficiency \
        + state.throughput_wh * (1 - profile.discharge_efficiency)
    aged = profile.battery_wh - state.capacity(profile)
    assert 0 < state.loss_wh_total <= cell_losses + aged + 1e-6


def test_locked_kit_delivers_nothing_and_the_battery_fills() -> None:
    profile = KitProfile(household="large")
    state = PhysicsState(soc=20.0)
    for i in range(1, 3 * 288):
        state.step(profile, JAN1 + i * 300, 300, load_enabled=False)
        assert state.load_w == 0.0
    assert state.load_wh_total == 0.0 and state.soc > 90.0


def test_battery_ages_and_voltage_follows_charge() -> None:
    profile = KitProfile(battery_wh=200.0, fade_per_cycle=0.001, household="large")
    state = PhysicsState(soc=100.0)
    volts = []
    for i in range(1, 120 * 288):
        state.step(profile, JAN1 + i * 300, 300, load_enabled=True)
        if i % 288 == 0:
            volts.append((state.soc, state.battery_v))
    assert state.capacity(profile) < 200.0 * 0.97  # visibly aged after 4 months of cycling
    low = [v for soc, v in volts if soc < 20]
    high = [v for soc, v in volts if soc > 80]
    if low and high:
        assert max(low) < min(high) + 0.6
    assert all(10.5 < v < 15.0 for _, v in volts)


def test_empty_battery_browns_out_at_night() -> None:
    profile = KitProfile(household="large")
    state = PhysicsState(soc=0.0)
    state.step(profile, JAN1 + 20 * 3600, 300, load_enabled=True)
    assert state.load_w == 0.0 and state.soc == 0.0
