"""``cizo rollup`` and ``cizo export opendata``: the rollup job by hand, the open-data CSV."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from control.cli.words import say

if TYPE_CHECKING:
    from cizo.settings import Settings

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("rollup", help="roll raw telemetry up to the hourly and daily tiers")
    p.add_argument("--every", type=float, default=0.0,
                   help="repeat every N seconds (0: once); also run the analytics")
    p.add_argument("--only-rollups", action="store_true",
                   help="with --every: no analytics or fleet summary, so no ledger access "
                        "(the control service runs those); a failed run is retried")
    p.add_argument("--heartbeat", type=Path,
                   help="file touched after each successful run (a container healthcheck)")
    p.set_defaults(func=_rollup)
    exp = sub.add_parser("export", help="export data sets")
    exp_sub = exp.add_subparsers(dest="what", required=True)
    od = exp_sub.add_parser("opendata", help="anonymised aggregates per region for a month")
    od.add_argument("month", help="YYYY-MM")
    od.add_argument("--out", type=Path, help="file to write (default: stdout)")
    od.set_defaults(func=_opendata)


def _rollup(args: argparse.Namespace) -> int:
    from cizo.settings import load_settings
    from control.fleet.jobs import run_analytics
    from control.fleet.summary import refresh_fleet_summary
    from control.ledger.db import Database
    from telemetry.rollups import ensure_tiers, run_rollups

    settings = load_settings()
    ensure_tiers(settings)
    while True:
        if args.only_rollups and args.every > 0:
            if _rollup_or_retry(settings) and args.heartbeat is not None:
                args.heartbeat.touch()
            time.sleep(args.every)
            continue
        result = run_rollups(settings, time.time())
        print(say("rollup: {hourly} hourly, {daily} daily points",
                  hourly=result.hourly_points, daily=result.daily_points))
        if args.every <= 0:
            return 0
        db = Database(settings.database_url)
        try:
            run_analytics(settings, db, time.time())
            refresh_fleet_summary(db, time.time())
        finally:
            db.dispose()
        time.sleep(args.every)


def _rollup_or_retry(settings: Settings) -> bool:
    """One run of the long-running rollup service: a failure (InfluxDB down) is logged
    and the next interval retries, as the control service's scheduled job does."""
    from telemetry.rollups import run_rollups

    try:
        result = run_rollups(settings, time.time())
    except Exception:
        log.exception("rollup failed; the next run will retry")
        return False
    print(say("rollup: {hourly} hourly, {daily} daily points",
              hourly=result.hourly_points, daily=result.daily_points), flush=True)
    return True


def _opendata(args: argparse.Namespace) -> int:
    from cizo.settings import load_settings
    from control.fleet.jobs import opendata_households
    from control.ledger.db import Database
    from telemetry import opendata

    settings = load_settings()
    try:
        opendata.check_month(args.month, settings.programme_start_month,
                             opendata.month_of(time.time()))
    except ValueError as exc:
        print(say("cizo export opendata: {error}", error=exc), file=sys.stderr)
        return 2
    db = Database(settings.database_url)
    try:
        rows = opendata.build_rows(opendata_households(settings, db, args.month),
                                   settings.opendata_min_households)
    finally:
        db.dispose()
    text = opendata.to_csv(rows)
    if args.out:
        args.out.write_text(text)
        log.info("open data for %s written to %s (%d rows)", args.month, args.out, len(rows))
    else:
        sys.stdout.write(text)
    return 0
