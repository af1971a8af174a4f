"""``cizo kits provision``: one kit, or one OpenPAYGO Metrics device, through the HTTP API.

    cizo kits provision SERIAL --phone P --deposit N --daily-rate N --total-price N
        [--kind mqtt|openpaygo_metrics] [--desco ID] [--deposit-unpaid]

With an admin key (``--api-key`` or ``CIZO_SUPPORT_API_KEY``), like ``cizo support``: the
same roles, DESCO scope and audit as ``POST /v1/kits``. The credentials are printed once
(an OpenPAYGO Metrics device's include its ``openpaygo_key``, which its maker flashes).
"""

from __future__ import annotations

import argparse
from typing import Any

from control.cli.support import post


def register(sub: argparse._SubParsersAction[Any]) -> None:
    k = sub.add_parser("kits", help="kits through the HTTP API (provisioning: admin key)")
    k.add_argument("--url", default=None, help="API base URL (default: settings)")
    k.add_argument("--api-key", default=None, help="your API key (default: "
                   "CIZO_SUPPORT_API_KEY)")
    ks = k.add_subparsers(dest="kits_command", required=True)
    pv = ks.add_parser("provision", help="a new kit (or OpenPAYGO Metrics device) and its "
                       "account; credentials printed once")
    pv.add_argument("kit_id", help="the serial")
    pv.add_argument("--phone", required=True, help="the customer's phone")
    pv.add_argument("--deposit", type=int, required=True, help="deposit, FCFA")
    pv.add_argument("--daily-rate", type=int, required=True, help="FCFA a day")
    pv.add_argument("--total-price", type=int, required=True, help="FCFA to own the kit")
    pv.add_argument("--kind", choices=("mqtt", "openpaygo_metrics"), default="mqtt",
                    help="mqtt: a CIZO kit; openpaygo_metrics: a device posting to /dd")
    pv.add_argument("--desco", default=None, help="its DESCO (default: your key's)")
    pv.add_argument("--deposit-unpaid", action="store_true",
                    help="the deposit was not taken in cash at the sale")
    pv.set_defaults(func=provision)


def provision(args: argparse.Namespace) -> int:
    return post(args, "/v1/kits", {
        "kit_id": args.kit_id, "desco_id": args.desco, "phone": args.phone,
        "kind": args.kind, "deposit_paid": not args.deposit_unpaid,
        "plan": {"deposit_fcfa": args.deposit, "daily_rate_fcfa": args.daily_rate,
                 "total_price_fcfa": args.total_price}})
