"""Every periodic job of one control process, on one APScheduler.

The sweep (converge kits, re-send unacked commands, every ``sweep_interval_s``), payments
still pending re-checked with their provider (control.payments.poll), reminders before
credit ends, the broker's doors reconciled with the ledger (control.security.broker_auth;
at start too), the jobs behind the dashboards (control.fleet.jobs), the monthly open-data
release (control.fleet.publication), and hourly, rate-limit counters that no longer count
(control.security.shared_limits). Each job runs one
at a time (``max_instances=1``) and a missed run is coalesced, not queued; a job that fails
is logged and runs again next time.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler

from control.fleet.jobs import add_jobs as add_fleet_jobs
from control.fleet.publication import add_publish_job, catch_up
from control.payments.poll import add_poll_job
from control.payments.receipts import send_reminders
from control.runtime import Runtime
from control.security.broker_auth import BrokerDoors
from control.security.shared_limits import Limits

log = logging.getLogger(__name__)


def start(rt: Runtime) -> BackgroundScheduler:
    """Register every job of the control process and start them."""
    scheduler = BackgroundScheduler(timezone="UTC")
    interval = rt.settings.sweep_interval_s
    scheduler.add_job(
        _sweep, "interval", seconds=interval, args=[rt], id="sweep",
        max_instances=1, coalesce=True, misfire_grace_time=max(1, int(interval * 10)),
    )
    scheduler.add_job(
        _reminders, "interval", seconds=rt.settings.reminder_interval_s, args=[rt],
        id="reminders", max_instances=1, coalesce=True,
    )
    doors = BrokerDoors(rt.settings, rt.db, rt.box)
    if doors.enabled:  # at start, then periodically: the broker comes back to the ledger
        scheduler.add_job(
            _reconcile_broker, "interval", seconds=rt.settings.broker_reconcile_interval_s,
            args=[doors], id="broker-reconcile", max_instances=1, coalesce=True,
            next_run_time=datetime.now(UTC),
        )
    scheduler.add_job(
        _prune_rate_limits, "interval", seconds=3600, args=[rt], id="rate_limits",
        max_instances=1, coalesce=True,
    )
    add_poll_job(scheduler, rt)
    # after the start-up analytics: the month before, if no release has published it yet
    add_fleet_jobs(scheduler, rt.settings, rt.db, rt.clock.now,
                   then_at_start=lambda now: catch_up(rt.settings, rt.db, now))
    add_publish_job(scheduler, rt.settings, rt.db, rt.clock.now)
    scheduler.start()
    return scheduler


def _sweep(rt: Runtime) -> None:
    try:
        rt.service.sweep()
    except Exception:
        log.exception("sweep failed; the next run will retry")


def _reconcile_broker(doors: BrokerDoors) -> None:
    try:
        doors.reconcile()
    except Exception:
        log.exception("broker reconcile failed; the next run will retry")


def _prune_rate_limits(rt: Runtime) -> None:
    try:
        Limits.of(rt).prune(rt.clock.now())
    except Exception:
        log.exception("rate-limit pruning failed; the next run will retry")


def _reminders(rt: Runtime) -> None:
    try:
        sent = send_reminders(rt)
        if sent:
            log.info("sent %d reminders", sent)
    except Exception:
        log.exception("reminder job failed; the next run will retry")
