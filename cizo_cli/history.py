"""``cizo up``'s first start: a simulated week of history before the fleet goes live.

The control service and the PayGate simulator run here, in this process, on an accelerated
clock that starts ``history_days`` before now and reaches now after about
``history_real_s`` real seconds. The simulated fleet (``firmware_sim.driver.FleetDriver``)
plays those days against them through the real paths: kits are provisioned through the API,
customers pay through PayGate and its callbacks, the control service sends its signed
commands and the kits ack them, and readings go over MQTT through the stack's bridge into
InfluxDB. Everything is dated by the clock, so ledger rows and readings lie in the past week
and the live services, on the wall clock, continue from them. See docs/architecture.md
("cizo up").
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import uvicorn

from cizo import services
from cizo.settings import Settings
from control.cli.words import say
from control.main import build_app
from firmware_sim.clocks import AcceleratedClock
from firmware_sim.customers import PaymentOptions
from firmware_sim.driver import FleetDriver
from firmware_sim.fleet import load_identities
from firmware_sim.fleet_summary import FleetSummary
from firmware_sim.kit import KitIdentity
from firmware_sim.scenario import NetworkSpec, PlanSpec, Scenario, build_plan
from payment_sim.paygate import PayGateSimConfig, run_in_thread
from payment_sim.paygate_wire import PAID, PENDING

log = logging.getLogger(__name__)

DAY_S = 86_400.0
SEED = 7
# the control service's timings on a clock running ~20,000 times faster than the wall's:
# a sweep every real 0.5 s (about three hours simulated), a command re-sent after 6 h
# simulated
SWEEP_INTERVAL_S = 0.5
RESEND_AFTER_S = 6 * 3600.0


@dataclass(frozen=True)
class HistoryOptions:
    """The week's size and speed (from cizo/settings.py: ``history_*``)."""

    days: float
    real_s: float
    telemetry_interval_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> HistoryOptions:
        return cls(settings.history_days, settings.history_real_s,
                   settings.history_telemetry_interval_s)

    @property
    def speed(self) -> float:
        return self.days * DAY_S / self.real_s


def scenario(opts: HistoryOptions, kits: int, plan: PlanSpec, now: float) -> Scenario:
    """The week as a firmware-simulator scenario ending at ``now``: the default mix of
    customers (daily, weekly, late, stopping, early, never), no link drops, and about one
    kit in twenty bypassed (load while locked), so the alerts table has an anomaly too."""
    return Scenario(
        name="history", kits=kits, kit_id_prefix="SIM",
        start=datetime.fromtimestamp(now - opts.days * DAY_S, UTC), days=opts.days,
        speed=opts.speed, telemetry_interval_s=opts.telemetry_interval_s, keepalive_s=60,
        drift_ppm=0.0, plan=plan, misbehaviour={"tamper": 0.05},
        network=NetworkSpec(reconnect_base_s=0.2, reconnect_cap_s=2.0))


def history_settings(env: dict[str, str], api_port: int, paygate_url: str) -> Settings:
    """The control service's settings as the stack gives them to its control process
    (``env``), with its own API port, the in-process PayGate simulator and the faster
    sweep the accelerated clock needs."""
    names = {f"CIZO_{name.upper()}": name for name in Settings.model_fields}
    fields = {names[k]: v for k, v in env.items() if k in names}
    fields.update(api_port=str(api_port), paygate_url=paygate_url,
                  sweep_interval_s=str(SWEEP_INTERVAL_S),
                  command_resend_after_s=str(RESEND_AFTER_S),
                  # the analytics run once the live service starts, on the whole week
                  analytics_at_start="false")
    # validated as given: not merged with this process's own CIZO_* environment
    return Settings.model_validate(fields)


@contextmanager
def _serving(settings: Settings, clock: AcceleratedClock) -> Iterator[str]:
    """The control app on ``settings.api_port`` in a thread, on ``clock``; stopped after
    (its lifespan closes the MQTT link and the scheduler)."""
    server = uvicorn.Server(uvicorn.Config(build_app(settings, clock), host="127.0.0.1",
                                           port=settings.api_port, log_level="warning",
                                           access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, name="history-control", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the history's control service did not start "
                               "(see logs/history.log)")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{settings.api_port}"
    finally:
        server.should_exit = True
        thread.join(30)
        log.info("history: control stopped")


@contextmanager
def _quiet_console(log_file: Path) -> Iterator[None]:
    """The in-process services log to ``log_file``; the console keeps errors and the
    progress line (the control service's warnings at this speed, such as sweeps skipped
    while one still runs, are expected)."""
    root = logging.getLogger()
    saved = [(h, h.level) for h in root.handlers]
    for h in root.handlers:
        h.setLevel(logging.ERROR)
    file = logging.FileHandler(log_file)
    file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(file)
    try:
        yield
    finally:
        root.removeHandler(file)
        file.close()
        for h, level in saved:
            h.setLevel(level)


def progress_line(s: FleetSummary, days: float) -> str:
    day = min(days, (s.sim_now - s.sim_start) / DAY_S)
    return say("history: day {day}/{days} | {kits} kits | {readings} readings | {payments} "
               "payments | {commands} commands applied", day=f"{day:4.1f}", days=f"{days:g}",
               kits=s.kits, readings=s.telemetry_sent, payments=s.payments_made,
               commands=s.commands_applied)


def _show(line: str, *, final: bool = False) -> None:
    if sys.stdout.isatty():
        print("\r" + line, end="\n" if final else "", flush=True)
    else:
        print(line, flush=True)


@dataclass(frozen=True)
class HistoryResult:
    summary: FleetSummary
    start: float
    end: float
    real_s: float


def play(opts: HistoryOptions, *, env: dict[str, str], data_dir: Path, mqtt_port: int,
         kits: int, plan: PlanSpec, provision: Callable[[str], Path],
         tls_ca: Path | None = None, progress_every_s: float = 2.0) -> HistoryResult:
    """Play the week: provision the kits (``provision(api_url)`` writes the fleet file and
    returns it) on the history's control service, then run the fleet and its customers
    until now; returns once every payment is settled and the kits are disconnected."""
    started = time.monotonic()
    now = time.time()
    sc = scenario(opts, kits, plan, now)
    clock = AcceleratedClock(sc.start_ts, sc.speed, until=sc.end_ts)  # never past now
    clock.pause()  # provisioning takes real time: the week starts when the fleet does
    api_port = services.free_port()
    paygate = run_in_thread(PayGateSimConfig(
        auth_token=env["CIZO_PAYGATE_AUTH_TOKEN"], approve_after_s=0.2, clock=clock,
        callback_url=f"http://127.0.0.1:{api_port}/v1/payments/paygate"))
    settings = history_settings(env, api_port, paygate.url)
    try:
        with _quiet_console(data_dir / "logs" / "history.log"), \
                _serving(settings, clock) as api:
            fleet_file = provision(api)
            identities = load_identities(fleet_file)

            def settled() -> bool:
                return all(t.state != PENDING and (t.state != PAID or any(
                    c["ok"] for c in t.callbacks)) for t in list(paygate.sim.by_ref.values()))

            summary = asyncio.run(_run(sc, clock, mqtt_port, identities, tls_ca,
                                       PaymentOptions(api, env["CIZO_ADMIN_API_KEY"]),
                                       settled, progress_every_s))
        log.info("history: the kits and the history's control service are stopped")
    finally:
        paygate.stop()
    return HistoryResult(summary, sc.start_ts, sc.end_ts, time.monotonic() - started)


async def _run(sc: Scenario, clock: AcceleratedClock, mqtt_port: int,
               identities: list[KitIdentity], tls_ca: Path | None, payments: PaymentOptions,
               settled: Callable[[], bool], progress_every_s: float) -> FleetSummary:
    plan = build_plan(sc, SEED)
    driver = FleetDriver(plan, clock, host="127.0.0.1", port=mqtt_port,
                         identities=identities,
                         payments=payments, ramp_s=0.5, tls_ca=tls_ca)
    driver.sim_end = None  # the clock stops at the end instead: kits stay up to settle
    await driver.start()
    clock.resume()
    try:
        last = 0.0
        while (left := sc.end_ts - clock.now()) > 0:
            # never much past the end, which is the wall clock's now: a tenth of a real
            # second is over half an hour simulated
            await asyncio.sleep(min(0.1, clock.real_seconds(left)))
            if time.monotonic() - last >= progress_every_s:
                last = time.monotonic()
                _show(progress_line(driver.summary(), sc.days))
        clock.pause()  # never past now: the live services take over from here
        log.info("history: the week is played; settling its last payments")
        # the week's last payments: made, approved and credited before the services change
        if driver.pay_task is not None:
            await asyncio.wait([driver.pay_task], timeout=20)
        deadline = time.monotonic() + 20
        while not settled() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        log.info("history: payments settled=%s; stopping the kits", settled())
        summary = driver.summary()
        _show(progress_line(summary, sc.days), final=True)
        return summary
    finally:
        await driver.stop()
        log.info("history: kits stopped")
