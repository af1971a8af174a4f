"""What a fleet run did, in figures: the kits' counters and wire bytes summed, the data
budget per kit and month, and how they are shown (progress line, end summary, JSON)."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from firmware_sim.driven_kit import DrivenKit, KitCounters
from firmware_sim.scenario import Scenario
from firmware_sim.wire import MonthlyBudget, monthly_budget


@dataclass
class FleetSummary:
    kits: int
    online: int
    sim_start: float
    sim_now: float
    messages_sent: int
    messages_acked: int
    telemetry_sent: int
    buffered_now: int
    buffered_total: int
    commands_received: int
    commands_applied: int
    commands_rejected: int
    acks_sent: int
    tokens_entered: int
    payments_made: int
    payments_failed: int
    link_drops: int
    reconnects: int
    connect_failures: int
    misbehaviours: int
    bytes_out: int
    bytes_in: int
    tokens_accepted: int = 0
    tokens_rejected: int = 0
    keypad_kits: int = 0
    metrics_kits: int = 0  # OpenPAYGO Metrics devices (HTTP, not MQTT)
    metrics_requests: int = 0  # their posts answered
    metrics_refused: int = 0  # their posts refused or unanswered
    replayed: int = 0  # telemetry messages published again on a bridge's replay request
    budget: MonthlyBudget | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        days = (self.sim_now - self.sim_start) / 86_400
        return (f"day {days:5.1f} | {self.online}/{self.kits} online | "
                f"{self.messages_sent} msgs ({self.telemetry_sent} telemetry, "
                f"{self.buffered_now} buffered) | cmds {self.commands_received} recv "
                f"{self.commands_applied} applied {self.commands_rejected} rejected | "
                f"tokens {self.tokens_entered} ({self.tokens_rejected} bad) | "
                f"payments {self.payments_made} | "
                f"drops {self.link_drops} reconnects {self.reconnects}")

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.budget is not None:
            d["budget"] = dataclasses.asdict(self.budget)
        return d


# kit counters the summary reports as fleet totals (dropped_from_buffer is not reported)
_SUMMED = [f.name for f in dataclasses.fields(KitCounters) if f.name != "dropped_from_buffer"]


def summarise(kits: list[DrivenKit], scenario: Scenario, now: float, *,
              payments_made: int, payments_failed: int) -> FleetSummary:
    """The fleet's figures at simulated time ``now``."""
    wires = [k.wire for k in kits]
    totals = {name: sum(getattr(k.counters, name) for k in kits) for name in _SUMMED}
    links = [k.metrics for k in kits if k.metrics is not None]
    return FleetSummary(
        kits=len(kits), online=sum(k.conn.connected for k in kits),
        sim_start=scenario.start_ts, sim_now=now,
        messages_sent=sum(w.publishes_out for w in wires),
        messages_acked=sum(k.conn.acked for k in kits),
        buffered_now=sum(len(k.buffer) for k in kits),
        keypad_kits=sum(k.keypad is not None for k in kits),
        metrics_kits=len(links),
        metrics_requests=sum(m.counters.requests for m in links),
        metrics_refused=sum(m.counters.refused for m in links),
        payments_made=payments_made, payments_failed=payments_failed,
        bytes_out=sum(w.bytes_out for w in wires), bytes_in=sum(w.bytes_in for w in wires),
        budget=_budget(kits, scenario, now),
        **totals,
    )


def _budget(kits: list[DrivenKit], scenario: Scenario, now: float) -> MonthlyBudget | None:
    """The average kit's bytes on the wire, scaled to a month (``wire.monthly_budget``)."""
    if not kits:
        return None
    wires = [k.wire for k in kits]
    n = len(kits)
    elapsed = max(1.0, min(now, scenario.end_ts) - scenario.start_ts)
    published = sum(w.publishes_out for w in wires)
    avg_publish = sum(w.by_kind_out.get("publish", 0) for w in wires) / max(1, published)
    return monthly_budget(
        mqtt_bytes_out=sum(w.bytes_out for w in wires) / n,
        mqtt_bytes_in=sum(w.bytes_in for w in wires) / n,
        packets_out=sum(w.packets_out for w in wires) / n,
        packets_in=sum(w.packets_in for w in wires) / n,
        connects=sum(w.connects for w in wires) / n,
        sim_seconds=elapsed, keepalive_s=scenario.keepalive_s,
        report_interval_s=scenario.telemetry_interval_s, avg_publish_bytes=avg_publish)


def print_progress(summary: FleetSummary) -> None:
    """One progress line: rewritten in place on a terminal, a new line in a log."""
    if sys.stdout.isatty():
        print("\r" + summary.line()[:160], end="", flush=True)
    else:
        print(f"sim: {summary.line()}", flush=True)


def summary_text(s: FleetSummary) -> str:
    lines = [
        f"kits online        {s.online}/{s.kits}",
        f"messages sent      {s.messages_sent} ({s.messages_acked} acknowledged by the broker)",
        f"telemetry          {s.telemetry_sent} sent, {s.buffered_total} buffered while "
        f"offline, {s.buffered_now} still buffered",
        f"commands           {s.commands_received} received, {s.commands_applied} applied, "
        f"{s.commands_rejected} rejected, {s.acks_sent} acks sent",
        f"tokens entered     {s.tokens_entered} ({s.tokens_accepted} accepted, "
        f"{s.tokens_rejected} rejected) on {s.keypad_kits} keypad kits",
        f"payments made      {s.payments_made} ({s.payments_failed} failed)",
        f"network            {s.link_drops} link drops, {s.reconnects} reconnects, "
        f"{s.connect_failures} failed connection attempts",
        f"misbehaviour       {s.misbehaviours} bad messages sent on purpose",
    ]
    if s.metrics_kits:
        lines.append(f"openpaygo metrics  {s.metrics_requests} requests answered, "
                     f"{s.metrics_refused} refused or unanswered, from {s.metrics_kits} "
                     "devices")
    if s.budget is not None:
        b = s.budget
        lines.append(f"data per kit/month {b.total_kb:.0f} KB on the wire "
                     f"(MQTT {b.mqtt_kb:.0f} KB incl. keepalives, TCP/IP+TLS "
                     f"{b.overhead_kb:.0f} KB); OpenPAYGO Metrics design point 750 KB")
    return "\n".join(lines)


def summary_json(s: FleetSummary) -> str:
    return json.dumps(s.as_dict(), sort_keys=True)
