"""Scheduled job: ask the providers about payments still pending (missed callbacks, PENDING
answers, status APIs that were down). Never credits on anything but a provider's verdict.

``poll_pending(rt)`` does one pass; ``add_poll_job(scheduler, rt)`` registers it with the
control service's APScheduler (control.main adds it next to the sweep).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from apscheduler.schedulers.base import BaseScheduler
from sqlalchemy import select

from control.ledger.models import Payment
from control.payments import callbacks
from control.payments.errors import PaymentProviderUnavailable
from control.payments.providers import momo, paygate
from control.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass
class PollResult:
    checked: int = 0
    credited: int = 0
    failed: int = 0
    still_pending: int = 0
    unavailable: int = 0


def poll_pending(rt: Runtime, *, limit: int = 200) -> PollResult:
    """One pass over pending payments whose check is due, oldest due first."""
    now = rt.clock.now()
    with rt.db.session() as s:
        due = list(s.execute(
            select(Payment.id, Payment.provider, Payment.provider_ref, Payment.check_attempts)
            .where(Payment.status.in_(callbacks.OPEN),
                   Payment.next_check_at.is_not(None), Payment.next_check_at <= now)
            .order_by(Payment.next_check_at).limit(limit)))
    result = PollResult()
    for pid, provider, ref, attempts in due:
        result.checked += 1
        try:
            if provider == momo.PROVIDER:
                outcome = momo.confirm(rt, ref)  # schedules its own next check if PENDING
            elif provider == paygate.PROVIDER:
                outcome = paygate.handle_paygate_callback(rt, {"identifier": ref})
            else:
                continue
        except PaymentProviderUnavailable:
            result.unavailable += 1
            _backoff(rt, pid, attempts + 1)
            continue
        if outcome.outcome == "unknown" or (
            provider == paygate.PROVIDER and outcome.outcome == "pending"
        ):
            _backoff(rt, pid, attempts + 1)
        if outcome.credited:
            result.credited += 1
        elif outcome.outcome == "failed":
            result.failed += 1
        elif outcome.outcome == "pending":
            result.still_pending += 1
    if result.checked:
        log.info("payment poll", extra={"checked": result.checked, "credited": result.credited,
                                        "failed": result.failed,
                                        "unavailable": result.unavailable})
    return result


def _backoff(rt: Runtime, payment_id: int, attempts: int) -> None:
    callbacks.set_open_status(rt, payment_id, status="pending", check_attempts=attempts,
                              next_check_at=momo.next_check(rt, attempts))


def _job(rt: Runtime) -> None:
    try:
        poll_pending(rt)
    except Exception:
        log.exception("payment poll failed; the next run will retry")


def add_poll_job(scheduler: BaseScheduler, rt: Runtime) -> None:
    interval = max(1.0, rt.settings.payment_poll_interval_s / 3)
    scheduler.add_job(_job, "interval", seconds=interval, args=[rt], id="payment-poll",
                      max_instances=1, coalesce=True,
                      misfire_grace_time=max(1, int(interval * 10)))
