"""``cizo momo-sim``: run the MTN MoMo collections simulator (credentials from settings)."""

from __future__ import annotations

import argparse
import os


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("momo-sim", help="run the MTN MoMo collections simulator")
    p.add_argument("--port", type=int, default=int(os.environ.get("CIZO_MOMO_PORT", "18091")))
    p.add_argument("--approve-after", type=float, default=2.0)
    p.add_argument("--outcome", choices=("approve", "fail", "never"), default="approve")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cizo.settings import load_settings
    from payment_sim.momo import MoMoSimConfig, serve

    s = load_settings()
    serve(MoMoSimConfig(subscription_key=s.momo_subscription_key.get_secret_value(),
                        api_user=s.momo_api_user, api_key=s.momo_api_key.get_secret_value(),
                        target_environment=s.momo_target_environment,
                        currency=s.momo_currency, approve_after_s=args.approve_after,
                        outcome=args.outcome), "127.0.0.1", args.port)
    return 0
