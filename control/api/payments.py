"""/v1/payments: PayGate and MoMo intents, the providers' callbacks, the DESCO agents'
signed webhook, refunds. Routes only translate HTTP: the flows are in control.payments."""

from __future__ import annotations

import functools
import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import Response
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from cizo.i18n import N_
from control.api import bodies
from control.api.auth import FinanceKey, ReaderKey, RuntimeDep
from control.api.errors import ApiError
from control.api.idempotency import IdempotencyKey, run_idempotent
from control.api.schemas import (
    AgentPaymentIn,
    CallbackAck,
    FeedAck,
    IntentIn,
    IntentOut,
    MoMoIntentIn,
    MoMoIntentOut,
    PayGateCallbackIn,
    PaymentOut,
    PaymentPage,
    Problem,
    RefundIn,
)
from control.ledger.models import Account, Payment
from control.payments import errors, listing, reversals
from control.payments.providers import agent, momo, paygate, webhook_signature

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/payments", tags=["payments"])

_errors: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem}, 403: {"model": Problem}, 404: {"model": Problem},
}
# what a public endpoint answers a body refused at the door (control/api/bodies.py)
_BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem} for code in (400, 408, 413, 415, 422)
}


def _http_error(exc: errors.PaymentError) -> ApiError:
    if isinstance(exc, errors.PaymentNotFound):
        return ApiError(status.HTTP_404_NOT_FOUND, "payment_not_found",
                        N_("payment not found"), detail=str(exc))
    if isinstance(exc, errors.PaymentInvalid):
        return _invalid(exc)
    if isinstance(exc, errors.PaymentProviderUnavailable):
        return _unavailable("provider_unavailable",
                            N_("the payment provider is unavailable; retry later"), str(exc))
    return ApiError(status.HTTP_502_BAD_GATEWAY, "provider_error",
                    N_("the payment provider failed; retry later"), detail=str(exc))


def _invalid(exc: errors.PaymentInvalid) -> ApiError:
    return ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, "payment_invalid",
                    N_("the payment is not valid"), detail=str(exc))


def _unavailable(code: str, msgid: str, detail: str | None = None) -> ApiError:
    return ApiError(status.HTTP_503_SERVICE_UNAVAILABLE, code, msgid, detail=detail,
                    headers={"Retry-After": "30"})


def _database_down(what: str, exc: SQLAlchemyError) -> ApiError:
    log.error("%s not recorded, database error: %s", what, type(exc).__name__)
    return _unavailable("database_unavailable", N_("database unavailable; retry later"))


def _conflict(detail: str | None) -> ApiError:
    return ApiError(status.HTTP_409_CONFLICT, "payment_conflict",
                    N_("this conflicts with the payment's recorded state"), detail=detail)


def _agent_refused(exc: agent.AgentRefused) -> ApiError:
    return ApiError(exc.status, "agent_refused", N_("the agents' webhook refused the request"),
                    detail=str(exc))


# --- PayGate ----------------------------------------------------------------------------------


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
            p = paygate.create_intent(rt, actor=actor, kit_id=body.kit_id,
                                      amount_fcfa=body.amount_fcfa, phone=body.phone,
                                      network=body.network)
        except errors.PaymentError as exc:
            raise _http_error(exc) from exc
        return IntentOut(identifier=p.provider_ref, kit_id=body.kit_id,
                         amount_fcfa=body.amount_fcfa, status=p.status,
                         tx_reference=p.tx_reference)

    return run_idempotent(rt, actor=actor, key=idempotency_key, method="POST",
                          path=request.url.path, body=body.model_dump(mode="json"),
                          status_code=status.HTTP_201_CREATED, action=act)


def _payment_out(p: Payment, kit_id: str | None) -> PaymentOut:
    return PaymentOut(
        identifier=p.provider_ref, payment_id=p.id, provider=p.provider, kit_id=kit_id,
        desco_id=p.desco_id, status=p.status, requested_fcfa=p.requested_fcfa,
        amount_fcfa=p.amount_fcfa, network=p.network, phone=p.phone, reason=p.reason,
        tx_reference=p.tx_reference, payment_reference=p.payment_reference,
        created_at=p.created_at, updated_at=p.updated_at, credited_at=p.credited_at,
    )


@router.get("", response_model=PaymentPage, responses={**_errors, 422: {"model": Problem}},
            summary="Payments, newest first, filtered; keyset pages (?before=next_before)")
def list_payments(
    rt: RuntimeDep, actor: ReaderKey,
    payment_status: Annotated[str | None, Query(
        alias="status", pattern="^[a-z_]{1,16}$",
        description="initiated, pending, received, credited, suspense, failed, ...")] = None,
    provider: Annotated[str | None, Query(max_length=32)] = None,
    kit_id: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[float | None, Query(ge=0, le=1e11, description="unix seconds")] = None,
    until: Annotated[float | None, Query(ge=0, le=1e11, description="unix seconds")] = None,
    before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> PaymentPage:
    f = listing.PaymentFilter(desco_id=actor.desco_id, status=payment_status,
                              provider=provider, kit_id=kit_id, since=since, until=until)
    with rt.db.session() as s:
        rows, next_before = listing.list_payments(s, f, before_id=before, limit=limit)
        return PaymentPage(items=[_payment_out(p, kit) for p, kit in rows],
                           next_before=next_before)


@router.get("/{identifier}", response_model=PaymentOut, responses=_errors,
            summary="A payment's state by its PayGate identifier")
def get_payment(rt: RuntimeDep, actor: ReaderKey, identifier: str) -> PaymentOut:
    with rt.db.session() as s:
        p = paygate.get_payment(s, identifier, desco_id=actor.desco_id)
        if p is None:
            raise ApiError(status.HTTP_404_NOT_FOUND, "payment_not_found",
                           N_("payment {identifier} not found"), identifier=identifier)
        acct = s.get(Account, p.account_id) if p.account_id is not None else None
        return _payment_out(p, acct.kit_id if acct else None)


@router.post(
    "/paygate", response_model=CallbackAck,
    responses={**_BODY_ERRORS, 503: {"model": Problem}},
    openapi_extra={"requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PayGateCallbackIn.model_json_schema()}},
    }},
    summary="PayGate Global's callback (no API key; confirmed with PayGate before crediting)",
)
async def paygate_callback(rt: RuntimeDep, request: Request) -> CallbackAck:
    body = await bodies.read_json_object(request, rt.settings)
    # database and PayGate calls block: run them off the event loop
    try:
        outcome = await run_in_threadpool(paygate.handle_paygate_callback, rt, body)
    except errors.PaymentInvalid as exc:
        raise _invalid(exc) from exc
    except errors.PaymentProviderUnavailable as exc:
        raise _http_error(exc) from exc
    except SQLAlchemyError as exc:
        raise _database_down("callback", exc) from exc
    return CallbackAck(outcome=outcome.outcome, identifier=outcome.identifier,
                       credited=outcome.credited)


# --- MTN MoMo ---------------------------------------------------------------------------------


@router.post("/momo/intents", status_code=status.HTTP_201_CREATED, response_model=MoMoIntentOut,
             responses={**_errors, 422: {"model": Problem}, 502: {"model": Problem},
                        503: {"model": Problem}},
             summary="Start an MTN MoMo request-to-pay (finance)")
def create_momo_intent(rt: RuntimeDep, actor: FinanceKey, body: MoMoIntentIn) -> MoMoIntentOut:
    try:
        p = momo.create_intent(rt, actor=actor, kit_id=body.kit_id,
                               amount_fcfa=body.amount_fcfa, phone=body.phone)
    except errors.PaymentError as exc:
        raise _http_error(exc) from exc
    return MoMoIntentOut(reference_id=p.provider_ref, kit_id=body.kit_id,
                         amount_fcfa=body.amount_fcfa, status=p.status)


_MOMO_CALLBACK: dict[str, Any] = {
    "response_model": FeedAck,
    "responses": {**_BODY_ERRORS, 503: {"model": Problem}},
    "summary": "MTN MoMo's callback (POST or PUT; confirmed by GET before credit)",
    # the body is read raw (MoMo's shape varies); documented so clients and the fuzzer
    # know one is expected
    "openapi_extra": {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"type": "object", "description": "MoMo's request-to-pay view (status, "
                   "amount, currency, externalId, payer, ...); only a GET to MoMo is trusted",
                   "additionalProperties": True}}}}},
}


@router.put("/momo/callback/{reference_id}", operation_id="momo_callback_put",
            **_MOMO_CALLBACK)
@router.post("/momo/callback/{reference_id}", operation_id="momo_callback_post",
             **_MOMO_CALLBACK)
async def momo_callback(rt: RuntimeDep, reference_id: str, request: Request) -> FeedAck:
    body = await bodies.read_json_object(request, rt.settings)
    try:
        uuid.UUID(reference_id)
    except ValueError as exc:
        raise ApiError(status.HTTP_404_NOT_FOUND, "payment_not_found",
                       N_("no such payment")) from exc
    try:
        outcome = await run_in_threadpool(momo.confirm, rt, reference_id, body)
    except errors.PaymentProviderUnavailable as exc:
        raise _http_error(exc) from exc
    except SQLAlchemyError as exc:
        raise _database_down("MoMo callback", exc) from exc
    return FeedAck(outcome=outcome.outcome, reference=reference_id, credited=outcome.credited,
                   payment_id=outcome.payment_id)


# --- DESCO agents' signed webhook -------------------------------------------------------------


@router.post("/webhook/{desco_id}", response_model=FeedAck,
             responses={**_BODY_ERRORS, 401: {"model": Problem}, 409: {"model": Problem},
                        503: {"model": Problem}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": AgentPaymentIn.model_json_schema()}}}},
             summary="Signed webhook for a DESCO's agents (X-Cizo-Signature: t=..,v1=..)")
async def agent_webhook(rt: RuntimeDep, desco_id: str, request: Request) -> FeedAck:
    raw = await bodies.read_raw(request, rt.settings)
    try:
        await run_in_threadpool(agent.authenticate, rt, desco_id,
                                request.headers.get(webhook_signature.HEADER), raw)
    except agent.AgentRefused as exc:
        raise _agent_refused(exc) from exc
    except SQLAlchemyError as exc:
        raise _database_down("agent webhook", exc) from exc
    body = bodies.json_object(raw)
    try:
        msg = AgentPaymentIn.model_validate(body)
    except ValidationError as exc:
        raise ApiError(status.HTTP_422_UNPROCESSABLE_CONTENT, "request_invalid",
                       N_("the request is not valid; detail lists what to change"),
                       detail=exc.errors(include_url=False, include_context=False)) from exc
    try:
        receipt = await run_in_threadpool(functools.partial(
            agent.record, rt, desco_id, agent.AgentPayment(**msg.model_dump())))
    except agent.AgentRefused as exc:
        raise _agent_refused(exc) from exc
    except reversals.ReversalConflict as exc:
        raise _conflict(str(exc)) from exc
    except SQLAlchemyError as exc:
        raise _database_down("agent webhook", exc) from exc
    if receipt.outcome == "conflict":
        raise _conflict(receipt.detail)
    return FeedAck(outcome=receipt.outcome, reference=msg.transaction_id,
                   credited=receipt.credited, payment_id=receipt.payment_id)


# --- refunds ----------------------------------------------------------------------------------


@router.post("/{identifier}/refunds", response_model=FeedAck,
             responses={**_errors, 409: {"model": Problem}, 503: {"model": Problem}},
             summary="Record a refund or reversal: a correcting ledger entry (finance)")
def refund(rt: RuntimeDep, actor: FinanceKey, identifier: str, body: RefundIn) -> FeedAck:
    try:
        receipt = reversals.refund(rt, identifier=identifier, refund_id=body.refund_id,
                                   amount_fcfa=body.amount_fcfa, reason=body.reason,
                                   actor=actor)
    except reversals.ReversalConflict as exc:
        raise _conflict(str(exc)) from exc
    if receipt is None:
        raise ApiError(status.HTTP_404_NOT_FOUND, "payment_not_found",
                       N_("payment {identifier} not found"), identifier=identifier)
    if receipt.outcome == "conflict":
        raise _conflict(receipt.detail)
    return FeedAck(outcome=receipt.outcome, reference=body.refund_id, credited=False,
                   payment_id=receipt.payment_id)
