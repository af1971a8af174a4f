"""``Idempotency-Key`` for POSTs that create or move something: a retry never acts twice.

The key is claimed (a placeholder row, status 0) before acting, so two concurrent
retries cannot both act: the second gets 409 while the first runs. A success is stored
and replayed byte for byte; a failure releases the key so the client may retry.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Header, status
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from cizo.i18n import N_
from control.api.errors import ApiError
from control.ledger.accounts import Actor
from control.ledger.models import IdempotentRequest
from control.runtime import Runtime

log = logging.getLogger(__name__)

IN_PROGRESS = 0

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=200,
           description="retry-safe key: the same key and body replay the first answer"),
]


def request_hash(method: str, path: str, body: Any) -> str:
    canonical = json.dumps({"m": method, "p": path, "b": body}, sort_keys=True,
                           separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _json_response(status_code: int, body: str, *, replayed: bool) -> Response:
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    return Response(content=body, status_code=status_code, media_type="application/json",
                    headers=headers)


def run_idempotent(
    rt: Runtime,
    *,
    actor: Actor,
    key: str | None,
    method: str,
    path: str,
    body: Any,
    status_code: int,
    action: Callable[[], BaseModel],
) -> Response:
    """Run ``action`` once per (key holder, key); replay its stored answer afterwards."""
    if key is None or actor.key_id is None:
        return _json_response(status_code, action().model_dump_json(), replayed=False)
    digest = request_hash(method, path, body)
    now = rt.clock.now()
    with rt.db.session() as s:
        prior = s.scalars(select(IdempotentRequest).where(
            IdempotentRequest.api_key_id == actor.key_id, IdempotentRequest.key == key,
        )).one_or_none()
        if prior is None:
            s.add(IdempotentRequest(api_key_id=actor.key_id, key=key, request_hash=digest,
                                    status_code=IN_PROGRESS, body="", created_at=now))
            try:
                s.flush()
            except IntegrityError as exc:
                raise _in_progress() from exc
            prior_answer: tuple[str, int, str] | None = None
        else:
            prior_answer = (prior.request_hash, prior.status_code, prior.body)
    if prior_answer is not None:
        prior_hash, prior_status, prior_body = prior_answer
        if prior_hash != digest:
            raise ApiError(
                status.HTTP_422_UNPROCESSABLE_CONTENT, "idempotency_key_reused",
                N_("Idempotency-Key already used with a different request body"),
            )
        if prior_status == IN_PROGRESS:
            raise _in_progress()
        log.info("idempotent replay", extra={"api_key_id": actor.key_id, "path": path})
        return _json_response(prior_status, prior_body, replayed=True)

    try:
        answer = action().model_dump_json()
    except BaseException:
        with rt.db.session() as s:  # release the key: nothing was done, a retry may act
            s.execute(delete(IdempotentRequest).where(
                IdempotentRequest.api_key_id == actor.key_id, IdempotentRequest.key == key,
            ))
        raise
    with rt.db.session() as s:
        row = s.scalars(select(IdempotentRequest).where(
            IdempotentRequest.api_key_id == actor.key_id, IdempotentRequest.key == key,
        )).one()
        row.status_code = status_code
        row.body = answer
    return _json_response(status_code, answer, replayed=False)


def _in_progress() -> ApiError:
    return ApiError(status.HTTP_409_CONFLICT, "idempotency_in_progress",
                    N_("a request with this Idempotency-Key is still in progress"))
