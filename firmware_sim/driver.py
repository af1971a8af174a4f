"""Play a ``FleetPlan`` against real servers: every kit its own MQTT session, one event loop.

Each kit is one coroutine (``driven_kit.DrivenKit``, over ``firmware_sim.mqtt_async``: no
thread per kit). The customers pay and keypad customers get their codes through the control
API (``customers``); ``fleet_summary`` gives the figures. See docs/simulation.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from cizo.clock import Clock
from firmware_sim.clocks import AcceleratedClock, sleep_or_stop
from firmware_sim.customers import KeypadCustomers, PayingCustomers, PaymentOptions
from firmware_sim.driven_kit import DrivenKit, identity_for
from firmware_sim.fleet import load_identities
from firmware_sim.fleet_summary import FleetSummary, print_progress, summarise, summary_text
from firmware_sim.kit import KitIdentity
from firmware_sim.scenario import FleetPlan, build_plan, load_scenario

log = logging.getLogger(__name__)


class FleetDriver:
    """All kits of a plan on one event loop, plus the customers' payments."""

    def __init__(
        self,
        plan: FleetPlan,
        clock: Clock,
        *,
        host: str,
        port: int,
        identities: list[KitIdentity] | None = None,
        payments: PaymentOptions | None = None,
        ramp_s: float = 0.0,
        buffer_limit: int = 10_000,
        local_addr: tuple[str, int] | None = None,
        tls_ca: Path | None = None,
    ) -> None:
        self.plan = plan
        self.tls_ca = tls_ca
        self.clock = clock
        self.host, self.port = host, port
        self.payments = payments
        self.ramp_s = ramp_s
        self.buffer_limit = buffer_limit
        self.local_addr = local_addr
        self.reconnect_base_s = plan.scenario.network.reconnect_base_s
        self.reconnect_cap_s = plan.scenario.network.reconnect_cap_s
        self.sim_end: float | None = plan.scenario.end_ts
        self.kits = self._kits(identities)
        self.by_id = {k.kit_id: k for k in self.kits}
        self.keypad_kits = [k for k in self.kits if k.keypad is not None]
        self.keypads = KeypadCustomers(self.keypad_kits, payments, plan.scenario.keypad.source)
        self.payers = PayingCustomers(payments, self.kits, clock) \
            if payments is not None else None
        self.settling = False
        self.metrics_kits = [k for k in self.kits if k.metrics is not None]
        self.metrics_http: httpx.AsyncClient | None = None  # opened by start()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.pay_task: asyncio.Task[None] | None = None

    def _kits(self, identities: list[KitIdentity] | None) -> list[DrivenKit]:
        """One driven kit per planned kit: the n-th takes the n-th identity when given
        (and its kit id), else a deterministic one."""
        plan = self.plan
        if identities is not None and len(identities) < len(plan.kits):
            raise ValueError(f"{len(plan.kits)} kits planned, {len(identities)} identities given")
        kits = []
        for i, kp in enumerate(plan.kits):
            ident = identities[i] if identities is not None else identity_for(kp.kit_id,
                                                                              plan.seed)
            if ident.kit_id != kp.kit_id:
                kp = dataclasses.replace(kp, kit_id=ident.kit_id)
            kits.append(DrivenKit(kp, ident, self))
        return kits

    @property
    def payments_made(self) -> int:
        return self.payers.made if self.payers is not None else 0

    @property
    def payments_failed(self) -> int:
        return self.payers.failed if self.payers is not None else 0

    def request_stop(self) -> None:
        self._stop.set()

    def settle(self) -> None:
        """End of a run: customers type every code they hold now, without waiting, and kits
        cut off by an outage reconnect (used while the clock is paused to compare kits with
        their accounts)."""
        self.settling = True
        for k in self.keypad_kits:
            k.type_due_codes(self.clock.now())

    async def setup_keypads(self) -> None:
        """Keypad kits flagged keypad-only, their keypads in the state the server's token
        chain assumes (``customers.KeypadCustomers.setup``)."""
        await self.keypads.setup()

    async def start(self) -> None:
        if self.keypad_kits:
            await self.setup_keypads()
        if self.metrics_kits and self.metrics_http is None:
            if self.payments is None:
                log.warning("%d OpenPAYGO Metrics devices but no control API: they will "
                            "not report", len(self.metrics_kits))
            else:
                self.metrics_http = httpx.AsyncClient(base_url=self.payments.api_url,
                                                      timeout=30)
        self._tasks = [asyncio.create_task(k.run(self._stop)) for k in self.kits]
        if self.payers is not None:
            if self.keypad_kits:
                self._tasks.append(asyncio.create_task(self.keypads.read_codes(self._stop)))
            self.pay_task = asyncio.create_task(self.payers.run(self._stop))
            self._tasks.append(self.pay_task)

    async def run(self, *, progress: Callable[[FleetSummary], None] | None = None,
                  progress_every_s: float = 5.0) -> FleetSummary:
        """Run until the scenario's end (simulated) or ``request_stop()``; then stop cleanly."""
        await self.start()
        kit_tasks = self._tasks[: len(self.kits)]
        try:
            while not self._stop.is_set():
                done = await sleep_or_stop(self._stop, progress_every_s)
                if progress is not None:
                    progress(self.summary())
                if done or all(t.done() for t in kit_tasks):
                    break
        finally:
            await self.stop()
        return self.summary()

    async def stop(self) -> None:
        self._stop.set()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                log.error("kit task failed: %r", r)
        for i in range(0, len(self.kits), 500):
            await asyncio.gather(*(k.stop() for k in self.kits[i:i + 500]))
        if self.metrics_http is not None:
            await self.metrics_http.aclose()
            self.metrics_http = None

    @property
    def online(self) -> int:
        return sum(k.conn.connected for k in self.kits)

    def summary(self) -> FleetSummary:
        return summarise(self.kits, self.plan.scenario, self.clock.now(),
                         payments_made=self.payments_made,
                         payments_failed=self.payments_failed)


def run_scenario(settings: Any, scenario_path: Any, *, seed: int,
                 fleet_file: Any = None, api_key: str | None = None,
                 support_key: str | None = None,
                 progress_every_s: float = 5.0) -> FleetSummary:
    """``cizo sim --scenario FILE --seed N``: play a scenario until its end or Ctrl-C.

    Kits use the credentials of ``fleet_file`` when given (a provisioned fleet), else
    deterministic identities on an anonymous broker. Payments go through the control API
    at ``settings.api_base_url`` when an admin/finance ``api_key`` is given; keypad kits
    are flagged and answered with ``support_key`` (default ``api_key``) and read their codes
    from the control service's SMS file (``notify_file``) when the scenario says "receipt".
    """
    scenario = load_scenario(scenario_path)
    plan = build_plan(scenario, seed)
    identities = load_identities(fleet_file) if fleet_file is not None else None
    clock = AcceleratedClock(scenario.start_ts, scenario.speed)
    outbox = settings.notify_file or settings.data_dir / "notifications.jsonl"
    payments = PaymentOptions(settings.api_base_url, api_key, support_key=support_key,
                              outbox=Path(outbox)) if api_key else None

    async def main() -> FleetSummary:
        driver = FleetDriver(plan, clock, host=settings.mqtt_host, port=settings.mqtt_port,
                             identities=identities, payments=payments,
                             ramp_s=min(10.0, len(plan.kits) / 1000),
                             tls_ca=settings.mqtt_tls_ca)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, driver.request_stop)
        print(f"sim: scenario {scenario.name!r} seed {seed}: {len(plan.kits)} kits, "
              f"{scenario.days:g} simulated days at {scenario.speed:g}x "
              f"(a day in {86_400 / scenario.speed:.0f} s) -> {settings.mqtt_url}", flush=True)
        return await driver.run(progress=print_progress, progress_every_s=progress_every_s)

    summary = asyncio.run(main())
    print("\n" + summary_text(summary), flush=True)
    return summary
