"""Bearer API keys: hashed at rest, named, revocable, one role each, scoped to a DESCO or national.

Every protected endpoint takes exactly one of the ``*Key`` aliases below; the role set
is carried by the dependency object itself (``RequireRole.allowed``), so a test can walk
``app.routes`` and know, for every endpoint, who may call it (tests/test_security_routes.py).

Roles (admin is admitted everywhere):
  operator   read kits, accounts, payments, commands, audit of its DESCO
  support    operator + manual unlocks (rate-limited) and suspense link proposals
  finance    operator + payments, reconciliation, approvals
  regulator  national aggregates only: never a kit, an account, a payment or a phone
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Annotated

from fastapi import APIRouter, Depends, Request, status
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select

from cizo.i18n import N_
from control.api.errors import ApiError
from control.ledger.accounts import Actor
from control.ledger.models import ApiKey
from control.ledger.secrets import ROLES, hash_api_key
from control.runtime import Runtime
from control.security.shared_limits import Limits

log = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="an API key: Authorization: Bearer <key>")


def get_runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.rt
    return rt


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def _unauthorized(code: str, msgid: str) -> ApiError:
    return ApiError(status.HTTP_401_UNAUTHORIZED, code, msgid,
                    headers={"WWW-Authenticate": "Bearer"})


def _too_many(code: str, msgid: str, wait_s: float) -> ApiError:
    return ApiError(status.HTTP_429_TOO_MANY_REQUESTS, code, msgid,
                    headers={"Retry-After": str(max(1, math.ceil(wait_s)))})


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def current_actor(
    request: Request,
    rt: RuntimeDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Actor:
    """The key holder; 401 for a missing, unknown or revoked key; 429 after too many failures.

    While an address is over its failure limit every attempt from it is refused, even
    with a good key, so guessing gains nothing from an occasional success.
    """
    lim = Limits.of(rt).failed_auth
    client = _client(request)
    now = rt.clock.now()
    wait = lim.retry_after(client, now)
    if wait > 0:
        raise _too_many("auth_rate_limited", N_("too many failed authentications from this "
                                                "address; retry later"), wait)
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        lim.add(client, now)
        raise _unauthorized("api_key_missing",
                            N_("missing API key: send Authorization: Bearer <key>"))
    with rt.db.session() as s:
        key = s.scalars(
            select(ApiKey).where(ApiKey.key_hash == hash_api_key(creds.credentials))
        ).one_or_none()
        if key is None:
            lim.add(client, now)
            log.info("unknown API key presented", extra={"client": client})
            raise _unauthorized("api_key_unknown", N_("unknown API key"))
        if key.revoked_at is not None:
            lim.add(client, now)
            log.info("revoked API key used", extra={"api_key_id": key.id, "client": client})
            raise _unauthorized("api_key_revoked", N_("API key revoked"))
        return Actor(name=key.name, role=key.role, desco_id=key.desco_id, key_id=key.id)


CurrentKey = Annotated[Actor, Depends(current_actor)]


class RequireRole:
    """A dependency admitting these roles (admin always); 403 otherwise.

    ``allowed`` is public on purpose: the route-walking test reads it from each route's
    dependency tree. ``limit="unlock"`` also counts the call against the per-key unlock
    limit (429 beyond it).
    """

    def __init__(self, *roles: str, limit: str | None = None) -> None:
        unknown = set(roles) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown role(s) {sorted(unknown)}")
        if limit not in (None, "unlock"):
            raise ValueError(f"unknown limit {limit!r}")
        self.allowed = frozenset(roles) | {"admin"}
        self.limit = limit

    def __call__(self, rt: RuntimeDep, actor: CurrentKey) -> Actor:
        if actor.role not in self.allowed:
            raise ApiError(status.HTTP_403_FORBIDDEN, "role_forbidden",
                           N_("role {role!r} may not do this (needs {roles})"),
                           role=actor.role, roles=", ".join(sorted(self.allowed)))
        if self.limit == "unlock":
            wait = Limits.of(rt).unlocks.hit(f"key:{actor.key_id}", rt.clock.now())
            if wait > 0:
                log.warning("manual unlock rate limit reached by %s", actor.name,
                            extra={"api_key_id": actor.key_id})
                raise _too_many("unlock_rate_limited",
                                N_("too many manual unlocks with this key; retry later"), wait)
        return actor

    def __repr__(self) -> str:
        return f"RequireRole({', '.join(sorted(self.allowed))})"


def roles_by_endpoint(routers: Iterable[APIRouter]) -> dict[str, frozenset[str]]:
    """``"METHOD /path"`` -> the roles its RequireRole dependencies admit (all must pass);
    every role for an endpoint that takes any valid key, or none.

    The pages ask this, through GET /v1/dashboard/me, before they offer an action: they keep
    no list of roles of their own.
    """
    out = {}
    for router in routers:
        for route in router.routes:
            if isinstance(route, APIRoute):
                found = [d.call.allowed for d in _tree(route.dependant)
                         if isinstance(d.call, RequireRole)]
                for method in route.methods or ():
                    out[f"{method} {route.path}"] = frozenset(ROLES).intersection(*found)
    return out


def _tree(d: Dependant) -> list[Dependant]:
    return [d] + [sub for dep in d.dependencies for sub in _tree(dep)]


def require_role(*roles: str) -> RequireRole:
    """A role set named where the route declares it:
    ``Depends(require_role("support", "finance"))``."""
    return RequireRole(*roles)


# Per-DESCO data (kits, accounts, payments, audit): never the regulator.
ReaderKey = Annotated[Actor, Depends(RequireRole("operator", "support", "finance"))]
SupportKey = Annotated[Actor, Depends(RequireRole("support"))]
FinanceKey = Annotated[Actor, Depends(RequireRole("finance"))]
AdminKey = Annotated[Actor, Depends(RequireRole())]
# Manual unlocks: support, counted against the per-key unlock limit.
UnlockKey = Annotated[Actor, Depends(RequireRole("support", limit="unlock"))]
# Aggregates with no personal data (fleet totals, national figures): staff and regulator.
AggregateReaderKey = Annotated[
    Actor, Depends(RequireRole("operator", "support", "finance", "regulator"))
]
# The regulator's own view (national aggregates only).
RegulatorKey = Annotated[Actor, Depends(RequireRole("regulator"))]
