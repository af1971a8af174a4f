"""/v1/keys: API key management (admin). A DESCO's admin manages only its DESCO's keys."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, status
from sqlalchemy import select

from cizo.i18n import N_
from control.api.auth import AdminKey, RuntimeDep
from control.api.errors import ApiError
from control.api.schemas import KeyCreate, KeyCreated, KeyOut, KeyPage, Problem
from control.ledger.models import ApiKey, Desco
from control.security.api_keys import create_api_key, revoke_api_key

router = APIRouter(prefix="/v1/keys", tags=["keys"])

_errors: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem}, 403: {"model": Problem}, 404: {"model": Problem},
}



def _out(row: ApiKey) -> KeyOut:
    return KeyOut(id=row.id, name=row.name, role=row.role, desco_id=row.desco_id,
                  created_at=row.created_at, revoked_at=row.revoked_at)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=KeyCreated,
             responses={**_errors, 422: {"model": Problem}},
             summary="Create a named API key (admin); the key is returned once")
def create_key(rt: RuntimeDep, actor: AdminKey, body: KeyCreate) -> KeyCreated:
    desco_id = body.desco_id if body.desco_id is not None else actor.desco_id
    if actor.desco_id is not None and desco_id != actor.desco_id:
        raise ApiError(status.HTTP_403_FORBIDDEN, "desco_forbidden",
                       N_("a DESCO admin may only create keys for its own DESCO"))
    with rt.db.session() as s:
        if desco_id is not None and s.get(Desco, desco_id) is None:
            raise ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, "desco_unknown",
                           N_("unknown DESCO {desco_id}"), desco_id=desco_id)
    try:
        key_id, key = create_api_key(rt, name=body.name, role=body.role, desco_id=desco_id)
    except ValueError as exc:
        raise ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, "key_invalid",
                       N_("the key cannot be made as asked"), detail=str(exc)) from exc
    with rt.db.session() as s:
        row = s.get(ApiKey, key_id)
        assert row is not None
        return KeyCreated(**_out(row).model_dump(), key=key)


@router.get("", response_model=KeyPage, responses=_errors,
            summary="List API keys (names, roles, scopes; never the keys)")
def list_keys(
    rt: RuntimeDep, actor: AdminKey,
    include_revoked: Annotated[bool, Query()] = False,
) -> KeyPage:
    with rt.db.session() as s:
        q = select(ApiKey).order_by(ApiKey.id)
        if actor.desco_id is not None:
            q = q.where(ApiKey.desco_id == actor.desco_id)
        if not include_revoked:
            q = q.where(ApiKey.revoked_at.is_(None))
        return KeyPage(items=[_out(r) for r in s.scalars(q)])


@router.post("/{key_id}/revoke", response_model=KeyOut, responses=_errors,
             summary="Revoke an API key at once (idempotent)")
def revoke_key(
    rt: RuntimeDep, actor: AdminKey,
    key_id: Annotated[int, Path(ge=1, le=2_147_483_647)],
) -> KeyOut:
    row = revoke_api_key(rt, key_id, desco_id=actor.desco_id)
    if row is None:
        raise ApiError(status.HTTP_404_NOT_FOUND, "key_not_found", N_("key {key_id} not found"),
                       key_id=key_id)
    return _out(row)
