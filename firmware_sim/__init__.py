"""Simulated CIZO kits: firmware rules, one MQTT client per kit, and a fleet runner."""

from __future__ import annotations

from firmware_sim.firmware import KitFirmware
from firmware_sim.fleet import Fleet, FleetStats, load_identities
from firmware_sim.kit import KitIdentity, KitStats, SimKit

__all__ = [
    "Fleet",
    "FleetStats",
    "KitFirmware",
    "KitIdentity",
    "KitStats",
    "SimKit",
    "load_identities",
]
