"""Play a ``FleetPlan`` against real servers: every kit its own MQTT session, one event loop.

Each kit is one coroutine over ``firmware_sim.mqtt_async`` (no thread per kit): it takes
readings on its own schedule of simulated time, publishes them or buffers them (original
timestamps) while its link is down, applies and acks commands through ``KitFirmware``,
drops its link during its planned outages (the broker publishes its last will), and
reconnects with jittered exponential backoff so a region's reconnect storm is spread out.
Customers' payments go through the control API (``POST /v1/payments/intents``), which
drives the payment simulator behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from cizo import protocol
from cizo.clock import Clock
from firmware_sim.clocks import DriftingClock
from firmware_sim.firmware import KitFirmware
from firmware_sim.kit import KitIdentity
from firmware_sim.mqtt_async import MqttConnection, MqttError, WireCounters
from firmware_sim.physics import KitProfile
from firmware_sim.scenario import FleetPlan, KitPlan
from firmware_sim.wire import MonthlyBudget, monthly_budget

log = logging.getLogger(__name__)

OFFLINE = protocol.encode({"v": protocol.PROTOCOL_VERSION, "online": False})
_TICK_REAL_S = 0.5  # a kit wakes at least this often (real time) for its fail-safe and pings


def identity_for(kit_id: str, seed: int) -> KitIdentity:
    """A deterministic identity for an anonymous broker (no provisioning service)."""
    secret = hashlib.sha256(f"{seed}:{kit_id}".encode()).hexdigest()
    return KitIdentity(kit_id, None, None, secret)


@dataclass(slots=True)
class KitCounters:
    telemetry_sent: int = 0  # readings handed to the link (live or from the buffer)
    buffered_total: int = 0  # readings taken while offline
    dropped_from_buffer: int = 0
    commands_received: int = 0
    commands_applied: int = 0
    commands_rejected: int = 0
    acks_sent: int = 0
    link_drops: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    misbehaviours: int = 0


@dataclass
class PaymentOptions:
    api_url: str
    api_key: str
    concurrency: int = 8


@dataclass
class FleetSummary:
    kits: int
    online: int
    sim_start: float
    sim_now: float
    messages_sent: int
    messages_acked: int
    telemetry_sent: int
    buffered_now: int
    buffered_total: int
    commands_received: int
    commands_applied: int
    commands_rejected: int
    acks_sent: int
    tokens_entered: int
    payments_made: int
    payments_failed: int
    link_drops: int
    reconnects: int
    connect_failures: int
    misbehaviours: int
    bytes_out: int
    bytes_in: int
    budget: MonthlyBudget | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        days = (self.sim_now - self.sim_start) / 86_400
        return (f"day {days:5.1f} | {self.online}/{self.kits} online | "
                f"{self.messages_sent} msgs ({self.telemetry_sent} telemetry, "
                f"{self.buffered_now} buffered) | cmds {self.commands_received} recv "
                f"{self.commands_applied} applied {self.commands_rejected} rejected | "
                f"tokens {self.tokens_entered} | payments {self.payments_made} | "
                f"drops {self.link_drops} reconnects {self.reconnects}")

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.budget is not None:
            d["budget"] = dataclasses.asdict(self.budget)
        return d


class DrivenKit:
    """One kit: firmware + its own MQTT session + its plan's outages and misbehaviour."""

    def __init__(self, plan: KitPlan, identity: KitIdentity, fleet: FleetDriver) -> None:
        self.plan = plan
        self.identity = identity
        self.kit_id = identity.kit_id
        self.fleet = fleet
        sc = fleet.plan.scenario
        self.clock = DriftingClock(fleet.clock, plan.drift_ppm, plan.clock_offset_s)
        profile = KitProfile.for_kit(self.kit_id, household=plan.household, size=plan.size,
                                     weather_seed=hash(plan.region) & 0xFFFF)
        self.firmware = KitFirmware(self.kit_id, identity.command_secret, self.clock,
                                    profile=profile)
        self.firmware.tamper = "tamper" in plan.misbehaviour
        self.firmware.stuck_sensor = "stuck_sensor" in plan.misbehaviour
        self.rng = random.Random(f"{fleet.plan.seed}:{self.kit_id}")
        self.counters = KitCounters()
        self.wire = WireCounters()
        self.buffer: deque[bytes] = deque(maxlen=fleet.buffer_limit)
        self.interval = sc.telemetry_interval_s
        self.conn = MqttConnection(
            fleet.host, fleet.port, identity.mqtt_username or self.kit_id,
            username=identity.mqtt_username, password=identity.mqtt_password,
            keepalive=sc.keepalive_s, clean_session=False,
            will=(protocol.status_topic(self.kit_id), OFFLINE, 1, True),
            on_message=self._on_message, counters=self.wire, local_addr=fleet.local_addr)
        self._outage_i = 0
        self.wire_at_start = 0  # bytes before the first reading (connect, subscribe)

    # --- schedule ------------------------------------------------------------------

    def in_outage(self, t: float) -> float | None:
        """The end of the outage covering sim time ``t``, if any."""
        outages = self.plan.outages
        while self._outage_i < len(outages) and outages[self._outage_i][1] <= t:
            self._outage_i += 1
        if self._outage_i < len(outages):
            start, end = outages[self._outage_i]
            if start <= t:
                return end
        return None

    async def run(self, stop: asyncio.Event) -> None:
        fleet, clock = self.fleet, self.fleet.clock
        now = clock.now()
        # the kit's own schedule: phase first_report_s within each interval
        base = fleet.plan.scenario.start_ts + self.plan.first_report_s
        next_report = base + max(0.0, (now - base) // self.interval + 1) * self.interval
        attempt = 0
        if fleet.ramp_s > 0:
            await _sleep_or_stop(stop, self.rng.uniform(0, fleet.ramp_s))
        while not stop.is_set():
            now = clock.now()
            if fleet.sim_end is not None and now >= fleet.sim_end:
                break
            if now >= next_report:
                self.reading()
                behind = (now - next_report) // self.interval
                next_report += (behind + 1) * self.interval  # a sleeping kit skips, not floods
            if self.firmware.tick():
                self.reading()  # report the fail-safe lock at once
            outage_end = self.in_outage(now)
            if outage_end is not None:
                if self.conn.connected:
                    self.conn.abort()  # the radio link dies: no DISCONNECT, the will fires
                    self.counters.link_drops += 1
                attempt = 1  # the first reconnect after an outage is jittered too
            elif not self.conn.connected:
                if attempt:
                    delay = min(fleet.reconnect_cap_s, fleet.reconnect_base_s * 1.5 ** attempt)
                    if await _sleep_or_stop(stop, self.rng.uniform(0, delay)):
                        break
                try:
                    await self.connect()
                    attempt = 0
                except MqttError as exc:
                    attempt += 1
                    self.counters.connect_failures += 1
                    log.debug("kit %s: %s", self.kit_id, exc, extra={"kit_id": self.kit_id})
                    continue
            else:
                self.conn.ping_if_idle()
                with contextlib.suppress(MqttError):
                    await self.conn.drain()
            wait_real = (next_report - clock.now()) / clock_speed(clock)
            if outage_end is not None:
                wait_real = min(wait_real, (outage_end - clock.now()) / clock_speed(clock))
            await _sleep_or_stop(stop, max(0.0, min(_TICK_REAL_S, wait_real)))

    async def connect(self) -> None:
        first = self.counters.reconnects == 0 and self.wire.connects == 0
        await self.conn.connect()
        online = {"v": protocol.PROTOCOL_VERSION, "online": True, "fw": self.firmware.fw}
        self.conn.publish(protocol.status_topic(self.kit_id), protocol.encode(online), 1, True)
        await self.conn.subscribe(protocol.cmd_topic(self.kit_id), 1)
        if not first:
            self.counters.reconnects += 1
        pending = list(self.buffer)
        self.buffer.clear()
        for payload in pending:
            self._send_telemetry(payload)
        await self.conn.drain()

    # --- telemetry and misbehaviour --------------------------------------------------

    def reading(self) -> None:
        payload = protocol.encode(self.firmware.telemetry())
        if self.conn.connected:
            self._send_telemetry(payload)
            self._misbehave()
        else:
            if len(self.buffer) == self.buffer.maxlen:
                self.counters.dropped_from_buffer += 1
            self.buffer.append(payload)
            self.counters.buffered_total += 1

    def _send_telemetry(self, payload: bytes) -> None:
        try:
            self.conn.publish(protocol.telemetry_topic(self.kit_id), payload, 1)
            self.counters.telemetry_sent += 1
        except MqttError:
            self.buffer.append(payload)

    def _misbehave(self) -> None:
        """Now and then (one reading in ten), do what a broken or hacked kit does."""
        bad = self.plan.misbehaviour - {"tamper", "stuck_sensor", "never_ack"}
        if not bad or self.rng.random() >= 0.1:
            return
        kind = self.rng.choice(sorted(bad))
        self.counters.misbehaviours += 1
        topic = protocol.telemetry_topic(self.kit_id)
        if kind == "malformed":
            garbage = self.rng.choice([b'{"v":1,"kit_id":', b"\xff\xfe not utf8",
                                       b'{"v":1,"soc":"80"}', b"[1,2,3]", b'{"v":2}'])
            self.conn.publish(topic, garbage, 1)
        elif kind == "wrong_kit_id":
            tele = self.firmware.telemetry()
            tele["kit_id"] = f"{self.kit_id}X"
            self.conn.publish(topic, protocol.encode(tele), 1)
        elif kind == "replay" and self.firmware.received:
            # a stale command replayed into the kit (e.g. by a man in the middle)
            self._handle_command(self.firmware.received[0])

    # --- commands --------------------------------------------------------------------

    async def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if not payload:
            return  # the broker clearing the retained command
        self._handle_command(payload)

    def _handle_command(self, payload: bytes) -> None:
        self.counters.commands_received += 1
        ack = self.firmware.handle_command(payload)
        if ack["result"] == "applied":
            self.counters.commands_applied += 1
        else:
            self.counters.commands_rejected += 1
        if "never_ack" in self.plan.misbehaviour:
            return
        with contextlib.suppress(MqttError):
            self.conn.publish(protocol.ack_topic(self.kit_id), protocol.encode(ack), 1)
            self.counters.acks_sent += 1

    async def stop(self) -> None:
        """Clean shutdown: offline status, DISCONNECT (the will is not sent then)."""
        if self.conn.connected:
            with contextlib.suppress(MqttError):
                self.conn.publish(protocol.status_topic(self.kit_id), OFFLINE, 1, True)
                deadline = time.monotonic() + 5
                while self.conn.inflight and self.conn.connected and \
                        time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
            await self.conn.disconnect()
        else:
            await self.conn.close()


def clock_speed(clock: Clock) -> float:
    speed = getattr(clock, "speed", 1.0)
    return float(speed) if isinstance(speed, int | float) and speed > 0 else 1.0


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep, or return True early if ``stop`` is set."""
    if seconds <= 0:
        return stop.is_set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


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
    ) -> None:
        self.plan = plan
        self.clock = clock
        self.host, self.port = host, port
        self.payments = payments
        self.ramp_s = ramp_s
        self.buffer_limit = buffer_limit
        self.local_addr = local_addr
        self.reconnect_base_s = plan.scenario.network.reconnect_base_s
        self.reconnect_cap_s = plan.scenario.network.reconnect_cap_s
        self.sim_end: float | None = plan.scenario.end_ts
        if identities is not None and len(identities) < len(plan.kits):
            raise ValueError(f"{len(plan.kits)} kits planned, {len(identities)} identities given")
        self.kits: list[DrivenKit] = []
        for i, kp in enumerate(plan.kits):
            ident = identities[i] if identities is not None else identity_for(kp.kit_id,
                                                                              plan.seed)
            if ident.kit_id != kp.kit_id:
                kp = dataclasses.replace(kp, kit_id=ident.kit_id)
            self.kits.append(DrivenKit(kp, ident, self))
        self.payments_made = 0
        self.payments_failed = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def request_stop(self) -> None:
        self._stop.set()

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(k.run(self._stop)) for k in self.kits]
        if self.payments is not None:
            self._tasks.append(asyncio.create_task(self._pay(self.payments)))

    async def run(self, *, progress: Callable[[FleetSummary], None] | None = None,
                  progress_every_s: float = 5.0) -> FleetSummary:
        """Run until the scenario's end (simulated) or ``request_stop()``; then stop cleanly."""
        await self.start()
        kit_tasks = self._tasks[: len(self.kits)]
        try:
            while not self._stop.is_set():
                done = await _sleep_or_stop(self._stop, progress_every_s)
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

    async def _pay(self, opts: PaymentOptions) -> None:
        """Walk every customer's payments in time order, paying through the control API."""
        queue = sorted((p.at, k.kit_id, p.amount_fcfa, k.plan.phone, k.rng.choice(
            ["TMONEY", "FLOOZ"])) for k in self.kits for p in k.plan.payments)
        sem = asyncio.Semaphore(opts.concurrency)
        pending: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(base_url=opts.api_url, timeout=30, headers={
                "Authorization": f"Bearer {opts.api_key}"}) as http:

            async def one(kit_id: str, amount: int, phone: str, network: str) -> None:
                async with sem:
                    try:
                        r = await http.post("/v1/payments/intents", json={
                            "kit_id": kit_id, "amount_fcfa": amount, "phone": phone,
                            "network": network})
                    except httpx.HTTPError as exc:
                        self.payments_failed += 1
                        log.warning("payment for kit %s failed: %r", kit_id, exc,
                                    extra={"kit_id": kit_id})
                        return
                if r.status_code == 201:
                    self.payments_made += 1
                else:
                    self.payments_failed += 1
                    log.warning("payment for kit %s refused: HTTP %d %s", kit_id,
                                r.status_code, r.text[:200], extra={"kit_id": kit_id})

            for at, kit_id, amount, phone, network in queue:
                while self.clock.now() < at:
                    if await _sleep_or_stop(self._stop, min(
                            _TICK_REAL_S, (at - self.clock.now()) / clock_speed(self.clock))):
                        break
                if self._stop.is_set():
                    break
                task = asyncio.create_task(one(kit_id, amount, phone, network))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    # --- figures -------------------------------------------------------------------

    @property
    def online(self) -> int:
        return sum(k.conn.connected for k in self.kits)

    def summary(self) -> FleetSummary:
        c = [k.counters for k in self.kits]
        wires = [k.wire for k in self.kits]
        sc = self.plan.scenario
        now = self.clock.now()
        elapsed = max(1.0, min(now, sc.end_ts) - sc.start_ts)
        published = sum(w.publishes_out for w in wires)
        avg_publish = sum(w.by_kind_out.get("publish", 0) for w in wires) / max(1, published)
        budget = None
        if self.kits:
            budget = monthly_budget(
                mqtt_bytes_out=sum(w.bytes_out for w in wires) / len(self.kits),
                mqtt_bytes_in=sum(w.bytes_in for w in wires) / len(self.kits),
                packets_out=sum(w.packets_out for w in wires) / len(self.kits),
                packets_in=sum(w.packets_in for w in wires) / len(self.kits),
                connects=sum(w.connects for w in wires) / len(self.kits),
                sim_seconds=elapsed, keepalive_s=sc.keepalive_s,
                report_interval_s=sc.telemetry_interval_s, avg_publish_bytes=avg_publish)
        return FleetSummary(
            kits=len(self.kits), online=self.online, sim_start=sc.start_ts, sim_now=now,
            messages_sent=sum(w.publishes_out for w in wires),
            messages_acked=sum(k.conn.acked for k in self.kits),
            telemetry_sent=sum(x.telemetry_sent for x in c),
            buffered_now=sum(len(k.buffer) for k in self.kits),
            buffered_total=sum(x.buffered_total for x in c),
            commands_received=sum(x.commands_received for x in c),
            commands_applied=sum(x.commands_applied for x in c),
            commands_rejected=sum(x.commands_rejected for x in c),
            acks_sent=sum(x.acks_sent for x in c),
            tokens_entered=sum(int(getattr(k.firmware, "tokens_entered", 0))
                               for k in self.kits),
            payments_made=self.payments_made, payments_failed=self.payments_failed,
            link_drops=sum(x.link_drops for x in c), reconnects=sum(x.reconnects for x in c),
            connect_failures=sum(x.connect_failures for x in c),
            misbehaviours=sum(x.misbehaviours for x in c),
            bytes_out=sum(w.bytes_out for w in wires), bytes_in=sum(w.bytes_in for w in wires),
            budget=budget,
        )


def print_progress(summary: FleetSummary) -> None:
    """One progress line: rewritten in place on a terminal, a new line in a log."""
    if sys.stdout.isatty():
        print("\r" + summary.line()[:160], end="", flush=True)
    else:
        print(f"sim: {summary.line()}", flush=True)


def summary_text(s: FleetSummary) -> str:
    lines = [
        f"kits online        {s.online}/{s.kits}",
        f"messages sent      {s.messages_sent} ({s.messages_acked} acknowledged by the broker)",
        f"telemetry          {s.telemetry_sent} sent, {s.buffered_total} buffered while "
        f"offline, {s.buffered_now} still buffered",
        f"commands           {s.commands_received} received, {s.commands_applied} applied, "
        f"{s.commands_rejected} rejected, {s.acks_sent} acks sent",
        f"tokens entered     {s.tokens_entered}",
        f"payments made      {s.payments_made} ({s.payments_failed} failed)",
        f"network            {s.link_drops} link drops, {s.reconnects} reconnects, "
        f"{s.connect_failures} failed connection attempts",
        f"misbehaviour       {s.misbehaviours} bad messages sent on purpose",
    ]
    if s.budget is not None:
        b = s.budget
        lines.append(f"data per kit/month {b.total_kb:.0f} KB on the wire "
                     f"(MQTT {b.mqtt_kb:.0f} KB incl. keepalives, TCP/IP+TLS "
                     f"{b.overhead_kb:.0f} KB); OpenPAYGO Metrics design point 750 KB")
    return "\n".join(lines)


def summary_json(s: FleetSummary) -> str:
    return json.dumps(s.as_dict(), sort_keys=True)


def run_scenario(settings: Any, scenario_path: Any, *, seed: int,
                 fleet_file: Any = None, api_key: str | None = None,
                 progress_every_s: float = 5.0) -> FleetSummary:
    """``cizo sim --scenario FILE --seed N``: play a scenario until its end or Ctrl-C.

    Kits use the credentials of ``fleet_file`` when given (a provisioned fleet), else
    deterministic identities on an anonymous broker. Payments go through the control API
    at ``settings.api_base_url`` when an admin/finance ``api_key`` is given.
    """
    import signal

    from firmware_sim.clocks import AcceleratedClock
    from firmware_sim.fleet import load_identities
    from firmware_sim.scenario import load_scenario

    scenario = load_scenario(scenario_path)
    plan = build_plan_for(scenario, seed)
    identities = load_identities(fleet_file) if fleet_file is not None else None
    clock = AcceleratedClock(scenario.start_ts, scenario.speed)
    payments = PaymentOptions(settings.api_base_url, api_key) if api_key else None

    async def main() -> FleetSummary:
        driver = FleetDriver(plan, clock, host=settings.mqtt_host, port=settings.mqtt_port,
                             identities=identities, payments=payments,
                             ramp_s=min(10.0, len(plan.kits) / 1000))
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


def build_plan_for(scenario: Any, seed: int) -> FleetPlan:
    from firmware_sim.scenario import build_plan

    return build_plan(scenario, seed)
