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
import contextlib
import dataclasses
import hmac
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from payment_sim._common import CallbackFailed, FaultPatch, PayPending, SimCore
from payment_sim.paygate import SimServerHandle, serve_app_in_thread

log = logging.getLogger(__name__)

Outcome = Literal["approve", "fail", "never"]
REASONS = ("NOT_ENOUGH_FUNDS", "COULD_NOT_PERFORM_TRANSACTION", "PAYER_NOT_FOUND",
           "PAYER_LIMIT_REACHED", "SENDER_ACCOUNT_NOT_ACTIVE", "NOT_ALLOWED",
           "INTERNAL_PROCESSING_ERROR")


@dataclass
class MoMoSimConfig:
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


@dataclass
class MoMoTransaction:
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



class _ConfigPatch(FaultPatch):
    outcome: Outcome | None = None
    callback_method: Literal["PUT", "POST"] | None = None
    amount_as_number: bool | None = None
    fail_reason: str | None = None


def _err(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


class MoMoSim(SimCore):
    """The simulator's state (``app.state.momo``); event-loop thread only."""

    name = "momo sim"
    config: MoMoSimConfig

    def __init__(self, config: MoMoSimConfig) -> None:
        self.config = dataclasses.replace(config)
        super().__init__(config.seed)
        self.tokens: set[str] = set()
        self.by_ref: dict[str, MoMoTransaction] = {}

    def bearer_ok(self, request: Request) -> bool:
        auth = request.headers.get("authorization", "")
        return auth.startswith("Bearer ") and auth[7:] in self.tokens

    def key_ok(self, request: Request) -> bool:
        key = request.headers.get("ocp-apim-subscription-key", "")
        return hmac.compare_digest(key.encode(), self.config.subscription_key.encode())

    async def customer(self, tx: MoMoTransaction) -> None:
        await asyncio.sleep(self.config.approve_after_s)
        if tx.status == "PENDING":
            await self.settle(tx, "approve" if tx.outcome == "approve" else "fail")

    def is_pending(self, tx: MoMoTransaction) -> bool:
        return tx.status == "PENDING"

    async def approve(self, tx: MoMoTransaction) -> None:
        await self.settle(tx, "approve")

    def add(self, tx: MoMoTransaction) -> None:
        """Register a request-to-pay directly (benchmarks pre-create thousands)."""
        self.by_ref[tx.reference_id] = tx

    async def settle(self, tx: MoMoTransaction, outcome: str, reason: str | None = None
                     ) -> None:
        tx.settled_perf = time.perf_counter()
        if outcome == "approve":
            tx.status = "SUCCESSFUL"
            tx.financial_transaction_id = str(10**8 + secrets.randbelow(9 * 10**8))
        else:
            tx.status = "FAILED"
            tx.reason = reason or self.config.fail_reason
        if tx.callback_url:
            self.spawn(self.deliver_all(tx))

    async def deliver_all(self, tx: MoMoTransaction) -> None:
        assert tx.callback_url is not None
        body = tx.body(amount_as_number=self.config.amount_as_number)
        copies = 1 + self.config.duplicate_callbacks
        jobs = [self._deliver(tx, body, c) for c in range(copies)]
        if self.rng.random() < self.config.redeliver_fraction:
            jobs.append(self._late(tx, body, copies))
        await asyncio.gather(*jobs)

    async def _late(self, tx: MoMoTransaction, body: dict[str, Any], copy: int) -> None:
        await asyncio.sleep(self.rng.uniform(0, self.config.redeliver_delay_s))
        await self._deliver(tx, body, copy)

    async def _deliver(self, tx: MoMoTransaction, body: dict[str, Any], copy: int) -> None:
        assert tx.callback_url is not None
        for attempt in range(self.config.callback_retries + 1):
            if attempt:
                await asyncio.sleep(self.config.retry_backoff_s * 2 ** (attempt - 1))
            record: dict[str, Any] = {"copy": copy, "attempt": attempt, "at": time.time(),
                                      "status_code": None, "ok": False, "latency_s": None}
            tx.callbacks.append(record)
            t0 = time.perf_counter()
            try:
                status_code = await self.send_callback(self.config.callback_method,
                                                       tx.callback_url, json=body)
            except CallbackFailed as exc:
                record["error"] = str(exc).split(":")[0]
                continue
            record["latency_s"] = time.perf_counter() - t0
            record["done_perf"] = time.perf_counter()
            record["status_code"] = status_code
            if 200 <= status_code < 300:
                record["ok"] = True
                return
        log.warning("momo sim: gave up on callback for %s", tx.reference_id)

    def fault_response(self) -> JSONResponse:
        return _err(500, "INTERNAL_PROCESSING_ERROR", "An internal error occurred")


def create_app(config: MoMoSimConfig) -> FastAPI:
    sim = MoMoSim(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await sim.aclose()

    app = FastAPI(title="MTN MoMo collections simulator", lifespan=lifespan)
    app.state.momo = sim

    @app.post("/collection/token/", response_model=None)
    async def token(request: Request) -> dict[str, Any] | JSONResponse:
        auth = request.headers.get("authorization", "")
        want = base64.b64encode(f"{sim.config.api_user}:{sim.config.api_key}".encode()).decode()
        if not sim.key_ok(request) or not hmac.compare_digest(auth.encode(),
                                                              f"Basic {want}".encode()):
            return JSONResponse({"error": "login_failed"}, status_code=401)
        tok = secrets.token_urlsafe(24)
        sim.tokens.add(tok)
        return {"access_token": tok, "token_type": "access_token", "expires_in": 3600}

    @app.post("/collection/v1_0/requesttopay", response_model=None)
    async def request_to_pay(request: Request) -> Response:
        if not sim.key_ok(request) or not sim.bearer_ok(request):
            return _err(401, "UNAUTHORIZED", "Access denied due to invalid credentials.")
        if request.headers.get("x-target-environment") != sim.config.target_environment:
            return _err(400, "INVALID_TARGET_ENVIRONMENT", "Invalid target environment")
        ref = request.headers.get("x-reference-id", "")
        try:
            uuid.UUID(ref)
        except ValueError:
            return _err(400, "INVALID_REFERENCE_ID", "ReferenceId is not a valid UUID")
        if ref in sim.by_ref:
            return _err(409, "RESOURCE_ALREADY_EXIST",
                        "Duplicated reference id. Creation of resource failed.")
        try:
            body = await request.json()
            payer = body["payer"]
            amount_s = str(body["amount"])
            if not amount_s.isdigit() or int(amount_s) <= 0:
                raise ValueError("amount")
            if body["currency"] != sim.config.currency:
                return _err(500, "NOT_ALLOWED_TARGET_ENVIRONMENT",
                            "Currency not supported.")  # what the sandbox answers
            tx = MoMoTransaction(
                reference_id=ref, amount=int(amount_s), currency=body["currency"],
                external_id=str(body.get("externalId", "")), party_id=str(payer["partyId"]),
                payer_message=str(body.get("payerMessage", "")),
                payee_note=str(body.get("payeeNote", "")),
                callback_url=request.headers.get("x-callback-url"), outcome=sim.config.outcome,
                created_at=time.time(),
            )
        except (ValueError, KeyError, TypeError):
            return _err(400, "INVALID_PARAMETER", "Invalid request body")
        sim.by_ref[ref] = tx
        if tx.outcome != "never":
            sim.spawn(sim.customer(tx))
        return Response(status_code=202)

    @app.get("/collection/v1_0/requesttopay/{reference_id}", response_model=None)
    async def status(reference_id: str, request: Request) -> dict[str, Any] | JSONResponse:
        if not sim.key_ok(request) or not sim.bearer_ok(request):
            return _err(401, "UNAUTHORIZED", "Access denied due to invalid credentials.")
        fault = await sim.status_fault()
        if fault is not None:
            return fault
        tx = sim.by_ref.get(reference_id)
        if tx is None:
            return _err(404, "RESOURCE_NOT_FOUND", "Requested resource was not found.")
        return tx.body(amount_as_number=sim.config.amount_as_number)

    @app.get("/_sim/transactions")
    async def transactions() -> list[dict[str, Any]]:
        return [{"reference_id": t.reference_id, **t.body(amount_as_number=True),
                 "callbacks": list(t.callbacks)} for t in sim.by_ref.values()]

    @app.post("/_sim/pay_pending")
    async def pay_pending(req: PayPending) -> dict[str, Any]:
        return {"started": await sim.pay_pending(req.rate_per_s, req.count)}

    @app.post("/_sim/settle")
    async def settle(req: _Settle) -> dict[str, Any]:
        tx = sim.by_ref.get(req.reference_id)
        if tx is None:
            raise HTTPException(404, "no such transaction")
        if tx.status != "PENDING":
            raise HTTPException(409, f"transaction is {tx.status}")
        await sim.settle(tx, req.outcome, req.reason)
        return {"reference_id": tx.reference_id, **tx.body(amount_as_number=True)}

    @app.post("/_sim/config")
    async def set_config(patch: _ConfigPatch) -> dict[str, Any]:
        changes = patch.model_dump(exclude_unset=True)
        sim.config = dataclasses.replace(sim.config, **changes)
        return {k: getattr(sim.config, k) for k in changes}

    return app


def run_in_thread(config: MoMoSimConfig, port: int = 0, host: str = "127.0.0.1"
                  ) -> SimServerHandle:
    """The MoMo simulator on a real server in a background thread; ``momo_of(handle)``."""
    return serve_app_in_thread(create_app(config), port=port, host=host)


def momo_of(handle: SimServerHandle) -> MoMoSim:
    sim: MoMoSim = handle.app.state.momo
    return sim


def serve(config: MoMoSimConfig, host: str = "127.0.0.1", port: int = 8091) -> None:
    """Run the simulator in the foreground (blocks until interrupted)."""
    uvicorn.run(create_app(config), host=host, port=port, ws="none", log_config=None)
