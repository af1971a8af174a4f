"""What both provider simulators share: seeded randomness, background tasks, the status
API's injected latency and faults, and the client that delivers their callbacks."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine
from typing import Any, Protocol

import aiohttp
import httpx
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
    """The ``/_sim/config`` fields both simulators share (faults, latency, re-deliveries)."""

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
    status_latency_s: float
    status_timeout_rate: float
    status_hang_s: float
    status_error_rate: float
    callback_timeout_s: float


class SimCore:
    """Base of PayGateSim and MoMoSim; ``fault_response`` is each provider's own 5xx."""

    name = "sim"
    config: FaultConfig  # set by the subclass; the control endpoints may replace it
    by_ref: dict[Any, Any]  # the subclass's transactions, oldest first

    def __init__(self, seed: int | None) -> None:
        self.rng = random.Random(seed)
        self.status_calls = 0
        self.status_faults = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        self._session: aiohttp.ClientSession | None = None

    def fault_response(self) -> JSONResponse:
        raise NotImplementedError

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

    # --- customers paying -------------------------------------------------------------

    def is_pending(self, tx: Any) -> bool:
        raise NotImplementedError

    async def approve(self, tx: Any) -> None:
        raise NotImplementedError

    async def pay_pending(self, rate_per_s: float, count: int) -> int:
        """Simulated customers approve ``count`` pending payments, oldest first, at a rate."""
        todo = [tx for tx in self.by_ref.values() if self.is_pending(tx)][:count]
        self.spawn(self._drive(todo, rate_per_s))
        return len(todo)

    async def _drive(self, todo: list[Any], rate_per_s: float) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, tx in enumerate(todo):
            delay = start + i / rate_per_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.is_pending(tx):
                await self.approve(tx)

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
