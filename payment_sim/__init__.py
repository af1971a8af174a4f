"""Local stand-ins for mobile-money providers (PayGate Global for now)."""

from __future__ import annotations

from payment_sim.paygate import (
    PayGateSim,
    PayGateSimConfig,
    SimServerHandle,
    create_app,
    run_in_thread,
    serve,
)

__all__ = [
    "PayGateSim",
    "PayGateSimConfig",
    "SimServerHandle",
    "create_app",
    "run_in_thread",
    "serve",
]
