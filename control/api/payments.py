"""/v1/payments: intents through PayGate, their state, and PayGate's callback."""

from __future__ import annotations

import functools
import json
import logging
import uuid
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

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
from control.gateways.paygate import normalise_datetime
from control.ledger.accounts import Actor
from control.ledger.models import Account, Payment
from control.ledger.phone import PhoneError, normalise_phone
from control.payments import intake, matching
from control.payments.providers import momo
from control.payments.providers import paygate as payments
from control.payments.providers import webhook_secrets as webhook_store
from control.payments.providers import webhook_signature as webhooks

AGENT_PROVIDER = "agent"  # the signed generic webhook; provider_ref is "<desco>:<tx id>"

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


# --- issue 4: MTN MoMo, the signed agent webhook, refunds ------------------------------------


class MoMoIntentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kit_id: str = Field(min_length=1, max_length=64)
    amount_fcfa: int = Field(gt=0, le=matching.MAX_AMOUNT_FCFA)
    phone: str = Field(min_length=8, max_length=32)


class MoMoIntentOut(BaseModel):
    reference_id: str
    kit_id: str
    amount_fcfa: int
    status: str


class FeedAck(BaseModel):
    outcome: str = Field(description="credited|already_credited|duplicate|pending|failed|"
                                     "suspense|unknown|unmatched|reversed|void|"
                                     "unknown_original")
    reference: str
    credited: bool
    payment_id: int | None = None


def _unavailable(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=detail,
                         headers={"Retry-After": "30"})


@router.post("/momo/intents", status_code=status.HTTP_201_CREATED, response_model=MoMoIntentOut,
             responses={**_errors, 422: {"model": Problem}, 502: {"model": Problem},
                        503: {"model": Problem}},
             summary="Start an MTN MoMo request-to-pay (finance)")
def create_momo_intent(rt: RuntimeDep, actor: FinanceKey, body: MoMoIntentIn) -> MoMoIntentOut:
    try:
        p = momo.create_intent(rt, actor=actor, kit_id=body.kit_id,
                               amount_fcfa=body.amount_fcfa, phone=body.phone)
    except payments.PaymentError as exc:
        raise _http_error(exc) from exc
    return MoMoIntentOut(reference_id=p.provider_ref, kit_id=body.kit_id,
                         amount_fcfa=body.amount_fcfa, status=p.status)


async def _json_object(request: Request, *, strict_type: bool) -> dict[str, Any]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if strict_type and ctype != "application/json":
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                            detail="send the body as Content-Type: application/json")
    raw = await request.body()
    if not raw.strip():
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="empty body")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="body is not JSON") from exc
    if not isinstance(body, dict):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            detail="body must be a JSON object")
    return body


_MOMO_CALLBACK: dict[str, Any] = {
    "response_model": FeedAck,
    "responses": {400: {"model": Problem}, 422: {"model": Problem}, 503: {"model": Problem}},
    "summary": "MTN MoMo's callback (POST or PUT; confirmed by GET before credit)",
    # issue 8: the body is read raw (MoMo's shape varies); documented so clients and the
    # fuzzer know one is expected
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
    body = await _json_object(request, strict_type=False)
    try:
        uuid.UUID(reference_id)
    except ValueError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such payment") from exc
    try:
        outcome = await run_in_threadpool(momo.confirm, rt, reference_id, body)
    except payments.PaymentProviderUnavailable as exc:
        raise _unavailable(str(exc)) from exc
    except SQLAlchemyError as exc:
        log.error("MoMo callback not recorded, database error: %s", type(exc).__name__)
        raise _unavailable("database unavailable; retry later") from exc
    return FeedAck(outcome=outcome.outcome, reference=reference_id, credited=outcome.credited,
                   payment_id=outcome.payment_id)


class AgentPaymentIn(BaseModel):
    """The signed generic webhook's body (DESCO agents, cash collection). Strict: a field we
    do not know is refused, so a typo cannot silently drop information."""

    model_config = ConfigDict(extra="forbid")

    transaction_id: str = Field(min_length=1, max_length=100)
    type: Literal["payment", "reversal"] = "payment"
    amount: int | str | float
    currency: str
    reference: str | None = Field(default=None, max_length=128)
    phone: str | None = Field(default=None, max_length=32)
    paid_at: str | int | None = None
    reverses: str | None = Field(default=None, max_length=100)
    agent: str | None = Field(default=None, max_length=100)
    note: str | None = Field(default=None, max_length=500)


@router.post("/webhook/{desco_id}", response_model=FeedAck,
             responses={400: {"model": Problem}, 401: {"model": Problem},
                        409: {"model": Problem}, 415: {"model": Problem},
                        422: {"model": Problem}, 503: {"model": Problem}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": AgentPaymentIn.model_json_schema()}}}},
             summary="Signed webhook for a DESCO's agents (X-Cizo-Signature: t=..,v1=..)")
async def agent_webhook(rt: RuntimeDep, desco_id: str, request: Request) -> FeedAck:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                            detail="send the body as Content-Type: application/json")
    raw = await request.body()
    try:
        secret = await run_in_threadpool(webhook_store.secret_for, rt, desco_id)
    except SQLAlchemyError as exc:
        raise _unavailable("database unavailable; retry later") from exc
    if secret is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                            detail="no webhook secret is configured for this DESCO")
    try:
        webhooks.verify(secret, request.headers.get(webhooks.HEADER), raw, now=rt.clock.now(),
                        tolerance_s=rt.settings.webhook_tolerance_s)
    except webhooks.SignatureError as exc:
        log.warning("agent webhook refused for DESCO %s: %s", desco_id, exc)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail=str(exc)) from exc
    body = await _json_object(request, strict_type=True)
    try:
        msg = AgentPaymentIn.model_validate(body)
    except ValidationError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            detail=exc.errors(include_url=False, include_context=False)
                            ) from exc
    try:
        amount = matching.parse_amount(msg.amount)
        currency = matching.check_currency(msg.currency)
        phone = normalise_phone(msg.phone) if msg.phone else None
    except (matching.AmountError, PhoneError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from exc
    actor = Actor(name=f"webhook:{desco_id}", role="system", desco_id=desco_id)
    ref = f"{desco_id}:{msg.transaction_id}"
    try:
        if msg.type == "reversal":
            if not msg.reverses:
                raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                                    detail="a reversal names the transaction it reverses "
                                           "in 'reverses'")
            receipt = await run_in_threadpool(functools.partial(
                intake.reverse, rt, provider=AGENT_PROVIDER, provider_ref=ref,
                original_ref=f"{desco_id}:{msg.reverses}", desco_id=desco_id,
                amount_fcfa=amount, actor=actor, reason=msg.note or "reversal"))
        else:
            receipt = await run_in_threadpool(functools.partial(
                intake.receive, rt, intake.Incoming(
                    provider=AGENT_PROVIDER, provider_ref=ref, desco_id=desco_id,
                    amount_fcfa=amount, currency=currency, phone_e164=phone,
                    reference=msg.reference,
                    paid_at=payments_paid_at(msg.paid_at),
                    detail={"transaction_id": msg.transaction_id, "agent": msg.agent}),
                actor=actor))
    except intake.ReversalConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    except SQLAlchemyError as exc:
        log.error("agent webhook not recorded, database error: %s", type(exc).__name__)
        raise _unavailable("database unavailable; retry later") from exc
    if receipt.outcome == "conflict":
        raise HTTPException(status.HTTP_409_CONFLICT, detail=receipt.detail)
    return FeedAck(outcome=receipt.outcome, reference=msg.transaction_id,
                   credited=receipt.credited, payment_id=receipt.payment_id)


def payments_paid_at(raw: str | int | None) -> float | None:
    return normalise_datetime(raw)


class RefundIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    amount_fcfa: int = Field(gt=0, le=matching.MAX_AMOUNT_FCFA)
    reason: str = Field(min_length=3, max_length=500)
    refund_id: str = Field(min_length=1, max_length=64,
                           description="your unique id for this refund (a retry is a no-op)")


@router.post("/{identifier}/refunds", response_model=FeedAck,
             responses={**_errors, 409: {"model": Problem}, 503: {"model": Problem}},
             summary="Record a refund or reversal: a correcting ledger entry (finance)")
def refund(rt: RuntimeDep, actor: FinanceKey, identifier: str, body: RefundIn) -> FeedAck:
    with rt.db.session() as s:
        p = s.scalars(select(Payment).where(Payment.provider_ref == identifier,
                                            Payment.kind == "payment")).first()
        if p is None or (actor.desco_id is not None and p.desco_id != actor.desco_id):
            raise HTTPException(status.HTTP_404_NOT_FOUND,
                                detail=f"payment {identifier} not found")
        provider, desco_id = p.provider, p.desco_id
    try:
        receipt = intake.reverse(rt, provider=provider,
                                 provider_ref=f"refund:{identifier}:{body.refund_id}",
                                 original_ref=identifier, desco_id=desco_id,
                                 amount_fcfa=body.amount_fcfa, actor=actor, reason=body.reason)
    except intake.ReversalConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    if receipt.outcome == "conflict":
        raise HTTPException(status.HTTP_409_CONFLICT, detail=receipt.detail)
    return FeedAck(outcome=receipt.outcome, reference=body.refund_id, credited=False,
                   payment_id=receipt.payment_id)
