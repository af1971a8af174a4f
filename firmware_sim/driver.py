"""Play a ``FleetPlan`` against real servers: every kit its own MQTT session, one event loop.

Each kit is one coroutine over ``firmware_sim.mqtt_async`` (no thread per kit): it takes
readings on its own schedule of simulated time, publishes them or buffers them (original
timestamps) while its link is down, applies and acks commands through ``KitFirmware``,
drops its link during its planned outages (the broker publishes its last will), and
reconnects with jittered exponential backoff so a region's reconnect storm is spread out.
Customers' payments go through the control API (``POST /v1/payments/intents``), which
drives the payment simulator behind it.

Keypad kits (scenario ``[keypad]``) are flagged keypad-only through the API at start, get
their activation code from support, and then type the OpenPAYGO code of each payment into
``firmware_sim.keypad.Keypad`` after a short simulated delay, reading it as a customer would:
from the SMS the control service's file notifier wrote, or as support reads it out from
``GET /v1/kits/{id}/tokens``. Kits of type ``only`` have no modem (no MQTT at all);
``with_mqtt`` kits get both the token and the command and converge once.
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
from pathlib import Path
from typing import Any

import httpx

from cizo import protocol
from cizo.clock import Clock
from firmware_sim.clocks import DriftingClock
from firmware_sim.firmware import KitFirmware
from firmware_sim.keypad import Keypad, token_in_text
from firmware_sim.kit import KitIdentity
from firmware_sim.mqtt_async import MqttConnection, MqttError, WireCounters
from firmware_sim.physics import KitProfile
from firmware_sim.scenario import FleetPlan, KitPlan
from firmware_sim.wire import MonthlyBudget, monthly_budget

log = logging.getLogger(__name__)

OFFLINE = protocol.encode({"v": protocol.PROTOCOL_VERSION, "online": False})
_TICK_REAL_S = 0.5  # a kit wakes at least this often (real time) for its fail-safe and pings
_CODES_POLL_REAL_S = 0.25  # how often the customers' SMS inbox / support is looked at
_SUPPORT_WAIT_REAL_S = 30.0  # after paying, a keypad customer asks support this long


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
    tokens_entered: int = 0  # keypad codes typed (activation code included)
    tokens_accepted: int = 0
    tokens_rejected: int = 0


@dataclass
class PaymentOptions:
    """The control API the customers pay through (and support answers keypad customers on)."""

    api_url: str
    api_key: str  # finance/admin: payment intents
    concurrency: int = 8
    support_key: str | None = None  # support/admin: keypad flag and codes (None: api_key)
    outbox: Path | None = None  # the control service's SMS file (keypad source "receipt")


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
    tokens_accepted: int = 0
    tokens_rejected: int = 0
    keypad_kits: int = 0
    budget: MonthlyBudget | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        days = (self.sim_now - self.sim_start) / 86_400
        return (f"day {days:5.1f} | {self.online}/{self.kits} online | "
                f"{self.messages_sent} msgs ({self.telemetry_sent} telemetry, "
                f"{self.buffered_now} buffered) | cmds {self.commands_received} recv "
                f"{self.commands_applied} applied {self.commands_rejected} rejected | "
                f"tokens {self.tokens_entered} ({self.tokens_rejected} bad) | "
                f"payments {self.payments_made} | "
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
        # keypad: the chain anchor is set from the kit's provisioning time at setup
        self.keypad = Keypad(self.firmware, anchor=int(sc.start_ts)) \
            if plan.keypad is not None else None
        self.has_modem = plan.keypad != "only"
        self.keypad_rng = random.Random(f"{fleet.plan.seed}:{self.kit_id}:keypad")
        self.codes_due: deque[tuple[float, str]] = deque()  # (sim time to type it, code)
        self.codes_seen: set[str] = set()
        self.token_count_seen = -1  # newest count read from the support API
        self.support_until = 0.0  # monotonic deadline: the customer waits on support

    # --- schedule ------------------------------------------------------------------

    def in_outage(self, t: float) -> float | None:
        """The end of the outage covering sim time ``t``, if any (none once the fleet is
        settling: the network comes back for the final comparison, with time paused an
        outage past the run's end would never end)."""
        if self.fleet.settling:
            return None
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
                if self.has_modem:
                    self.reading()
                behind = (now - next_report) // self.interval
                next_report += (behind + 1) * self.interval  # a sleeping kit skips, not floods
            if self.codes_due:
                self.type_due_codes(now)
            if self.firmware.tick() and self.has_modem:
                self.reading()  # report the fail-safe lock at once
            outage_end = self.in_outage(now)
            if not self.has_modem:
                pass  # no radio: the keypad is the only way in
            elif outage_end is not None:
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
            if self.codes_due:
                wait_real = min(wait_real, (self.codes_due[0][0] - clock.now())
                                / clock_speed(clock))
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

    # --- keypad ----------------------------------------------------------------------

    def receive_code(self, code: str) -> None:
        """The customer has a new code (SMS or support): they type it a little later, in the
        order they got them."""
        if self.keypad is None or code in self.codes_seen:
            return
        self.codes_seen.add(code)
        lo, hi = self.fleet.plan.scenario.keypad.delay_h
        due = self.fleet.clock.now() + self.keypad_rng.uniform(lo, hi) * 3_600
        if self.codes_due:
            due = max(due, self.codes_due[-1][0])
        self.codes_due.append((due, code))

    def type_due_codes(self, now: float) -> None:
        """Type the codes whose time has come (all of them once the fleet is settling)."""
        while self.codes_due and (self.codes_due[0][0] <= now or self.fleet.settling):
            self.type_code(self.codes_due.popleft()[1])

    def type_code(self, code: str) -> None:
        assert self.keypad is not None
        self.codes_seen.add(code)
        result = self.keypad.enter(code)
        self.counters.tokens_entered += 1
        if result.accepted:
            self.counters.tokens_accepted += 1
        else:
            self.counters.tokens_rejected += 1
        log.info("kit %s: keypad code %s -> %s", self.kit_id,
                 "accepted" if result.accepted else "refused", result.token_type,
                 extra={"kit_id": self.kit_id})
        if self.has_modem and self.conn.connected:
            self.reading()  # the kit reports its new state at once

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
        self.by_id = {k.kit_id: k for k in self.kits}
        self.keypad_kits = [k for k in self.kits if k.keypad is not None]
        self.settling = False
        self.payments_made = 0
        self.payments_failed = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.pay_task: asyncio.Task[None] | None = None

    def request_stop(self) -> None:
        self._stop.set()

    def settle(self) -> None:
        """End of a run: customers type every code they hold now, without waiting, and kits
        cut off by an outage reconnect (used while the clock is paused to compare kits with
        their accounts)."""
        self.settling = True
        for k in self.keypad_kits:
            k.type_due_codes(self.clock.now())

    async def start(self) -> None:
        if self.keypad_kits:
            await self.setup_keypads()
        self._tasks = [asyncio.create_task(k.run(self._stop)) for k in self.kits]
        if self.payments is not None:
            if self.keypad_kits:
                self._tasks.append(asyncio.create_task(self._read_codes(self.payments)))
            self.pay_task = asyncio.create_task(self._pay(self.payments))
            self._tasks.append(self.pay_task)

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
                    kit = self.by_id.get(kit_id)
                    if kit is not None and kit.keypad is not None:
                        kit.support_until = time.monotonic() + _SUPPORT_WAIT_REAL_S
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

    # --- keypad kits ------------------------------------------------------------------

    def _support_client(self, opts: PaymentOptions) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=opts.api_url, timeout=30, headers={
            "Authorization": f"Bearer {opts.support_key or opts.api_key}"})

    async def setup_keypads(self) -> None:
        """Flag every keypad kit keypad-only (``POST /v1/kits/{id}/keypad``) and give its
        keypad the state the server's token chain assumes: its anchor is the provisioning
        time (the ``kit.provision`` audit entry; the factory writes it into a real kit), or,
        if codes were issued before (a fleet run again), the newest code's chain and count,
        as the kit's flash would hold them. A new kit that already has credit then types the
        activation code support issues (the installer does, at the customer's home); one
        without credit starts locked and needs none (a SET_TIME code for "locked" would put
        the chain on the kit's own midnight, a day off when clocks straddle it)."""
        opts = self.payments
        if opts is None:
            log.warning("%d keypad kits but no control API: they will get no codes",
                        len(self.keypad_kits))
            return
        sem = asyncio.Semaphore(opts.concurrency)
        async with self._support_client(opts) as http:

            async def one(kit: DrivenKit) -> None:
                pad = kit.keypad
                assert pad is not None
                async with sem:
                    r = await http.post(f"/v1/kits/{kit.kit_id}/keypad", json={
                        "keypad_only": True, "reason": "simulated keypad kit"})
                    r.raise_for_status()
                    account = r.json()["after"]
                    r = await http.get(f"/v1/kits/{kit.kit_id}/tokens", params={"limit": 1})
                    r.raise_for_status()
                    issued = r.json()["items"]
                    r = await http.get(f"/v1/kits/{kit.kit_id}/audit", params={"limit": 500})
                    r.raise_for_status()
                made = [e["at"] for e in r.json()["items"] if e["action"] == "kit.provision"]
                if issued:  # codes were typed in an earlier run: the kit's flash kept them
                    newest = issued[0]
                    log.warning("kit %s already has %d codes: its keypad resumes from them",
                                kit.kit_id, newest["count"], extra={"kit_id": kit.kit_id})
                    pad.count = kit.token_count_seen = int(newest["count"])
                    if newest["chain_until"] is None:
                        kit.firmware.owned, kit.firmware.locked = True, False
                        kit.firmware.credit_until = None
                    else:
                        pad.chain_until = kit.firmware.credit_until = int(newest["chain_until"])
                        kit.firmware.locked = pad.chain_until <= kit.firmware.clock.now()
                elif made:
                    pad.chain_until = int(made[-1])
                else:
                    raise RuntimeError(f"kit {kit.kit_id}: no provisioning in its audit")
                until = account.get("credit_until")
                lapsed = until is None or until <= kit.firmware.clock.now()
                if issued or (lapsed and not account.get("owned")):
                    return  # its codes hold its credit, or it starts locked on its anchor
                async with sem:
                    r = await http.post(f"/v1/kits/{kit.kit_id}/tokens", json={
                        "reason": "installation: activation code", "send_sms": False})
                    r.raise_for_status()
                tok = r.json()
                kit.token_count_seen = max(kit.token_count_seen, int(tok["count"]))
                kit.type_code(str(tok["token"]))

            await asyncio.gather(*(one(k) for k in self.keypad_kits))
        log.info("%d keypad kits flagged keypad-only", len(self.keypad_kits))

    async def _read_codes(self, opts: PaymentOptions) -> None:
        """Hand each keypad kit's customer the codes the control service issued."""
        source = self.plan.scenario.keypad.source
        if source == "receipt" and opts.outbox is None:
            log.warning("keypad source 'receipt' but no SMS outbox file given: "
                        "keypad kits will get no codes after activation")
            return
        offset = opts.outbox.stat().st_size if opts.outbox is not None \
            and opts.outbox.exists() else 0
        async with self._support_client(opts) as http:
            while not await _sleep_or_stop(self._stop, _CODES_POLL_REAL_S):
                if source == "receipt":
                    assert opts.outbox is not None
                    offset = self._read_outbox(opts.outbox, offset)
                else:
                    await self._ask_support(http, opts.concurrency)

    def _read_outbox(self, path: Path, offset: int) -> int:
        """New SMS lines since ``offset`` (a partly written last line waits for next time)."""
        if not path.exists():
            return 0
        with path.open("rb") as fh:
            fh.seek(0, 2)
            if fh.tell() < offset:
                offset = 0  # the file was replaced
            fh.seek(offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                log.warning("unreadable SMS outbox line skipped: %r", line[:80])
                continue
            kit = self.by_id.get(str(msg.get("kit_id")))
            if kit is None or kit.keypad is None:
                continue
            code = token_in_text(str(msg.get("text", "")))
            if code is not None:
                kit.receive_code(code)
        return offset + end

    async def _ask_support(self, http: httpx.AsyncClient, concurrency: int) -> None:
        """Customers who paid lately call support, who reads out the codes issued since."""
        now = time.monotonic()
        waiting = [k for k in self.keypad_kits if k.support_until > now]
        sem = asyncio.Semaphore(concurrency)

        async def one(kit: DrivenKit) -> None:
            async with sem:
                try:
                    r = await http.get(f"/v1/kits/{kit.kit_id}/tokens", params={"limit": 20})
                    r.raise_for_status()
                except httpx.HTTPError as exc:
                    log.warning("support could not list kit %s's codes: %r", kit.kit_id, exc,
                                extra={"kit_id": kit.kit_id})
                    return
            fresh = sorted((t for t in r.json()["items"] if t["count"] > kit.token_count_seen),
                           key=lambda t: int(t["count"]))
            for t in fresh:
                kit.token_count_seen = int(t["count"])
                kit.receive_code(str(t["token"]))

        await asyncio.gather(*(one(k) for k in waiting))

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
            tokens_entered=sum(x.tokens_entered for x in c),
            tokens_accepted=sum(x.tokens_accepted for x in c),
            tokens_rejected=sum(x.tokens_rejected for x in c),
            keypad_kits=len(self.keypad_kits),
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
        f"tokens entered     {s.tokens_entered} ({s.tokens_accepted} accepted, "
        f"{s.tokens_rejected} rejected) on {s.keypad_kits} keypad kits",
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
                 support_key: str | None = None,
                 progress_every_s: float = 5.0) -> FleetSummary:
    """``cizo sim --scenario FILE --seed N``: play a scenario until its end or Ctrl-C.

    Kits use the credentials of ``fleet_file`` when given (a provisioned fleet), else
    deterministic identities on an anonymous broker. Payments go through the control API
    at ``settings.api_base_url`` when an admin/finance ``api_key`` is given; keypad kits
    are flagged and answered with ``support_key`` (default ``api_key``) and read their codes
    from the control service's SMS file (``notify_file``) when the scenario says "receipt".
    """
    import signal

    from firmware_sim.clocks import AcceleratedClock
    from firmware_sim.fleet import load_identities
    from firmware_sim.scenario import load_scenario

    scenario = load_scenario(scenario_path)
    plan = build_plan_for(scenario, seed)
    identities = load_identities(fleet_file) if fleet_file is not None else None
    clock = AcceleratedClock(scenario.start_ts, scenario.speed)
    outbox = settings.notify_file or settings.data_dir / "notifications.jsonl"
    payments = PaymentOptions(settings.api_base_url, api_key, support_key=support_key,
                              outbox=Path(outbox)) if api_key else None

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
