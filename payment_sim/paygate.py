"""A local stand-in for PayGate Global's merchant API (Flooz / T-Money push payments, Togo).

Faithful where the behaviour is known (shared/reference/mobile-money-feeds.md and
public client code), explicit where it is a guess:

* ``POST /api/v1/pay`` answers HTTP 200 with ``{"tx_reference": <int>, "status": 0}``;
  on failure only ``{"status": N}`` (2 invalid token, 4 invalid params, 6 duplicate
  identifier) - no ``tx_reference``, so a client that skips the status check fails
  loudly. Bodies may be JSON or form-encoded; ``amount`` must be a positive whole
  number of XOF (int, or digit string as form posts send it).
* ``POST /api/v1/status {auth_token, tx_reference}`` and ``POST /api/v2/status
  {auth_token, identifier}`` answer the observed shape, ``status`` 0 paid, 2 pending,
  4 expired, 6 cancelled; ``payment_reference`` is ``""`` until paid and ``datetime``
  is the creation time until paid, then the payment time.
* Errors on the status endpoints never carry a ``status`` field, because ``status: 2``
  there means *pending*, and a merchant must not be able to read an error as any
  payment state. Unknown transaction: HTTP 404 (``not_found_http_status``) with the
  body a real client logged, ``{"error_code": 403, "error_message": "Transaction non
  trouvée."}``; bad token: HTTP 401 ``{"error_code": 401, ...}``; bad request: HTTP 400
  ``{"error_code": 400, ...}``. The real HTTP codes are not documented.
* The customer answers after ``approve_after_s``: paid (then the callback), cancelled
  (no callback unless ``callback_on_decline``: the callback carries no status, so
  PayGate only sends it for paid transactions, as far as is known) or never (pending,
  or expired after ``expire_after_s`` if set). The outcome is fixed when the payment is
  created; ``/_sim/config`` changes it for later payments.
* The callback is unsigned JSON ``{tx_reference, identifier, payment_reference, amount,
  datetime, payment_method, phone_number}``; non-2xx answers and connection errors are
  retried ``callback_retries`` times with exponential backoff, and ``duplicate_callbacks``
  extra identical copies are sent *concurrently* with the first (the nasty case for a
  merchant's idempotency).

Simulator-only endpoints live under ``/_sim/``: ``GET /_sim/transactions``, ``POST
/_sim/config``, ``POST /_sim/callback`` (send any body, e.g. a forged one, once, to the
callback URL or ``?url=``), ``POST /_sim/settle`` (settle a pending payment now).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import itertools
import json
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

import httpx
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from cizo.clock import Clock, SystemClock
from payment_sim import server
from payment_sim.paygate_wire import (
    CANCELLED,
    EXPIRED,
    NETWORKS,
    PAID,
    PAY_BAD_PARAMS,
    PAY_BAD_TOKEN,
    PAY_DUPLICATE,
    PAY_OK,
    PENDING,
    STATE_NAMES,
    Outcome,
    SimTransaction,
    drift_body,
    normalise_phone,
    whole_amount,
)

log = logging.getLogger(__name__)


@dataclass
class PayGateSimConfig:
    """How the simulated PayGate and its simulated customers behave."""

    auth_token: str
    callback_url: str | None = None  # as set in PayGate's merchant dashboard
    approve_after_s: float = 2.0
    outcome: Outcome = "approve"
    duplicate_callbacks: int = 0
    callback_retries: int = 3
    retry_backoff_s: float = 0.5
    callback_timeout_s: float = 5.0
    callback_on_decline: bool = False
    expire_after_s: float | None = None
    not_found_http_status: int = 404
    first_tx_reference: int | None = None  # None: from the clock, unique across restarts
    clock: Clock = field(default_factory=SystemClock)
    # --- fault injection (tests and bench/payments.py) ---
    status_latency_s: float = 0.0  # every status answer takes this long
    status_error_rate: float = 0.0  # fraction of status calls answered HTTP 5xx
    status_timeout_rate: float = 0.0  # fraction of status calls that hang status_hang_s
    status_hang_s: float = 30.0
    redeliver_fraction: float = 0.0  # fraction of paid callbacks delivered again later...
    redeliver_delay_s: float = 0.5  # ...after up to this long (so out of order)
    format_drift: bool = False  # vary the format as seen in the wild (see drift_body)
    seed: int | None = None
    journal: Path | None = None  # transactions survive a restart (SIGKILL included)


class _ConfigPatch(server.FaultPatch):
    outcome: Outcome | None = None
    callback_retries: int | None = Field(default=None, ge=0)
    callback_url: str | None = None
    callback_on_decline: bool | None = None
    expire_after_s: float | None = Field(default=None, gt=0)
    redeliver_delay_s: float | None = Field(default=None, ge=0)
    format_drift: bool | None = None


class _Settle(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tx_reference: int | None = None
    identifier: str | None = None
    outcome: Literal["approve", "decline", "expire"]


class PayGateSim(server.SimCore[SimTransaction]):
    """The simulator's state (``app.state.sim``)."""

    name = "paygate sim"
    config: PayGateSimConfig

    journal_key = "tx_reference"

    def __init__(self, config: PayGateSimConfig) -> None:
        self.config = dataclasses.replace(config)
        first = config.first_tx_reference
        if first is None:
            first = int(time.time() * 1000) % 10**13
        self._tx_refs = itertools.count(first)
        self.by_ref: dict[int, SimTransaction] = {}
        self.by_identifier: dict[str, SimTransaction] = {}
        super().__init__(config.seed, config.journal)

    def restore(self) -> None:
        for state in self.journalled():
            tx = SimTransaction(**{**state, "created_mono": time.monotonic()})
            self.by_ref[tx.tx_reference] = tx
            self.by_identifier[tx.identifier] = tx
        if self.by_ref:
            self._tx_refs = itertools.count(max(next(self._tx_refs), max(self.by_ref) + 1))

    def fault_response(self) -> JSONResponse:
        return JSONResponse({"message": "Internal Server Error"},
                            status_code=self.rng.choice((500, 502, 503)))

    def tx_label(self, tx: SimTransaction) -> str:
        return f"tx {tx.tx_reference}"

    def config_view(self, changed: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The whole behaviour, whatever was changed."""
        c = self.config
        return {
            "callback_url": c.callback_url,
            "approve_after_s": c.approve_after_s,
            "outcome": c.outcome,
            "duplicate_callbacks": c.duplicate_callbacks,
            "callback_retries": c.callback_retries,
            "callback_on_decline": c.callback_on_decline,
            "expire_after_s": c.expire_after_s,
            "status_latency_s": c.status_latency_s,
            "status_error_rate": c.status_error_rate,
            "status_timeout_rate": c.status_timeout_rate,
            "redeliver_fraction": c.redeliver_fraction,
            "format_drift": c.format_drift,
        }

    def authorised(self, body: dict[str, Any]) -> bool:
        token = body.get("auth_token")
        return isinstance(token, str) and hmac.compare_digest(
            token.encode(), self.config.auth_token.encode()
        )

    # --- transactions ---------------------------------------------------------------

    def refresh(self, tx: SimTransaction) -> SimTransaction:
        """Apply a lapsed expiry lazily (a pending push is not pending forever)."""
        limit = self.config.expire_after_s
        age = time.monotonic() - tx.created_mono
        if tx.state == PENDING and limit is not None and age >= limit:
            tx.state = EXPIRED
            log.info("paygate sim: tx %d expired", tx.tx_reference)
        return tx

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /api/v1/pay``: the answer PayGate gives (a status code, no exception)."""
        if not self.authorised(body):
            return {"status": PAY_BAD_TOKEN}
        amount = whole_amount(body.get("amount"))
        phone = normalise_phone(body.get("phone_number"))
        identifier, description = body.get("identifier"), body.get("description")
        network = body.get("network")
        if (
            amount is None
            or phone is None
            or not isinstance(identifier, str)
            or not identifier.strip()
            or not isinstance(description, str)
            or network not in NETWORKS
        ):
            return {"status": PAY_BAD_PARAMS}
        if identifier in self.by_identifier:
            return {"status": PAY_DUPLICATE}
        tx = SimTransaction(
            tx_reference=next(self._tx_refs),
            identifier=identifier,
            amount=amount,
            phone_number=phone,
            network=str(network),
            description=description,
            outcome=self.config.outcome,
            created_at=self.config.clock.now(),
            created_mono=time.monotonic(),
        )
        self.by_ref[tx.tx_reference] = tx
        self.by_identifier[identifier] = tx
        self.record(tx)
        # phone numbers stay out of logs, simulated ones too: the last 2 digits tell apart
        log.info("paygate sim: tx %d %s %d XOF from ...%s, customer will %s",
                 tx.tx_reference, identifier, amount, str(tx.phone_number)[-2:], tx.outcome)
        self.spawn(self.customer(tx))
        return {"tx_reference": tx.tx_reference, "status": PAY_OK}

    async def customer(self, tx: SimTransaction) -> None:
        if tx.outcome == "never":
            return
        await asyncio.sleep(self.config.approve_after_s)
        if self.refresh(tx).state != PENDING:
            return
        await self.settle(tx, "approve" if tx.outcome == "approve" else "decline")

    def is_pending(self, tx: SimTransaction) -> bool:
        return self.refresh(tx).state == PENDING

    async def approve(self, tx: SimTransaction) -> None:
        await self.settle(tx, "approve")

    async def settle(self, tx: SimTransaction, outcome: Literal["approve", "decline", "expire"]
                     ) -> None:
        tx.settled_perf = time.perf_counter()
        if outcome == "approve":
            tx.state = PAID
            tx.paid_at = self.config.clock.now()
            tx.payment_reference = str(10**10 + secrets.randbelow(9 * 10**10))
        elif outcome == "decline":
            tx.state = CANCELLED
        else:
            tx.state = EXPIRED
        self.record(tx)
        log.info("paygate sim: tx %d %s", tx.tx_reference, STATE_NAMES[tx.state])
        if tx.state == PAID or (tx.state == CANCELLED and self.config.callback_on_decline):
            self.spawn(self.deliver_all(tx))

    async def deliver_all(self, tx: SimTransaction) -> None:
        """The callback to the URL set in the merchant dashboard (with its copies)."""
        url = self.config.callback_url
        if not url:
            log.info("paygate sim: no callback URL, tx %d not announced", tx.tx_reference)
            return
        body = tx.callback_body()
        if self.config.format_drift:
            body = drift_body(body, self.rng)
        await self.announce(tx, "POST", url, body)


PayGateHandle = server.SimServerHandle[PayGateSim]


# --- the merchant API --------------------------------------------------------------------


def _error(http_status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse({"error_code": code, "error_message": message}, status_code=http_status)


def _bad_params() -> JSONResponse:
    return _error(400, 400, "Paramètres invalides.")


async def _read_body(request: Request) -> dict[str, Any] | None:
    """JSON or form body as a dict; None if it is neither."""
    raw = await request.body()
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        try:
            return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


async def _status_request(sim: PayGateSim, request: Request) -> dict[str, Any] | JSONResponse:
    """What both status endpoints check first: injected faults, a body, the token."""
    fault = await sim.status_fault()
    if fault is not None:
        return fault
    body = await _read_body(request)
    if body is None:
        return _bad_params()
    if not sim.authorised(body):
        return _error(401, 401, "Jeton d'authentification invalide.")
    return body


def _status_of(sim: PayGateSim, tx: SimTransaction | None) -> dict[str, Any] | JSONResponse:
    if tx is None:
        return _error(sim.config.not_found_http_status, 403, "Transaction non trouvée.")
    return sim.refresh(tx).status_body()


def _merchant_api(sim: PayGateSim) -> APIRouter:
    """``/api/v1/pay`` and the two status endpoints, as PayGate answers them."""
    router = APIRouter()

    @router.post("/api/v1/pay")
    async def pay(request: Request) -> dict[str, Any]:
        body = await _read_body(request)
        if body is None:
            return {"status": PAY_BAD_PARAMS}
        return sim.create(body)

    @router.post("/api/v1/status", response_model=None)
    async def status_v1(request: Request) -> dict[str, Any] | JSONResponse:
        body = await _status_request(sim, request)
        if isinstance(body, JSONResponse):
            return body
        ref = body.get("tx_reference")
        if isinstance(ref, str) and ref.isdigit():
            ref = int(ref)
        if not isinstance(ref, int) or isinstance(ref, bool):
            return _bad_params()
        return _status_of(sim, sim.by_ref.get(ref))

    @router.post("/api/v2/status", response_model=None)
    async def status_v2(request: Request) -> dict[str, Any] | JSONResponse:
        body = await _status_request(sim, request)
        if isinstance(body, JSONResponse):
            return body
        identifier = body.get("identifier")
        if not isinstance(identifier, str) or not identifier:
            return _bad_params()
        return _status_of(sim, sim.by_identifier.get(identifier))

    return router


# --- simulator controls ------------------------------------------------------------------


def _pending_tx(sim: PayGateSim, req: _Settle) -> SimTransaction:
    """The transaction ``/_sim/settle`` names, which must still be pending."""
    if req.tx_reference is not None:
        tx = sim.by_ref.get(req.tx_reference)
    elif req.identifier is not None:
        tx = sim.by_identifier.get(req.identifier)
    else:
        raise HTTPException(400, "give tx_reference or identifier")
    if tx is None:
        raise HTTPException(404, "no such transaction")
    if sim.refresh(tx).state != PENDING:
        raise HTTPException(409, f"transaction is {STATE_NAMES[tx.state]}, not pending")
    return tx


def _sim_controls(sim: PayGateSim) -> APIRouter:
    """PayGate's own ``/_sim/`` endpoints: transactions, config, settle, forged callbacks."""
    router = APIRouter(prefix="/_sim")

    @router.get("/transactions")
    async def transactions() -> list[dict[str, Any]]:
        return [sim.refresh(tx).sim_view() for tx in sim.by_ref.values()]

    @router.get("/config")
    async def get_config() -> dict[str, Any]:
        return sim.config_view()

    @router.post("/settle")
    async def settle(req: _Settle) -> dict[str, Any]:
        tx = _pending_tx(sim, req)
        await sim.settle(tx, req.outcome)
        return tx.sim_view()

    @router.post("/callback")
    async def send_callback(request: Request, url: str | None = None) -> dict[str, Any]:
        target = url or sim.config.callback_url
        if not target:
            raise HTTPException(409, "no callback URL configured")
        raw = await request.body()
        try:
            resp = await sim.http().post(
                target, content=raw, headers={"content-type": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise HTTPException(502, f"callback failed: {type(exc).__name__}: {exc}") from exc
        return {"url": target, "status_code": resp.status_code, "body": resp.text[:2000]}

    return router


# --- the simulator -----------------------------------------------------------------------


SIMULATOR = server.Simulator(
    title="PayGate Global simulator", state=PayGateSim, routes=(_merchant_api, _sim_controls),
    patch_model=_ConfigPatch, default_port=8090)
create_app = SIMULATOR.create_app
serve = SIMULATOR.serve
run_in_thread = SIMULATOR.run_in_thread
