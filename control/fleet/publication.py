"""The monthly open-data release: one CSV and its metadata per month, written by a job.

On ``opendata_publish_day`` of each month the scheduler publishes the month before into
``opendata_dir`` (``cizo-opendata-YYYY-MM.csv`` and ``.json``, per region; and
``cizo-opendata-health-YYYY-MM.csv`` and ``.json``, the repayment health per DESCO and
region on the publication day), the files a portal such as data.gouv.tg harvests. Files
are replaced whole (written aside, then renamed), so a reader never sees half a file; a
lease keeps two control processes from writing at once.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from cizo.settings import Settings
from control.fleet import national, summary
from control.fleet.jobs import REGIONS, opendata_households
from control.fleet.summary import refresh_fleet_summary
from control.ledger.db import Database
from control.ledger.leases import Lease
from telemetry import opendata

log = logging.getLogger(__name__)

LEASE = "opendata"
LEASE_S = 900.0


def release_dir(settings: Settings) -> Path:
    return settings.opendata_dir or settings.data_dir / "opendata"


def publish(settings: Settings, db: Database, month: str) -> tuple[Path, Path] | None:
    """Write one month's CSV and metadata; None when another process is publishing."""
    with Lease(db, LEASE, LEASE_S) as lease:
        if not lease.held:
            log.info("open data %s: another control process is publishing it", month)
            return None
        rows = opendata.build_rows(opendata_households(settings, db, month),
                                   settings.opendata_min_households)
        written = write_release(settings, month, rows)
        publish_health(settings, db, month, time.time())
        return written


def catch_up(settings: Settings, db: Database, now: float) -> bool:
    """Publish the month before ``now`` if it is not published yet (a process that was
    down on the release day, or a stack just started); True when it published."""
    month = opendata.previous_month(now)
    out = release_dir(settings)
    if month < settings.programme_start_month or all(
            (out / name).exists() for name in (f"cizo-opendata-{month}.csv",
                                               f"cizo-opendata-health-{month}.csv")):
        return False
    return publish(settings, db, month) is not None


def publish_health(settings: Settings, db: Database, month: str, now: float
                   ) -> tuple[Path, Path]:
    """The month's health file from the fleet summary, refreshed first: as on ``now``."""
    refresh_fleet_summary(db, now)
    return write_health(settings, month, opendata.build_health_rows(
        month, national.health_groups(summary.current_rows(db, now), REGIONS),
        settings.opendata_min_households))


def write_release(settings: Settings, month: str, rows: list[dict[str, str]]
                  ) -> tuple[Path, Path]:
    """One month's CSV and metadata files from its rows (``opendata.build_rows``)."""
    return _write(settings, f"cizo-opendata-{month}", opendata.to_csv(rows),
                  opendata.metadata, month, f"{len(rows)} rows")


def write_health(settings: Settings, month: str, rows: list[dict[str, str]]
                 ) -> tuple[Path, Path]:
    """The month's health file (``opendata.build_health_rows``) and its metadata."""
    return _write(settings, f"cizo-opendata-health-{month}",
                  opendata.to_csv(rows, opendata.HEALTH_COLUMNS), opendata.health_metadata,
                  month, f"health of {len(rows)} groups")


def _write(settings: Settings, stem: str, text: str, describe: Callable[..., dict[str, Any]],
           month: str, what: str) -> tuple[Path, Path]:
    out = release_dir(settings)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, meta_path = out / f"{stem}.csv", out / f"{stem}.json"
    meta = describe(month, min_households=settings.opendata_min_households,
                    licence=settings.opendata_licence, publisher=settings.opendata_publisher,
                    csv_name=csv_path.name)
    _replace(csv_path, text)
    _replace(meta_path, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    log.info("open data %s published: %s in %s", month, what, out)
    return csv_path, meta_path


def published_health(settings: Settings) -> list[dict[str, str]]:
    """The rows of the latest published health file (none before the first release)."""
    paths = sorted(release_dir(settings).glob(
        "cizo-opendata-health-[0-9][0-9][0-9][0-9]-[0-9][0-9].csv"))
    return opendata.from_csv(paths[-1].read_text(encoding="utf-8")) if paths else []


def published_rows(settings: Settings, months: int) -> list[dict[str, str]]:
    """The rows of the last ``months`` published files, oldest first: exactly what a
    portal harvested, so a figure shown from them is the published figure."""
    paths = sorted(release_dir(settings).glob("cizo-opendata-[0-9][0-9][0-9][0-9]-[0-9][0-9].csv"))
    rows: list[dict[str, str]] = []
    for path in paths[-months:] if months > 0 else []:
        rows.extend(opendata.from_csv(path.read_text(encoding="utf-8")))
    return rows


def _replace(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def add_publish_job(scheduler: BackgroundScheduler, settings: Settings, db: Database,
                    clock_now: Callable[[], float]) -> None:
    """Every month, on ``opendata_publish_day`` at 03:00 UTC: the month before."""

    def job() -> None:
        try:
            publish(settings, db, opendata.previous_month(clock_now()))
        except Exception:
            log.exception("open data publication failed; it runs again next month "
                          "(or by hand: cizo export opendata)")

    scheduler.add_job(job, "cron", day=settings.opendata_publish_day, hour=3,
                      id="opendata", max_instances=1, coalesce=True, misfire_grace_time=86_400)
