"""What both provider simulators share: the fault model (status latency, 5xx, hanging status
calls; callbacks retried, duplicated and re-delivered out of order), simulated customers
approving pending payments at a rate, the ``/_sim/`` controls for both, and running an app
on a real uvicorn server (foreground, or in a background thread for tests and benchmarks).

The provider modules (``paygate.py``, ``momo.py``) keep only what is theirs: routes,
payloads and verdicts, put together as a ``Simulator`` (whose ``create_app``, ``serve`` and
``run_in_thread`` they export).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import aiohttp
import httpx
import uvicorn
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

# Callbacks in flight at once per simulator. They go through aiohttp: httpx's async pool
# re-scans every queued request against every connection whenever one frees up, which cost
# a whole core at 200 callbacks/s in bench/payments.py; aiohttp's connector hands a freed
# connection to the next waiter directly.
MAX_CALLBACKS_IN_FLIGHT = 64


class PayPending(BaseModel):
    """``POST /_sim/pay_pending``: customers approve the pending payments at a rate."""

    model_config = ConfigDict(extra="forbid")

    rate_per_s: float = Field(gt=0)
    count: int = Field(ge=0)


class FaultPatch(BaseModel):
    """The ``/_sim/config`` fields both simulators share (faults, latency, re-deliveries);
    each provider extends it with its own."""

    model_config = ConfigDict(extra="forbid")

    approve_after_s: float | None = Field(default=None, ge=0)
    duplicate_callbacks: int | None = Field(default=None, ge=0)
    redeliver_fraction: float | None = Field(default=None, ge=0, le=1)
    status_latency_s: float | None = Field(default=None, ge=0)
    status_error_rate: float | None = Field(default=None, ge=0, le=1)
    status_timeout_rate: float | None = Field(default=None, ge=0, le=1)
    status_hang_s: float | None = Field(default=None, ge=0)


class CallbackFailed(Exception):
    """A callback that got no HTTP answer (refused, reset, timed out)."""


class FaultConfig(Protocol):
    """The fields of a provider's config dataclass the fault model reads."""

    __dataclass_fields__: ClassVar[dict[str, Any]]
    status_latency_s: float
    status_timeout_rate: float
    status_hang_s: float
    status_error_rate: float
    callback_timeout_s: float
    callback_retries: int
    retry_backoff_s: float
    duplicate_callbacks: int
    redeliver_fraction: float
    redeliver_delay_s: float


class Announced(Protocol):
    """A provider transaction: every callback attempt is recorded on it."""

    callbacks: list[dict[str, Any]]


TxT = TypeVar("TxT", bound=Announced)


class SimCore(Generic[TxT]):
    """Base of PayGateSim and MoMoSim: the fault model, callbacks and customers. Event-loop
    thread only. Each provider says what pending, approving and a 5xx answer mean for it."""

    name = "sim"
    config: FaultConfig  # set by the subclass; ``/_sim/config`` replaces it
    by_ref: dict[Any, TxT]  # the subclass's transactions, oldest first

    def __init__(self, seed: int | None, journal: Path | None = None) -> None:
        self.rng = random.Random(seed)
        self.status_calls = 0
        self.status_faults = 0
        self.journal = journal
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        self._session: aiohttp.ClientSession | None = None

    # --- the journal: a provider does not forget a payment when its process dies -----

    def record(self, tx: TxT) -> None:
        """Append the transaction's state to the journal (a line per change; the last one
        wins on restore). Written before the answer or callback that reveals the change,
        so a killed simulator never forgets a payment a merchant has seen."""
        if self.journal is None:
            return
        state = {k: v for k, v in dataclasses.asdict(tx).items()  # type: ignore[call-overload]
                 if k not in ("callbacks", "settled_perf")}
        with self.journal.open("a") as fh:
            fh.write(json.dumps(state) + "\n")

    def journalled(self) -> list[dict[str, Any]]:
        """Each journalled transaction's last state, in first-seen order (a torn last line,
        from a kill in mid-write, is skipped)."""
        if self.journal is None or not self.journal.exists():
            return []
        last: dict[str, dict[str, Any]] = {}
        for line in self.journal.read_text().splitlines():
            with contextlib.suppress(ValueError):
                state = json.loads(line)
                last[str(state[self.journal_key])] = state
        return list(last.values())

    journal_key = "reference_id"  # the field naming a transaction in the journal

    def restore(self) -> None:
        """Reload the journal (the provider's database) after a restart; pending payments'
        customers are waiting on their phones again."""
        raise NotImplementedError

    def resume_customers(self) -> None:
        """After a restart (on the event loop): the pending payments' customers answer."""
        for tx in self.by_ref.values():
            if self.is_pending(tx):
                self.spawn(self.customer(tx))

    async def customer(self, tx: TxT) -> None:
        """The customer answers a pending payment on their phone (as the config says)."""
        raise NotImplementedError

    # --- what each provider defines --------------------------------------------------

    def fault_response(self) -> JSONResponse:
        """The provider's own answer to a failed status call (HTTP 5xx)."""
        raise NotImplementedError

    def tx_label(self, tx: TxT) -> str:
        """How logs name a transaction."""
        raise NotImplementedError

    def config_view(self, changed: Mapping[str, Any]) -> dict[str, Any]:
        """What ``POST /_sim/config`` answers after applying ``changed``."""
        raise NotImplementedError

    def is_pending(self, tx: TxT) -> bool:
        raise NotImplementedError

    async def approve(self, tx: TxT) -> None:
        raise NotImplementedError

    # --- the status API's faults ------------------------------------------------------

    async def status_fault(self) -> JSONResponse | None:
        """Latency and injected failures of the status API (None: answer normally)."""
        self.status_calls += 1
        c = self.config
        if c.status_latency_s:
            await asyncio.sleep(c.status_latency_s)
        roll = self.rng.random()
        if roll < c.status_timeout_rate:
            self.status_faults += 1
            await asyncio.sleep(c.status_hang_s)
        elif roll < c.status_timeout_rate + c.status_error_rate:
            self.status_faults += 1
            return self.fault_response()
        return None

    def reconfigure(self, changes: Mapping[str, Any]) -> None:
        self.config = dataclasses.replace(self.config, **changes)
        log.info("%s: config changed: %s", self.name, sorted(changes))

    # --- callbacks --------------------------------------------------------------------

    def http(self) -> httpx.AsyncClient:
        """A client for one-off requests (the test-only /_sim/callback endpoint)."""
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.config.callback_timeout_s)
        return self._http

    async def send_callback(self, method: str, url: str, *, json: Any) -> int:
        """POST/PUT one callback; its HTTP status, or CallbackFailed (network, timeout)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=MAX_CALLBACKS_IN_FLIGHT),
                timeout=aiohttp.ClientTimeout(total=self.config.callback_timeout_s))
        try:
            async with self._session.request(method, url, json=json) as resp:
                await resp.read()
                return resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise CallbackFailed(f"{type(exc).__name__}: {exc}") from exc

    async def announce(self, tx: TxT, method: str, url: str, body: dict[str, Any]) -> None:
        """Deliver ``body``, plus ``duplicate_callbacks`` identical copies sent concurrently
        (the nasty case for a merchant's idempotency), plus now and then
        (``redeliver_fraction``) a late copy: real providers re-send what they think was
        missed, out of order."""
        copies = 1 + self.config.duplicate_callbacks
        jobs = [self._deliver(tx, method, url, body, copy) for copy in range(copies)]
        if self.rng.random() < self.config.redeliver_fraction:
            jobs.append(self._redeliver(tx, method, url, body, copies))
        await asyncio.gather(*jobs)

    async def _redeliver(self, tx: TxT, method: str, url: str, body: dict[str, Any],
                         copy: int) -> None:
        await asyncio.sleep(self.rng.uniform(0, self.config.redeliver_delay_s))
        await self._deliver(tx, method, url, body, copy)

    async def _deliver(self, tx: TxT, method: str, url: str, body: dict[str, Any],
                       copy: int) -> None:
        """One copy, retried ``callback_retries`` times with exponential backoff after a
        non-2xx answer or no answer; every attempt is recorded on ``tx.callbacks``."""
        retries = self.config.callback_retries
        label = self.tx_label(tx)
        for attempt in range(retries + 1):
            if attempt:
                await asyncio.sleep(self.config.retry_backoff_s * 2 ** (attempt - 1))
            record: dict[str, Any] = {"copy": copy, "attempt": attempt, "at": time.time(),
                                      "status_code": None, "error": None, "ok": False,
                                      "latency_s": None}
            tx.callbacks.append(record)
            t0 = time.perf_counter()
            try:
                status_code = await self.send_callback(method, url, json=body)
            except CallbackFailed as exc:
                record["error"] = str(exc)
                log.warning("%s: callback %s copy %d attempt %d failed: %s",
                            self.name, label, copy, attempt, record["error"])
                continue
            record["status_code"] = status_code
            record["latency_s"] = time.perf_counter() - t0
            record["done_perf"] = time.perf_counter()
            if 200 <= status_code < 300:
                record["ok"] = True
                return
            log.warning("%s: callback %s copy %d attempt %d got HTTP %d",
                        self.name, label, copy, attempt, status_code)
        log.error("%s: gave up delivering callback for %s (copy %d) after %d tries",
                  self.name, label, copy, retries + 1)

    # --- customers paying -------------------------------------------------------------

    async def pay_pending(self, rate_per_s: float, count: int) -> int:
        """Simulated customers approve ``count`` pending payments, oldest first, at a rate."""
        todo = [tx for tx in self.by_ref.values() if self.is_pending(tx)][:count]
        self.spawn(self._drive(todo, rate_per_s))
        return len(todo)

    async def _drive(self, todo: list[TxT], rate_per_s: float) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, tx in enumerate(todo):
            delay = start + i / rate_per_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.is_pending(tx):
                await self.approve(tx)

    # --- background tasks -------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s task failed", self.name, exc_info=task.exception())

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None


SimT = TypeVar("SimT", bound=SimCore[Any])
ConfigT = TypeVar("ConfigT")


# --- the app ---------------------------------------------------------------------------


def control_routes(sim: SimCore[Any], patch_model: type[FaultPatch]) -> APIRouter:
    """``POST /_sim/config`` (the fault model and the customers' behaviour, for later
    payments) and ``POST /_sim/pay_pending``."""
    router = APIRouter(prefix="/_sim")

    async def set_config(patch: FaultPatch) -> dict[str, Any]:
        changes = patch.model_dump(exclude_unset=True)
        sim.reconfigure(changes)
        return sim.config_view(changes)

    # FastAPI validates the body against this annotation: the provider's own model, so
    # its extra fields are accepted and unknown ones refused
    set_config.__annotations__["patch"] = patch_model
    router.add_api_route("/config", set_config, methods=["POST"])

    @router.post("/pay_pending")
    async def pay_pending(req: PayPending) -> dict[str, Any]:
        return {"started": await sim.pay_pending(req.rate_per_s, req.count)}

    return router


# --- running it --------------------------------------------------------------------------


@dataclass
class SimServerHandle(Generic[SimT]):
    """A simulator running in a background thread (for tests and the local stack)."""

    app: FastAPI
    sim: SimT
    server: uvicorn.Server
    thread: threading.Thread
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            raise RuntimeError(f"{self.sim.name} on port {self.port} did not stop")


def _listening_socket(host: str, port: int) -> socket.socket:
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY only on sockets that say TCP,
    # and without it keep-alive answers wait ~40 ms for the client's delayed ACK
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def serve_in_thread(app: FastAPI, sim: SimT, port: int = 0, host: str = "127.0.0.1",
                    timeout_s: float = 10.0) -> SimServerHandle[SimT]:
    """``app`` (serving ``sim``) on a real uvicorn server in a background thread, on
    ``port`` (0: any free port); returns once it serves."""
    sock = _listening_socket(host, port)
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
            log.exception("%s thread died", sim.name)
        finally:
            sock.close()

    thread = threading.Thread(target=run, name=f"{sim.name.replace(' ', '-')}-{bound_port}",
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"{sim.name} did not start on port {bound_port}: {failure}")
        time.sleep(0.02)
    log.info("%s listening on http://%s:%d", sim.name, host, bound_port)
    return SimServerHandle(app, sim, server, thread, host, bound_port)


@dataclass(frozen=True)
class Simulator(Generic[ConfigT, SimT]):
    """One provider's simulator: its state from its config, its own routes (besides the
    shared ``control_routes``), its ``/_sim/config`` fields."""

    title: str
    state: Callable[[ConfigT], SimT]
    routes: tuple[Callable[[SimT], APIRouter], ...]  # the provider's own route groups
    patch_model: type[FaultPatch]
    default_port: int

    def app(self, sim: SimT) -> FastAPI:
        """The app serving ``sim`` (``app.state.sim``); its background tasks and clients are
        closed when the app shuts down."""

        @contextlib.asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            sim.restore()
            sim.resume_customers()
            yield
            await sim.aclose()

        app = FastAPI(title=self.title, lifespan=lifespan)
        app.state.sim = sim
        for routes in self.routes:
            app.include_router(routes(sim))
        app.include_router(control_routes(sim, self.patch_model))
        return app

    def create_app(self, config: ConfigT) -> FastAPI:
        """The simulator as an ASGI app; its state is ``app.state.sim``."""
        return self.app(self.state(config))

    def serve(self, config: ConfigT, host: str = "127.0.0.1", port: int | None = None
              ) -> None:
        """Run the simulator in the foreground (blocks until interrupted)."""
        uvicorn.run(self.create_app(config), host=host,
                    port=self.default_port if port is None else port, ws="none",
                    log_config=None)

    def run_in_thread(self, config: ConfigT, port: int = 0, host: str = "127.0.0.1",
                      timeout_s: float = 10.0) -> SimServerHandle[SimT]:
        """Start the simulator on ``port`` (0: any free port) and wait until it serves;
        its state is ``handle.sim``."""
        sim = self.state(config)
        return serve_in_thread(self.app(sim), sim, port=port, host=host, timeout_s=timeout_s)
