"""Helpers for the security tests: every endpoint of the app with the roles it admits.

Roles come from the endpoint's own dependency tree (``RequireRole.allowed`` in
control/api/auth.py), not from a list kept here, so a new endpoint is covered the
moment it is mounted. No tests live in this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import Mount

from control.api.auth import RequireRole, current_actor
from control.ledger.secrets import ROLES

ANY_KEY = frozenset(ROLES)  # CurrentKey alone: any valid key

# Endpoints that take no API key, each with the reason. Anything else must declare a role.
PUBLIC: dict[str, str] = {
    "GET /healthz": "liveness probe, says nothing",
    "GET /readyz": "readiness probe, says nothing",
    "GET /": "the dashboard page (static; it asks for a key)",
    "GET /dashboard": "the dashboard page (static; it asks for a key)",
    "GET /regulator": "the regulator's page (static; it asks for a key)",
    "GET /finance": "the finance page (static; it asks for a key, the API checks every call)",
    "GET /static/{name}": "the dashboard's static files",
    "GET /static/geo/{name}": "Togo's region boundaries (public domain), for the map",
    "GET /i18n/{page}": "the dashboard's wording from the message catalogs, no data",
    "POST /v1/payments/paygate": "PayGate's callback: confirmed with PayGate before crediting",
    "POST /v1/payments/momo/callback/{reference_id}":
        "MTN MoMo's callback: confirmed by a GET to MoMo before any credit",
    "PUT /v1/payments/momo/callback/{reference_id}":
        "MTN MoMo's callback: confirmed by a GET to MoMo before any credit",
    "POST /v1/payments/webhook/{desco_id}":
        "a DESCO's agents: HMAC-signed with the DESCO's webhook secret (X-Cizo-Signature)",
    "POST /dd": "OpenPAYGO Metrics devices: each request SipHash-signed with the device's key",
    "POST /device_data": "OpenPAYGO Metrics devices (the spec's long name of /dd)",
    "GET /metrics": "Prometheus counters: counts only, no kit id or amount",
    "GET /openapi.json": "the API description",
    "GET /docs": "the API description",
    "GET /docs/oauth2-redirect": "the API description",
    "GET /redoc": "the API description",
}
PUBLIC_PATTERNS: tuple[re.Pattern[str], ...] = ()


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    roles: frozenset[str] | None  # None: no API key at all
    path_params: tuple[str, ...]
    has_body: bool

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"

    def is_declared_public(self) -> bool:
        return self.key in PUBLIC or any(p.match(self.key) for p in PUBLIC_PATTERNS)


def roles_of(dependant: Dependant | None) -> frozenset[str] | None:
    """The roles admitted by the first RequireRole in the tree (ANY_KEY for CurrentKey)."""
    if dependant is None:
        return None
    found: list[frozenset[str]] = []
    authenticated = False

    def visit(d: Dependant) -> None:
        nonlocal authenticated
        if isinstance(d.call, RequireRole):
            found.append(d.call.allowed)
        if d.call is current_actor:
            authenticated = True
        for sub in d.dependencies:
            visit(sub)

    visit(dependant)
    if found:
        allowed = found[0]
        for other in found[1:]:
            allowed &= other  # several role dependencies: all must pass
        return allowed
    return ANY_KEY if authenticated else None


def _leaf(path: str, methods: set[str] | None, dependant: Dependant | None,
          out: list[Endpoint]) -> None:
    for method in sorted(methods or {"GET"}):
        if method == "HEAD":
            continue
        params = tuple(re.findall(r"{([^}:]+)(?::[^}]*)?}", path))
        has_body = bool(dependant and dependant.body_params)
        out.append(Endpoint(method, path, roles_of(dependant), params, has_body))


def _walk(routes: list[Any], prefix: str, out: list[Endpoint]) -> None:
    for r in routes:
        if hasattr(r, "effective_candidates"):  # FastAPI's included router
            _walk(list(r.effective_candidates()), prefix, out)
            low = getattr(r, "effective_low_priority_routes", None)
            if low is not None:
                _walk(list(low()), prefix, out)
        elif isinstance(r, Mount):
            _walk(list(r.routes), prefix + r.path, out)
        elif isinstance(r, APIRoute) or hasattr(r, "dependant"):
            _leaf(prefix + r.path, set(r.methods or ()), r.dependant, out)
        elif hasattr(r, "path"):
            _leaf(prefix + r.path, set(getattr(r, "methods", None) or {"GET"}), None, out)


def endpoints(app: FastAPI) -> list[Endpoint]:
    """Every (method, path) the app serves, from app.routes (not the OpenAPI spec)."""
    out: list[Endpoint] = []
    _walk(list(app.routes), "", out)
    seen: set[str] = set()
    unique = []
    for e in out:
        if e.key not in seen:
            seen.add(e.key)
            unique.append(e)
    return unique


def fill(path: str, values: dict[str, str], default: str = "1") -> str:
    return re.sub(r"{([^}:]+)(?::[^}]*)?}", lambda m: values.get(m.group(1), default), path)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
