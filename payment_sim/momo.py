"""A local stand-in for MTN MoMo's Open API, collections product (token, request-to-pay).

Faithful to the public API where known (shared/reference/mobile-money-feeds.md):

* ``POST /collection/token/`` with Basic auth (API user, API key) and
  ``Ocp-Apim-Subscription-Key`` -> ``{"access_token", "token_type": "access_token",
  "expires_in": 3600}``; wrong credentials -> 401 ``{"error": "login_failed"}``.
* ``POST /collection/v1_0/requesttopay`` with ``Authorization: Bearer``, ``X-Reference-Id``
  (UUID; reuse -> 409 ``RESOURCE_ALREADY_EXIST``), ``X-Target-Environment``, the
  subscription key and optional ``X-Callback-Url``; body ``{amount (string), currency,
  externalId, payer: {partyIdType: "MSISDN", partyId}, payerMessage, payeeNote}`` -> 202.
* ``GET /collection/v1_0/requesttopay/{referenceId}`` -> 200 even when FAILED (read
  ``status`` and ``reason``); unknown -> 404 ``RESOURCE_NOT_FOUND``.
* Callbacks: PUT (or POST, ``callback_method``) of the GET shape to X-Callback-Url, no
  signature, no referenceId in the body; amounts as strings or bare numbers.

Fault injection: fixed status latency, 5xx and hanging status calls, duplicate concurrent
callbacks and late (out-of-order) re-deliveries. ``/_sim/...`` controls the simulator.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hmac
import logging
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from payment_sim import server

log = logging.getLogger(__name__)

Outcome = Literal["approve", "fail", "never"]
REASONS = ("NOT_ENOUGH_FUNDS", "COULD_NOT_PERFORM_TRANSACTION", "PAYER_NOT_FOUND",
           "PAYER_LIMIT_REACHED", "SENDER_ACCOUNT_NOT_ACTIVE", "NOT_ALLOWED",
           "INTERNAL_PROCESSING_ERROR")


@dataclass
class MoMoSimConfig:
    """How the simulated MoMo and its simulated customers behave."""

    subscription_key: str
    api_user: str
    api_key: str
    target_environment: str = "sandbox"
    currency: str = "XOF"
    approve_after_s: float = 2.0
    outcome: Outcome = "approve"
    fail_reason: str = "NOT_ENOUGH_FUNDS"
    callback_method: Literal["PUT", "POST"] = "PUT"
    amount_as_number: bool = False  # some deployments send bare numbers
    duplicate_callbacks: int = 0  # extra copies sent concurrently with the first
    redeliver_fraction: float = 0.0  # fraction re-sent later, out of order
    redeliver_delay_s: float = 0.5
    callback_retries: int = 2
    retry_backoff_s: float = 0.5
    callback_timeout_s: float = 5.0
    status_latency_s: float = 0.0
    status_error_rate: float = 0.0
    status_timeout_rate: float = 0.0
    status_hang_s: float = 30.0
    seed: int | None = None
    journal: Path | None = None  # transactions survive a restart (SIGKILL included)


@dataclass
class MoMoTransaction:
    """One request-to-pay; every callback attempt is recorded on it."""

    reference_id: str
    amount: int
    currency: str
    external_id: str
    party_id: str
    payer_message: str
    payee_note: str
    callback_url: str | None
    outcome: Outcome
    created_at: float
    status: str = "PENDING"
    reason: str | None = None
    financial_transaction_id: str | None = None
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    settled_perf: float | None = None  # perf_counter when the customer answered (benchmarks)

    def body(self, *, amount_as_number: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "amount": self.amount if amount_as_number else str(self.amount),
            "currency": self.currency,
            "externalId": self.external_id,
            "payer": {"partyIdType": "MSISDN", "partyId": self.party_id},
            "payerMessage": self.payer_message,
            "payeeNote": self.payee_note,
            "status": self.status,
        }
        if self.financial_transaction_id is not None:
            out["financialTransactionId"] = self.financial_transaction_id
        if self.reason is not None:
            out["reason"] = self.reason
        return out


class _Settle(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reference_id: str
    outcome: Literal["approve", "fail"]
    reason: str | None = None


class _ConfigPatch(server.FaultPatch):
    outcome: Outcome | None = None
    callback_method: Literal["PUT", "POST"] | None = None
    amount_as_number: bool | None = None
    fail_reason: str | None = None


def _err(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


class MoMoSim(server.SimCore[MoMoTransaction]):
    """The simulator's state (``app.state.sim``)."""

    name = "momo sim"
    config: MoMoSimConfig

    def __init__(self, config: MoMoSimConfig) -> None:
        self.config = dataclasses.replace(config)
        super().__init__(config.seed, config.journal)
        self.tokens: set[str] = set()
        self.by_ref: dict[str, MoMoTransaction] = {}

    def restore(self) -> None:
        for state in self.journalled():
            self.by_ref[state["reference_id"]] = MoMoTransaction(**state)

    def fault_response(self) -> JSONResponse:
        return _err(500, "INTERNAL_PROCESSING_ERROR", "An internal error occurred")

    def tx_label(self, tx: MoMoTransaction) -> str:
        return f"request-to-pay {tx.reference_id}"

    def config_view(self, changed: Mapping[str, Any]) -> dict[str, Any]:
        """Only the fields just changed, with their new values."""
        return {k: getattr(self.config, k) for k in changed}

    def bearer_ok(self, request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        return auth.startswith("Bearer ") and auth[7:] in self.tokens

    def key_ok(self, request: Request) -> bool:
        key = request.headers.get("ocp-apim-subscription-key", "")
        return hmac.compare_digest(key.encode(), self.config.subscription_key.encode())

    def add(self, tx: MoMoTransaction) -> None:
        """Register a request-to-pay directly (benchmarks pre-create thousands)."""
        self.by_ref[tx.reference_id] = tx
        self.record(tx)

    # --- customers -------------------------------------------------------------------

    async def customer(self, tx: MoMoTransaction) -> None:
        if tx.outcome == "never":
            return
        await asyncio.sleep(self.config.approve_after_s)
        if tx.status == "PENDING":
            await self.settle(tx, "approve" if tx.outcome == "approve" else "fail")

    def is_pending(self, tx: MoMoTransaction) -> bool:
        return tx.status == "PENDING"

    async def approve(self, tx: MoMoTransaction) -> None:
        await self.settle(tx, "approve")

    async def settle(self, tx: MoMoTransaction, outcome: str, reason: str | None = None
                     ) -> None:
        tx.settled_perf = time.perf_counter()
        if outcome == "approve":
            tx.status = "SUCCESSFUL"
            tx.financial_transaction_id = str(10**8 + secrets.randbelow(9 * 10**8))
        else:
            tx.status = "FAILED"
            tx.reason = reason or self.config.fail_reason
        self.record(tx)
        if tx.callback_url:
            self.spawn(self.deliver_all(tx))

    async def deliver_all(self, tx: MoMoTransaction) -> None:
        """The callback to the request's X-Callback-Url (with its copies)."""
        assert tx.callback_url is not None
        body = tx.body(amount_as_number=self.config.amount_as_number)
        await self.announce(tx, self.config.callback_method, tx.callback_url, body)


MoMoHandle = server.SimServerHandle[MoMoSim]


# --- the collections API -----------------------------------------------------------------


def _unauthorised(sim: MoMoSim, request: Request) -> JSONResponse | None:
    """The subscription key and a token from ``/collection/token/``, or a 401."""
    if sim.key_ok(request) and sim.bearer_ok(request):
        return None
    return _err(401, "UNAUTHORIZED", "Access denied due to invalid credentials.")


def _refused_reference(sim: MoMoSim, request: Request, ref: str) -> JSONResponse | None:
    """What the sandbox answers to a wrong environment or a bad or reused X-Reference-Id."""
    if request.headers.get("x-target-environment") != sim.config.target_environment:
        return _err(400, "INVALID_TARGET_ENVIRONMENT", "Invalid target environment")
    try:
        uuid.UUID(ref)
    except ValueError:
        return _err(400, "INVALID_REFERENCE_ID", "ReferenceId is not a valid UUID")
    if ref in sim.by_ref:
        return _err(409, "RESOURCE_ALREADY_EXIST",
                    "Duplicated reference id. Creation of resource failed.")
    return None


async def _new_request(sim: MoMoSim, request: Request, ref: str
                       ) -> MoMoTransaction | JSONResponse:
    """The request-to-pay its headers and body describe, or the error MoMo answers."""
    try:
        body = await request.json()
        payer = body["payer"]
        amount_s = str(body["amount"])
        if not amount_s.isdigit() or int(amount_s) <= 0:
            raise ValueError("amount")
        if body["currency"] != sim.config.currency:
            return _err(500, "NOT_ALLOWED_TARGET_ENVIRONMENT",
                        "Currency not supported.")  # what the sandbox answers
        return MoMoTransaction(
            reference_id=ref, amount=int(amount_s),
            currency=body["currency"], external_id=str(body.get("externalId", "")),
            party_id=str(payer["partyId"]), payer_message=str(body.get("payerMessage", "")),
            payee_note=str(body.get("payeeNote", "")),
            callback_url=request.headers.get("x-callback-url"), outcome=sim.config.outcome,
            created_at=time.time(),
        )
    except (ValueError, KeyError, TypeError):
        return _err(400, "INVALID_PARAMETER", "Invalid request body")


def _collections_api(sim: MoMoSim) -> APIRouter:
    """Token, request-to-pay and its status, as the collections product answers them."""
    router = APIRouter(prefix="/collection")

    @router.post("/token/", response_model=None)
    async def token(request: Request) -> dict[str, Any] | JSONResponse:
        auth = request.headers.get("authorization", "")
        want = base64.b64encode(f"{sim.config.api_user}:{sim.config.api_key}".encode()).decode()
        if not sim.key_ok(request) or not hmac.compare_digest(auth.encode(),
                                                              f"Basic {want}".encode()):
            return JSONResponse({"error": "login_failed"}, status_code=401)
        tok = secrets.token_urlsafe(24)
        sim.tokens.add(tok)
        return {"access_token": tok, "token_type": "access_token", "expires_in": 3600}

    @router.post("/v1_0/requesttopay", response_model=None)
    async def request_to_pay(request: Request) -> Response:
        ref = request.headers.get("x-reference-id", "")
        refused = _unauthorised(sim, request)
        if refused is None:
            refused = _refused_reference(sim, request, ref)
        if refused is not None:
            return refused
        tx = await _new_request(sim, request, ref)
        if isinstance(tx, JSONResponse):
            return tx
        sim.add(tx)
        sim.spawn(sim.customer(tx))
        return Response(status_code=202)

    @router.get("/v1_0/requesttopay/{reference_id}", response_model=None)
    async def status(reference_id: str, request: Request) -> dict[str, Any] | JSONResponse:
        refused = _unauthorised(sim, request)
        if refused is None:
            refused = await sim.status_fault()
        if refused is not None:
            return refused
        tx = sim.by_ref.get(reference_id)
        if tx is None:
            return _err(404, "RESOURCE_NOT_FOUND", "Requested resource was not found.")
        return tx.body(amount_as_number=sim.config.amount_as_number)

    return router


# --- simulator controls ------------------------------------------------------------------


def _sim_view(tx: MoMoTransaction) -> dict[str, Any]:
    return {"reference_id": tx.reference_id, **tx.body(amount_as_number=True)}


def _sim_controls(sim: MoMoSim) -> APIRouter:
    """MoMo's own ``/_sim/`` endpoints: transactions and settle."""
    router = APIRouter(prefix="/_sim")

    @router.get("/transactions")
    async def transactions() -> list[dict[str, Any]]:
        return [{**_sim_view(t), "callbacks": list(t.callbacks)} for t in sim.by_ref.values()]

    @router.post("/settle")
    async def settle(req: _Settle) -> dict[str, Any]:
        tx = sim.by_ref.get(req.reference_id)
        if tx is None:
            raise HTTPException(404, "no such transaction")
        if tx.status != "PENDING":
            raise HTTPException(409, f"transaction is {tx.status}")
        await sim.settle(tx, req.outcome, req.reason)
        return _sim_view(tx)

    return router


# --- the simulator -----------------------------------------------------------------------


SIMULATOR = server.Simulator(
    title="MTN MoMo collections simulator", state=MoMoSim, routes=(_collections_api, _sim_controls),
    patch_model=_ConfigPatch, default_port=8091)
create_app = SIMULATOR.create_app
serve = SIMULATOR.serve
run_in_thread = SIMULATOR.run_in_thread
