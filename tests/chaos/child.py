"""One process of the chaos month: ``python -m tests.chaos.child ROLE``.

Runs the product's own entry point for ROLE (``control``: ``control.main.main``;
``bridge``: ``broker_bridge.main``; ``paygate`` / ``momo``: the simulators' ``serve``) with
settings from the environment (``CIZO_*``, as ``cizo control`` reads them) and the run's
shared accelerated clock (``CHAOS_CLOCK_FILE``). The simulators keep a journal
(``CHAOS_SIM_JOURNAL``) so that a SIGKILL does not make the provider forget a payment, and
take their fault modes from ``CHAOS_SIM_FAULTS`` (JSON of config fields).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from cizo.logs import configure
from cizo.settings import Settings, load_settings
from tests.chaos.shared_clock import SharedClock


def main(role: str) -> None:
    configure(os.environ.get("CIZO_LOG_LEVEL", "WARNING"))
    settings = load_settings()
    clock = SharedClock(Path(os.environ["CHAOS_CLOCK_FILE"]))
    if role == "control":
        from control.main import main as control_main

        control_main(settings, clock)
    elif role == "bridge":
        from broker_bridge import main as bridge_main

        bridge_main(settings, client_id=settings.bridge_client_id,
                    shared_group=settings.bridge_shared_group, clock=clock)
    elif role in ("paygate", "momo"):
        _simulator(role, settings, clock)
    else:
        raise SystemExit(f"unknown role {role!r}")


def _simulator(role: str, settings: Settings, clock: SharedClock) -> None:
    port = int(os.environ["CHAOS_SIM_PORT"])
    common = {"journal": Path(os.environ["CHAOS_SIM_JOURNAL"]),
              "seed": int(os.environ.get("CHAOS_SIM_SEED", "0")) or None,
              **json.loads(os.environ.get("CHAOS_SIM_FAULTS", "{}"))}
    if role == "paygate":
        from payment_sim import paygate

        paygate.serve(paygate.PayGateSimConfig(
            auth_token=settings.paygate_auth_token.get_secret_value(),
            callback_url=os.environ["CHAOS_CALLBACK_URL"], clock=clock, **common),
            "127.0.0.1", port)
    else:
        from payment_sim import momo

        momo.serve(momo.MoMoSimConfig(
            subscription_key=settings.momo_subscription_key.get_secret_value(),
            api_user=settings.momo_api_user, api_key=settings.momo_api_key.get_secret_value(),
            target_environment=settings.momo_target_environment,
            currency=settings.momo_currency, **common), "127.0.0.1", port)


if __name__ == "__main__":
    logging.captureWarnings(True)
    main(sys.argv[1])
