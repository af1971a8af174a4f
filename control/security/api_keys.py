"""API keys: created with a name and one role, scoped to a DESCO or national, hashed at rest
(only the hash is stored: a key is shown once), revocable. The first admin key comes from
``CIZO_ADMIN_API_KEY`` (control.api.auth checks keys on every request)."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from control.ledger.models import ApiKey
from control.ledger.secrets import NATIONAL_ONLY_ROLES, ROLES, hash_api_key, new_api_key
from control.runtime import Runtime

log = logging.getLogger(__name__)


def create_api_key(
    rt: Runtime, *, name: str, role: str, desco_id: str | None = None, key: str | None = None
) -> tuple[int, str]:
    """Store a new key (hashed) and return its id and the key itself, shown only now."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    if role in NATIONAL_ONLY_ROLES and desco_id is not None:
        raise ValueError(f"a {role} key is national: it may not be scoped to a DESCO")
    if not name.strip():
        raise ValueError("a key needs a name (who holds it)")
    key = key or new_api_key()
    with rt.db.session() as s:
        row = ApiKey(name=name.strip(), key_hash=hash_api_key(key), role=role,
                     desco_id=desco_id, created_at=rt.clock.now(), revoked_at=None)
        s.add(row)
        s.flush()
        key_id = row.id
    log.info("API key created", extra={"api_key_id": key_id, "role": role, "desco_id": desco_id})
    return key_id, key


def revoke_api_key(rt: Runtime, key_id: int, *, desco_id: str | None = None) -> ApiKey | None:
    """Revoke a key (idempotent); None if unknown or outside ``desco_id``'s scope."""
    with rt.db.session() as s:
        row = s.get(ApiKey, key_id)
        if row is None or (desco_id is not None and row.desco_id != desco_id):
            return None
        if row.revoked_at is None:
            row.revoked_at = rt.clock.now()
            log.info("API key revoked", extra={"api_key_id": key_id})
        s.flush()
        s.expunge(row)
        return row


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
