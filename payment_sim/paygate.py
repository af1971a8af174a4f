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
import contextlib
import dataclasses
import hmac
import itertools
import json
import logging
import random
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qsl

import httpx
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from cizo.clock import Clock, SystemClock
from payment_sim._common import CallbackFailed, FaultPatch, PayPending, SimCore

log = logging.getLogger(__name__)

Outcome = Literal["approve", "decline", "never"]

PAID, PENDING, EXPIRED, CANCELLED = 0, 2, 4, 6
STATE_NAMES = {PAID: "paid", PENDING: "pending", EXPIRED: "expired", CANCELLED: "cancelled"}
PAY_OK, PAY_BAD_TOKEN, PAY_BAD_PARAMS, PAY_DUPLICATE = 0, 2, 4, 6
NETWORKS = {"FLOOZ": "FLOOZ", "TMONEY": "T-Money"}  # request value -> payment_method


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


@dataclass
class SimTransaction:
    tx_reference: int
    identifier: str
    amount: int
    phone_number: str  # 228XXXXXXXX
    network: str
    description: str
    outcome: Outcome
    created_at: float  # clock time
    created_mono: float
    state: int = PENDING
    paid_at: float | None = None
    payment_reference: str = ""
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    settled_perf: float | None = None  # perf_counter when the customer paid (benchmarks)

    @property
    def payment_method(self) -> str:
        return NETWORKS[self.network]

    def status_body(self) -> dict[str, Any]:
        return {
            "tx_reference": self.tx_reference,
            "identifier": self.identifier,
            "amount": self.amount,
            "payment_reference": self.payment_reference,
            "payment_method": self.payment_method,
            "datetime": iso_ms(self.paid_at if self.paid_at is not None else self.created_at),
            "phone_number": self.phone_number,
            "status": self.state,
        }

    def callback_body(self) -> dict[str, Any]:
        body = self.status_body()
        del body["status"]
        return body

    def sim_view(self) -> dict[str, Any]:
        return {
            **self.status_body(),
            "state": STATE_NAMES[self.state],
            "network": self.network,
            "description": self.description,
            "outcome": self.outcome,
            "callbacks_delivered": sum(1 for c in self.callbacks if c["ok"]),
            "callback_attempts": list(self.callbacks),
        }


def drift_body(body: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """The format drift seen in the wild: tx_reference as string, 'TMONEY' for 'T-Money',
    phone without 228 or with +228, dates without milliseconds."""
    out = dict(body)
    if rng.random() < 0.5:
        out["tx_reference"] = str(out["tx_reference"])
    if out.get("payment_method") == "T-Money" and rng.random() < 0.5:
        out["payment_method"] = "TMONEY"
    phone = str(out.get("phone_number", ""))
    roll = rng.random()
    if roll < 0.33 and phone.startswith("228"):
        out["phone_number"] = phone[3:]
    elif roll < 0.66 and phone.startswith("228"):
        out["phone_number"] = "+" + phone
    if rng.random() < 0.5 and isinstance(out.get("datetime"), str):
        out["datetime"] = out["datetime"][:19] + "Z"
    return out


def iso_ms(t: float) -> str:
    """``2025-09-09T13:03:31.000Z``, as PayGate writes times."""
    dt = datetime.fromtimestamp(t, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def normalise_phone(value: Any) -> str | None:
    """8-digit Togolese number, with or without 228 / +228 / 00228 -> ``228XXXXXXXX``."""
    if not isinstance(value, str | int) or isinstance(value, bool):
        return None
    digits = str(value).strip().replace(" ", "")
    for prefix in ("+228", "00228"):
        if digits.startswith(prefix):
            digits = "228" + digits[len(prefix):]
    if len(digits) == 8 and digits.isdigit():
        return "228" + digits
    if len(digits) == 11 and digits.isdigit() and digits.startswith("228"):
        return digits
    return None


def _whole_amount(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.isdigit() and value.isascii():
        return int(value) if int(value) > 0 else None
    return None


class _ConfigPatch(FaultPatch):
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


class PayGateSim(SimCore):
    """The simulator's state; lives on ``app.state.paygate``. Event-loop thread only."""

    name = "paygate sim"
    config: PayGateSimConfig

    def __init__(self, config: PayGateSimConfig) -> None:
        self.config = dataclasses.replace(config)
        first = config.first_tx_reference
        if first is None:
            first = int(time.time() * 1000) % 10**13
        self._tx_refs = itertools.count(first)
        self.by_ref: dict[int, SimTransaction] = {}
        self.by_identifier: dict[str, SimTransaction] = {}
        super().__init__(config.seed)

    def fault_response(self) -> JSONResponse:
        return JSONResponse({"message": "Internal Server Error"},
                            status_code=self.rng.choice((500, 502, 503)))

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
        token = body.get("auth_token")
        if not isinstance(token, str) or not hmac.compare_digest(
            token.encode(), self.config.auth_token.encode()
        ):
            return {"status": PAY_BAD_TOKEN}
        amount = _whole_amount(body.get("amount"))
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
        # never a phone number in logs, not even a simulated one (issue 8): last 2 digits
        log.info("paygate sim: tx %d %s %d XOF from ...%s, customer will %s",
                 tx.tx_reference, identifier, amount, str(tx.phone_number)[-2:], tx.outcome)
        if tx.outcome != "never":
            self.spawn(self._customer(tx, self.config.approve_after_s))
        return {"tx_reference": tx.tx_reference, "status": PAY_OK}

    async def _customer(self, tx: SimTransaction, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
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
        log.info("paygate sim: tx %d %s", tx.tx_reference, STATE_NAMES[tx.state])
        if tx.state == PAID or (tx.state == CANCELLED and self.config.callback_on_decline):
            self.spawn(self.deliver_all(tx))

    # --- callbacks ---------------------------------------------------------------------

    async def deliver_all(self, tx: SimTransaction) -> None:
        url = self.config.callback_url
        if not url:
            log.info("paygate sim: no callback URL, tx %d not announced", tx.tx_reference)
            return
        body = tx.callback_body()
        if self.config.format_drift:
            body = drift_body(body, self.rng)
        copies = 1 + self.config.duplicate_callbacks
        jobs = [self._deliver(tx, url, body, copy) for copy in range(copies)]
        if self.rng.random() < self.config.redeliver_fraction:
            jobs.append(self._redeliver(tx, url, body, copies))
        await asyncio.gather(*jobs)

    async def _redeliver(self, tx: SimTransaction, url: str, body: dict[str, Any], copy: int
                         ) -> None:
        """A late, unordered copy: real providers re-send what they think was missed."""
        await asyncio.sleep(self.rng.uniform(0, self.config.redeliver_delay_s))
        await self._deliver(tx, url, body, copy)

    async def _deliver(self, tx: SimTransaction, url: str, body: dict[str, Any], copy: int
                       ) -> None:
        retries = self.config.callback_retries
        for attempt in range(retries + 1):
            if attempt:
                await asyncio.sleep(self.config.retry_backoff_s * 2 ** (attempt - 1))
            record: dict[str, Any] = {"copy": copy, "attempt": attempt, "at": time.time(),
                                      "status_code": None, "error": None, "ok": False}
            tx.callbacks.append(record)
            t0 = time.perf_counter()
            try:
                status_code = await self.send_callback("POST", url, json=body)
            except CallbackFailed as exc:
                record["error"] = str(exc)
                log.warning("paygate sim: callback tx %d copy %d attempt %d failed: %s",
                            tx.tx_reference, copy, attempt, record["error"])
                continue
            record["status_code"] = status_code
            record["latency_s"] = time.perf_counter() - t0
            record["done_perf"] = time.perf_counter()
            if 200 <= status_code < 300:
                record["ok"] = True
                return
            log.warning("paygate sim: callback tx %d copy %d attempt %d got HTTP %d",
                        tx.tx_reference, copy, attempt, status_code)
        log.error("paygate sim: gave up delivering callback for tx %d (copy %d) after %d tries",
                  tx.tx_reference, copy, retries + 1)


def _error(http_status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse({"error_code": code, "error_message": message}, status_code=http_status)


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


def create_app(config: PayGateSimConfig) -> FastAPI:
    """The simulator as an ASGI app; its state is ``app.state.paygate`` (a ``PayGateSim``)."""
    sim = PayGateSim(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await sim.aclose()

    app = FastAPI(title="PayGate Global simulator", lifespan=lifespan)
    app.state.paygate = sim

    def authorised(body: dict[str, Any]) -> bool:
        token = body.get("auth_token")
        return isinstance(token, str) and hmac.compare_digest(
            token.encode(), sim.config.auth_token.encode()
        )

    def not_found() -> JSONResponse:
        return _error(sim.config.not_found_http_status, 403, "Transaction non trouvée.")

    @app.post("/api/v1/pay")
    async def pay(request: Request) -> dict[str, Any]:
        body = await _read_body(request)
        if body is None:
            return {"status": PAY_BAD_PARAMS}
        return sim.create(body)

    async def status_request(request: Request) -> dict[str, Any] | JSONResponse:
        """What both status endpoints check first: injected faults, a body, the token."""
        fault = await sim.status_fault()
        if fault is not None:
            return fault
        body = await _read_body(request)
        if body is None:
            return _error(400, 400, "Paramètres invalides.")
        if not authorised(body):
            return _error(401, 401, "Jeton d'authentification invalide.")
        return body

    @app.post("/api/v1/status", response_model=None)
    async def status_v1(request: Request) -> dict[str, Any] | JSONResponse:
        body = await status_request(request)
        if isinstance(body, JSONResponse):
            return body
        ref = body.get("tx_reference")
        if isinstance(ref, str) and ref.isdigit():
            ref = int(ref)
        if not isinstance(ref, int) or isinstance(ref, bool):
            return _error(400, 400, "Paramètres invalides.")
        tx = sim.by_ref.get(ref)
        return sim.refresh(tx).status_body() if tx else not_found()

    @app.post("/api/v2/status", response_model=None)
    async def status_v2(request: Request) -> dict[str, Any] | JSONResponse:
        body = await status_request(request)
        if isinstance(body, JSONResponse):
            return body
        identifier = body.get("identifier")
        if not isinstance(identifier, str) or not identifier:
            return _error(400, 400, "Paramètres invalides.")
        tx = sim.by_identifier.get(identifier)
        return sim.refresh(tx).status_body() if tx else not_found()

    # --- simulator controls --------------------------------------------------------

    def config_view() -> dict[str, Any]:
        c = sim.config
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

    @app.get("/_sim/transactions")
    async def transactions() -> list[dict[str, Any]]:
        return [sim.refresh(tx).sim_view() for tx in sim.by_ref.values()]

    @app.post("/_sim/config")
    async def set_config(patch: _ConfigPatch) -> dict[str, Any]:
        changes = patch.model_dump(exclude_unset=True)
        sim.config = dataclasses.replace(sim.config, **changes)
        log.info("paygate sim: config changed: %s", sorted(changes))
        return config_view()

    @app.get("/_sim/config")
    async def get_config() -> dict[str, Any]:
        return config_view()

    @app.post("/_sim/pay_pending")
    async def pay_pending(req: PayPending) -> dict[str, Any]:
        return {"started": await sim.pay_pending(req.rate_per_s, req.count)}

    @app.post("/_sim/settle")
    async def settle(req: _Settle) -> dict[str, Any]:
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
        await sim.settle(tx, req.outcome)
        return tx.sim_view()

    @app.post("/_sim/callback")
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

    return app


# --- running it --------------------------------------------------------------------------


def serve(config: PayGateSimConfig, host: str = "127.0.0.1", port: int = 8090) -> None:
    """Run the simulator in the foreground (blocks until interrupted)."""
    uvicorn.run(create_app(config), host=host, port=port, ws="none", log_config=None)


@dataclass
class SimServerHandle:
    """A simulator running in a background thread (for tests and the local stack)."""

    app: FastAPI
    server: uvicorn.Server
    thread: threading.Thread
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def sim(self) -> PayGateSim:
        sim: PayGateSim = self.app.state.paygate
        return sim

    @property
    def state(self) -> Any:
        """The app's state object (``.paygate`` or ``.momo``)."""
        return self.app.state

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            raise RuntimeError(f"paygate simulator on port {self.port} did not stop")


def run_in_thread(config: PayGateSimConfig, port: int = 0, host: str = "127.0.0.1",
                  timeout_s: float = 10.0) -> SimServerHandle:
    """Start the simulator on ``port`` (0: any free port) and wait until it serves."""
    return serve_app_in_thread(create_app(config), port=port, host=host, timeout_s=timeout_s)


def serve_app_in_thread(app: FastAPI, port: int = 0, host: str = "127.0.0.1",
                        timeout_s: float = 10.0) -> SimServerHandle:
    """Any simulator app (PayGate, MoMo) on a real uvicorn server in a background thread."""
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say TCP,
    # and without it keep-alive answers wait ~40 ms for the client's delayed ACK
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound_port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(
        app, host=host, port=bound_port, ws="none", log_level="warning", access_log=False,
        lifespan="on",
    ))
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # SystemExit from uvicorn included: reported below
            failure.append(exc)
            log.exception("paygate simulator thread died")
        finally:
            sock.close()

    thread = threading.Thread(target=run, name=f"paygate-sim-{bound_port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"paygate simulator did not start on port {bound_port}: {failure}")
        time.sleep(0.02)
    log.info("paygate simulator listening on http://%s:%d", host, bound_port)
    return SimServerHandle(app, server, thread, host, bound_port)
