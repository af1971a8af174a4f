"""/v1/payments: intents through PayGate, their state, and PayGate's callback."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from control import payments
from control.api.auth import FinanceKey, ReaderKey, RuntimeDep
from control.api.idempotency import IdempotencyKey, run_idempotent
from control.api.schemas import (
    CallbackAck,
    IntentIn,
    IntentOut,
    PayGateCallbackIn,
    PaymentOut,
    Problem,
)
from control.models import Account

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/payments", tags=["payments"])

_errors: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem}, 403: {"model": Problem}, 404: {"model": Problem},
}


def _http_error(exc: payments.PaymentError) -> HTTPException:
    if isinstance(exc, payments.PaymentNotFound):
        return HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc))
    if isinstance(exc, payments.PaymentInvalid):
        return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc))
    if isinstance(exc, payments.PaymentProviderUnavailable):
        return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(exc),
                             headers={"Retry-After": "30"})
    return HTTPException(status.HTTP_502_BAD_GATEWAY, detail=str(exc))


@router.post(
    "/intents", status_code=status.HTTP_201_CREATED, response_model=IntentOut,
    responses={**_errors, 422: {"model": Problem}, 502: {"model": Problem},
               503: {"model": Problem}},
    summary="Start a mobile-money payment through PayGate (finance)",
)
def create_intent(
    rt: RuntimeDep, actor: FinanceKey, body: IntentIn, request: Request,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    def act() -> IntentOut:
        try:
            p = payments.create_intent(rt, actor=actor, kit_id=body.kit_id,
                                       amount_fcfa=body.amount_fcfa, phone=body.phone,
                                       network=body.network)
        except payments.PaymentError as exc:
            raise _http_error(exc) from exc
        return IntentOut(identifier=p.provider_ref, kit_id=body.kit_id,
                         amount_fcfa=body.amount_fcfa, status=p.status,
                         tx_reference=p.tx_reference)

    return run_idempotent(rt, actor=actor, key=idempotency_key, method="POST",
                          path=request.url.path, body=body.model_dump(mode="json"),
                          status_code=status.HTTP_201_CREATED, action=act)


@router.get("/{identifier}", response_model=PaymentOut, responses=_errors,
            summary="A payment's state by its PayGate identifier")
def get_payment(rt: RuntimeDep, actor: ReaderKey, identifier: str) -> PaymentOut:
    with rt.db.session() as s:
        p = payments.get_payment(s, identifier, desco_id=actor.desco_id)
        if p is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND,
                                detail=f"payment {identifier} not found")
        acct = s.get(Account, p.account_id) if p.account_id is not None else None
        return PaymentOut(
            identifier=p.provider_ref, provider=p.provider,
            kit_id=acct.kit_id if acct else None, desco_id=p.desco_id, status=p.status,
            requested_fcfa=p.requested_fcfa, amount_fcfa=p.amount_fcfa, network=p.network,
            phone=p.phone, reason=p.reason, tx_reference=p.tx_reference,
            payment_reference=p.payment_reference, created_at=p.created_at,
            updated_at=p.updated_at, credited_at=p.credited_at,
        )


@router.post(
    "/paygate", response_model=CallbackAck,
    responses={400: {"model": Problem}, 422: {"model": Problem}, 503: {"model": Problem}},
    openapi_extra={"requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PayGateCallbackIn.model_json_schema()}},
    }},
    summary="PayGate Global's callback (no API key; confirmed with PayGate before crediting)",
)
async def paygate_callback(rt: RuntimeDep, request: Request) -> CallbackAck:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST,
                            detail="callback body is not JSON") from exc
    if not isinstance(body, dict):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            detail="callback body must be a JSON object")
    # database and PayGate calls block: run them off the event loop
    try:
        outcome = await run_in_threadpool(payments.handle_paygate_callback, rt, body)
    except payments.PaymentInvalid as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    except payments.PaymentProviderUnavailable as exc:
        raise _http_error(exc) from exc
    except SQLAlchemyError as exc:
        log.error("callback not recorded, database error: %s", type(exc).__name__)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            detail="database unavailable; retry later",
                            headers={"Retry-After": "30"}) from exc
    return CallbackAck(outcome=outcome.outcome, identifier=outcome.identifier,
                       credited=outcome.credited)
