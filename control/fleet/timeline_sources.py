"""Reads a kit's timeline sources from the ledger database and InfluxDB; the merge itself
is pure (control.fleet.timeline)."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from cizo.settings import Settings
from control.fleet import readings
from control.fleet.timeline import Event, telemetry_gaps
from control.ledger import accounts as ledger
from control.ledger.models import Alert, AuditEntry, Command, Payment
from telemetry.errors import InfluxError

log = logging.getLogger(__name__)

GAP_FACTOR = 3  # three missed readings and more make a gap (one or two are the radio)


def database_events(s: Session, kit_id: str, *, since: float, limit: int) -> list[Event]:
    """Payments, commands (issued, applied), audited actions and alerts since ``since``."""
    events: list[Event] = []
    acct = ledger.account_for_kit(s, kit_id)
    if acct is not None:
        for p in s.scalars(select(Payment).where(Payment.account_id == acct.id,
                                                 Payment.created_at >= since)
                           .order_by(Payment.created_at.desc()).limit(limit)):
            events.append(Event(at=p.paid_at or p.created_at, kind="payment", summary=p.status,
                                detail={"payment_id": p.id, "provider": p.provider,
                                        "amount_fcfa": p.amount_fcfa}))
    for c in s.scalars(select(Command).where(Command.kit_id == kit_id,
                                             Command.created_at >= since)
                       .order_by(Command.created_at.desc()).limit(limit)):
        info = {"command_id": c.id, "seq": c.seq, "origin": c.origin, "status": c.status}
        events.append(Event(at=c.created_at, kind="command_issued", summary=c.action,
                            detail=info))
        if c.status == "applied" and c.finished_at is not None:
            events.append(Event(at=c.finished_at, kind="command_applied", summary=c.action,
                                detail=info))
    for a in s.scalars(select(AuditEntry).where(AuditEntry.kit_id == kit_id,
                                                AuditEntry.at >= since)
                       .order_by(AuditEntry.at.desc()).limit(limit)):
        events.append(Event(at=a.at, kind="audit", summary=a.action,
                            detail={"actor": a.actor, "role": a.role, "reason": a.reason}))
    for al in s.scalars(select(Alert).where(Alert.kit_id == kit_id,
                                            Alert.opened_at >= since)
                        .order_by(Alert.opened_at.desc()).limit(limit)):
        events.append(Event(at=al.opened_at, kind="alert_opened", summary=al.kind,
                            detail={"alert_id": al.id, "state": al.state}))
        if al.closed_at is not None:
            events.append(Event(at=al.closed_at, kind="alert_closed", summary=al.kind,
                                detail={"alert_id": al.id, "by": al.closed_by}))
    return events


def gap_events(settings: Settings, kit_id: str, *, start: int, end: int) -> list[Event] | None:
    """Telemetry gaps in [start, end], or None when InfluxDB does not answer (the page says
    so rather than showing a false hole)."""
    try:
        rows = readings.series(settings, kit_id, start=start, end=end,
                                    step_s=int(settings.kit_report_interval_s))
    except InfluxError as exc:
        log.warning("timeline without telemetry gaps: %s", exc, extra={"kit_id": kit_id})
        return None
    return telemetry_gaps([float(r["time"]) for r in rows], start=start, end=end,
                          max_silence_s=GAP_FACTOR * settings.kit_report_interval_s)
