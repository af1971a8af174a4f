"""Bearer API keys: hashed at rest, one role each, optionally scoped to one DESCO."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from control.ledger import Actor
from control.models import ApiKey
from control.runtime import Runtime
from control.security import ROLES, hash_api_key, new_api_key

log = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="an API key: Authorization: Bearer <key>")


def get_runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.rt
    return rt


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail,
                         headers={"WWW-Authenticate": "Bearer"})


def current_actor(
    rt: RuntimeDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Actor:
    """The key holder; 401 for a missing, unknown or revoked key."""
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise _unauthorized("missing API key: send Authorization: Bearer <key>")
    with rt.db.session() as s:
        key = s.scalars(
            select(ApiKey).where(ApiKey.key_hash == hash_api_key(creds.credentials))
        ).one_or_none()
        if key is None:
            raise _unauthorized("unknown API key")
        if key.revoked_at is not None:
            log.info("revoked API key used", extra={"api_key_id": key.id})
            raise _unauthorized("API key revoked")
        return Actor(name=key.name, role=key.role, desco_id=key.desco_id, key_id=key.id)


CurrentKey = Annotated[Actor, Depends(current_actor)]


def require_role(*roles: str) -> Callable[[Actor], Actor]:
    """A dependency admitting these roles (admin is always admitted); 403 otherwise."""
    allowed = frozenset(roles) | {"admin"}

    def dependency(actor: CurrentKey) -> Actor:
        if actor.role not in allowed:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"role {actor.role!r} may not do this (needs {', '.join(sorted(allowed))})",
            )
        return actor

    return dependency


ReaderKey = Annotated[Actor, Depends(require_role("operator", "support", "finance"))]
SupportKey = Annotated[Actor, Depends(require_role("support"))]
FinanceKey = Annotated[Actor, Depends(require_role("finance"))]
AdminKey = Annotated[Actor, Depends(require_role())]


def create_api_key(
    rt: Runtime, *, name: str, role: str, desco_id: str | None = None, key: str | None = None
) -> tuple[int, str]:
    """Store a new key (hashed) and return its id and the key itself, shown only now."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    key = key or new_api_key()
    with rt.db.session() as s:
        row = ApiKey(name=name, key_hash=hash_api_key(key), role=role, desco_id=desco_id,
                     created_at=rt.clock.now(), revoked_at=None)
        s.add(row)
        s.flush()
        key_id = row.id
    log.info("API key created", extra={"api_key_id": key_id, "role": role, "desco_id": desco_id})
    return key_id, key


def ensure_admin_key(rt: Runtime) -> int | None:
    """Create the admin key from CIZO_ADMIN_API_KEY if absent; a revoked one stays revoked."""
    secret = rt.settings.admin_api_key
    if secret is None:
        log.warning("CIZO_ADMIN_API_KEY is not set: no admin API key was created")
        return None
    key = secret.get_secret_value()
    if len(key) < 16:
        log.warning("CIZO_ADMIN_API_KEY is short: use at least 16 random characters")
    with rt.db.session() as s:
        existing = s.scalars(select(ApiKey).where(ApiKey.key_hash == hash_api_key(key))).first()
        if existing is not None:
            if existing.revoked_at is not None:
                log.warning("the admin key from CIZO_ADMIN_API_KEY is revoked; set a new one",
                            extra={"api_key_id": existing.id})
            return existing.id
    try:
        key_id, _ = create_api_key(rt, name="admin (CIZO_ADMIN_API_KEY)", role="admin", key=key)
    except IntegrityError:  # another process created it at the same moment
        with rt.db.session() as s:
            return s.scalars(
                select(ApiKey.id).where(ApiKey.key_hash == hash_api_key(key))
            ).one()
    return key_id
