"""``cizo``: one console script, a subcommand per process or task.

    cizo up           the whole local stack with a simulated fleet (cizo_cli.stack)
    cizo bridge       MQTT -> InfluxDB telemetry bridge
    cizo control      HTTP API + MQTT command link + sweep scheduler
    cizo sim          a simulated fleet of kits from a credentials file
    cizo paygate-sim  a local simulator of PayGate Global's merchant API
    cizo migrate      bring the ledger schema up to date
    cizo backup       back the ledger up to a file; cizo restore puts it back
    cizo keygen       print a fresh CIZO_SECRET_KEY
    cizo kits         import kits from CSV, export kits (payments, commands) as CSV
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from broker_bridge import commands_cli as broker_bridge_cli
from cizo.logs import configure as configure_logging
from cizo.production import ConfigurationError, require_development
from cizo.settings import load_settings
from control.cli import admin as admin_cli
from control.cli import backup as backup_cli
from control.cli import finance as finance_cli
from control.cli import fleet as fleet_cli
from control.cli import kits as kits_cli
from control.cli import secret_key as secret_key_cli
from control.cli import support as support_cli
from control.cli.words import say
from payment_sim import commands_cli as payment_sim_cli

log = logging.getLogger("cizo")

PORT_FLAGS = {
    "mqtt": ("CIZO_MQTT_PORT", 11883),
    "mqtt-tls": ("CIZO_MQTT_TLS_PORT", 18883),
    "api": ("CIZO_API_PORT", 8000),
    "influx": ("CIZO_INFLUX_PORT", 18086),
    "paygate": ("CIZO_PAYGATE_PORT", 18090),
    "momo": ("CIZO_MOMO_PORT", 18091),
}


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(say("cizo: {name}={value!r} is not a port number", name=name,
                             value=raw)) from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cizo", description="CIZO kit backend")
    p.add_argument("--log-level", default=os.environ.get("CIZO_LOG_LEVEL", "INFO"))
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start the whole local stack with a simulated fleet")
    for name, (env, default) in PORT_FLAGS.items():
        up.add_argument(f"--{name}-port", type=int, default=_env_int(env, default),
                        help=f"(env {env}, default {default})")
    up.add_argument("--kits", type=int, default=_env_int("CIZO_SIM_KITS", 50),
                    help="simulated kits (env CIZO_SIM_KITS, default 50)")
    up.add_argument("--data-dir", type=Path,
                    default=Path(os.environ.get("CIZO_STACK_DIR", "var/stack")),
                    help="where the local stack keeps its state (env CIZO_STACK_DIR)")
    up.add_argument("--fresh", action="store_true", help="wipe the data directory first")
    up.add_argument("--fleet-tls", action="store_true",
                    default=os.environ.get("CIZO_SIM_TLS") == "1",
                    help="the simulated fleet connects through the TLS listener "
                         "(env CIZO_SIM_TLS=1)")
    up.add_argument("--pay-every", type=float, default=15.0,
                    help="seconds between simulated customer payments (0: none)")

    sub.add_parser("bridge", help="run the MQTT -> InfluxDB telemetry bridge")
    sub.add_parser("control", help="run the control service (API, command link, sweep)")

    sim = sub.add_parser("sim", help="run a simulated fleet")
    sim.add_argument("--fleet", type=Path,
                     help="JSON file of kit credentials (written by provisioning)")
    sim.add_argument("--scenario", type=Path,
                     help="TOML/YAML scenario (docs/simulation.md): asyncio fleet driver")
    sim.add_argument("--seed", type=int, default=1, help="scenario seed (default 1)")
    sim.add_argument("--api-key", default=os.environ.get("CIZO_SIM_API_KEY"),
                     help="finance/admin API key: customers pay through the control API "
                          "(env CIZO_SIM_API_KEY)")
    sim.add_argument("--support-key", default=os.environ.get("CIZO_SIM_SUPPORT_KEY"),
                     help="support/admin API key for keypad kits: flag keypad-only, read "
                          "codes out (env CIZO_SIM_SUPPORT_KEY; default: --api-key)")

    pg = sub.add_parser("paygate-sim", help="run the PayGate Global simulator")
    pg.add_argument("--port", type=int, default=_env_int("CIZO_PAYGATE_PORT", 18090))
    pg.add_argument("--callback-url", required=True)
    pg.add_argument("--approve-after", type=float, default=2.0)

    sub.add_parser("migrate", help="apply ledger migrations")
    sub.add_parser("keygen", help="print a new CIZO_SECRET_KEY")
    for module in PLUGIN_MODULES:
        module.register(sub)
    return p


# Packages add their own subcommands (``cizo support ...``, ``cizo deadletter ...``) in one
# module each, with ``register(subparsers)``; every parser it adds sets ``func=handler``
# where ``handler(args: Namespace) -> int``.
PLUGIN_MODULES = (
    broker_bridge_cli,  # cizo deadletter ...
    fleet_cli,  # cizo rollup / analytics / export ...
    support_cli,  # cizo support ...
    kits_cli,  # cizo kits provision / import / export, cizo payments|commands export
    finance_cli,  # cizo reconcile / settlement ...
    admin_cli,  # cizo keys / broker credentials / erase ...
    backup_cli,  # cizo backup / restore
    secret_key_cli,  # cizo secret-key rotate
    payment_sim_cli,  # momo-sim ...
)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        return _run(args)
    except ConfigurationError as exc:
        raise SystemExit(f"cizo {args.command}: {exc}") from None


def _run(args: argparse.Namespace) -> int:
    handler = getattr(args, "func", None)
    if handler is not None:
        result: int = handler(args)
        return result
    if args.command == "keygen":
        from control.ledger.secrets import generate_secret_key

        print(generate_secret_key())
        return 0
    if args.command == "up":
        from cizo_cli.history import HistoryOptions
        from cizo_cli.stack import StackOptions, run_stack

        settings = load_settings()
        require_development(settings)
        return run_stack(StackOptions(
            mqtt_port=args.mqtt_port, api_port=args.api_port, influx_port=args.influx_port,
            paygate_port=args.paygate_port, momo_port=args.momo_port, kits=args.kits,
            data_dir=args.data_dir, fresh=args.fresh, pay_every_s=args.pay_every,
            mqtt_tls_port=args.mqtt_tls_port, fleet_tls=args.fleet_tls,
            history=HistoryOptions.from_settings(settings),
        ))
    if args.command == "paygate-sim":
        from payment_sim.paygate import PayGateSimConfig, serve

        settings = load_settings()
        serve(
            PayGateSimConfig(
                auth_token=settings.paygate_auth_token.get_secret_value(),
                callback_url=args.callback_url,
                approve_after_s=args.approve_after,
            ),
            "127.0.0.1",
            args.port,
        )
        return 0
    settings = load_settings()
    if args.command == "migrate":
        from control.ledger.db import migrate

        migrate(settings.database_url)
        return 0
    if args.command == "bridge":
        from broker_bridge import main as bridge_main

        bridge_main(settings, client_id=settings.bridge_client_id,
                    shared_group=settings.bridge_shared_group)
        return 0
    if args.command == "control":
        from control.main import main as control_main

        control_main(settings)
        return 0
    if args.command == "sim":
        if args.scenario is not None:
            from firmware_sim.driver import run_scenario

            run_scenario(settings, args.scenario, seed=args.seed, fleet_file=args.fleet,
                         api_key=args.api_key, support_key=args.support_key)
            return 0
        if args.fleet is None:
            raise SystemExit("cizo sim: give --fleet FILE and/or --scenario FILE")
        from firmware_sim.fleet import main as sim_main

        sim_main(settings, args.fleet)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
