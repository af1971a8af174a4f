"""A kit's story in one time order: payments, commands, support actions, alerts and the
periods its telemetry went quiet. Pure: the sources are read elsewhere (timeline_sources)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# the order of events at the same second: the cause before what it caused
_KIND_ORDER = {"payment": 0, "audit": 1, "command_issued": 2, "command_applied": 3,
               "alert_opened": 4, "alert_closed": 5, "telemetry_gap": 6}


@dataclass(frozen=True)
class Event:
    at: float
    kind: str
    summary: str  # a status, action or alert kind: the page words it in its language
    detail: dict[str, Any] = field(default_factory=dict)
    until: float | None = None  # the end of a period (telemetry gaps)

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "kind": self.kind, "summary": self.summary,
                "until": self.until, "detail": self.detail}


def telemetry_gaps(times: Sequence[float], *, start: float, end: float,
                   max_silence_s: float) -> list[Event]:
    """Periods in [start, end] longer than ``max_silence_s`` with no reading at all;
    ``times`` are the readings' moments (any order)."""
    gaps: list[Event] = []
    last = start
    for t in [*sorted(x for x in times if start <= x <= end), end]:
        if t - last > max_silence_s:
            gaps.append(Event(at=last, until=t, kind="telemetry_gap", summary="silent",
                              detail={"seconds": round(t - last)}))
        last = t
    return gaps


def merge(*streams: Iterable[Event], limit: int | None = None) -> list[Event]:
    """Every stream's events, newest first; ties in cause-before-effect order reversed so
    reading down the page goes back in time."""
    events = [e for stream in streams for e in stream]
    events.sort(key=lambda e: (e.at, _KIND_ORDER.get(e.kind, 99)), reverse=True)
    return events if limit is None else events[:limit]
