"""Local stand-ins for mobile-money providers: PayGate Global (``paygate``) and MTN MoMo
collections (``momo``), sharing one server and fault model (``server``)."""

from __future__ import annotations

from payment_sim.paygate import (
    PayGateHandle,
    PayGateSim,
    PayGateSimConfig,
    create_app,
    run_in_thread,
    serve,
)

__all__ = [
    "PayGateHandle",
    "PayGateSim",
    "PayGateSimConfig",
    "create_app",
    "run_in_thread",
    "serve",
]
