"""APScheduler job that runs the control sweep every ``sweep_interval_s``."""

from __future__ import annotations

import logging

from apscheduler.schedulers.background import BackgroundScheduler

from control.commands.service import ControlService
from control.runtime import Runtime

log = logging.getLogger(__name__)


def start_scheduler(service: ControlService, interval_s: float) -> BackgroundScheduler:
    """One sweep at a time (max_instances=1); a missed run is coalesced, not queued."""
    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_job(
        _sweep, "interval", seconds=interval_s, args=[service], id="sweep",
        max_instances=1, coalesce=True, misfire_grace_time=max(1, int(interval_s * 10)),
    )
    scheduler.start()
    return scheduler


def _sweep(service: ControlService) -> None:
    try:
        service.sweep()
    except Exception:
        log.exception("sweep failed; the next run will retry")


def add_reminder_job(scheduler: BackgroundScheduler, rt: Runtime) -> None:
    """Issue 5: reminders before credit ends, every ``reminder_interval_s``."""
    scheduler.add_job(
        _reminders, "interval", seconds=rt.settings.reminder_interval_s, args=[rt],
        id="reminders", max_instances=1, coalesce=True,
    )


def _reminders(rt: Runtime) -> None:
    from control.payments.receipts import send_reminders

    try:
        sent = send_reminders(rt)
        if sent:
            log.info("sent %d reminders", sent)
    except Exception:
        log.exception("reminder job failed; the next run will retry")
