"""``GET /metrics``: the control process's counters in Prometheus text format.

Counters live on the app (``counters(app)``), not in a module, so two apps in one process
(tests, benchmarks) never share them. Unauthenticated, like ``/healthz``: it carries counts,
never a kit id or an amount.
"""

from __future__ import annotations

import threading
from collections import defaultdict

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import PlainTextResponse

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

router = APIRouter(tags=["health"])


class Counters:
    """Named counters with one label each (``{name: {(label, value): count}}``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._help: dict[str, str] = {}
        self._counts: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)

    def describe(self, name: str, help_: str) -> None:
        self._help[name] = help_

    def inc(self, name: str, label: str, value: str, by: int = 1) -> None:
        with self._lock:
            series = self._counts[name]
            series[(label, value)] = series.get((label, value), 0) + by

    def value(self, name: str, label: str, value: str) -> int:
        with self._lock:
            return self._counts.get(name, {}).get((label, value), 0)

    def render(self) -> str:
        out: list[str] = []
        with self._lock:
            for name in sorted(self._help.keys() | self._counts.keys()):
                out.append(f"# HELP {name} {self._help.get(name, name)}")
                out.append(f"# TYPE {name} counter")
                for (label, value), count in sorted(self._counts.get(name, {}).items()):
                    out.append(f'{name}{{{label}="{_escape(value)}"}} {count}')
        return "\n".join(out) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def counters(app: FastAPI) -> Counters:
    """The app's counters (``create_app`` puts them there)."""
    found: Counters = app.state.counters
    return found


@router.get("/metrics", response_class=PlainTextResponse,
            summary="Counters in Prometheus text format")
def metrics(request: Request) -> PlainTextResponse:
    return PlainTextResponse(counters(request.app).render(), media_type=CONTENT_TYPE)
