"""One kit of a fleet run: ``KitFirmware`` behind its own MQTT session on the fleet's event
loop, following its plan.

It takes readings on its own schedule of simulated time, publishes them or buffers them
(original timestamps) while its link is down, applies and acks commands, drops its link
during its planned outages (the broker publishes its last will) and reconnects with jittered
exponential backoff so a region's reconnect storm is spread out. A keypad kit's customer
types the codes they receive a little later, in order; a kit of keypad type ``only`` has
no modem at all. An OpenPAYGO Metrics device has no MQTT session: it posts its readings
over HTTP on its own schedule (``firmware_sim.metrics_link``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx

from cizo import protocol
from cizo.clock import Clock
from firmware_sim.clocks import DriftingClock, clock_speed, sleep_or_stop
from firmware_sim.firmware import KitFirmware
from firmware_sim.keypad import Keypad, KeypadResult
from firmware_sim.kit import KitIdentity
from firmware_sim.metrics_link import MetricsLink
from firmware_sim.mqtt_async import MqttConnection, MqttError, ResumingTLS, WireCounters
from firmware_sim.physics import KitProfile
from firmware_sim.scenario import FleetPlan, KitPlan


class Fleet(Protocol):
    """What a kit reads of the fleet driving it (firmware_sim.driver.FleetDriver)."""

    plan: FleetPlan
    clock: Clock
    host: str
    port: int
    ramp_s: float
    buffer_limit: int
    local_addr: tuple[str, int] | None
    reconnect_base_s: float
    reconnect_cap_s: float
    sim_end: float | None
    settling: bool
    metrics_http: httpx.AsyncClient | None  # the control API, for Metrics devices
    tls_ca: Path | None  # connect over TLS trusting this CA (session resumption on)

log = logging.getLogger(__name__)

TICK_REAL_S = 0.5  # a kit wakes at least this often (real time) for its fail-safe and pings
SUBSCRIBE_TIMEOUT_S = 10.0  # no SUBACK by then (a broker restarting under load): reconnect


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
    replayed: int = 0  # telemetry messages published again on a bridge's request
    tokens_entered: int = 0  # keypad codes typed (activation code included)
    tokens_accepted: int = 0
    tokens_rejected: int = 0


class DrivenKit:
    """One kit: firmware + its own MQTT session + its plan's outages and misbehaviour."""

    def __init__(self, plan: KitPlan, identity: KitIdentity, fleet: Fleet) -> None:
        self.plan = plan
        self.identity = identity
        self.kit_id = identity.kit_id
        self.fleet = fleet
        sc = fleet.plan.scenario
        self.clock = DriftingClock(fleet.clock, plan.drift_ppm, plan.clock_offset_s)
        profile = KitProfile.for_kit(self.kit_id, household=plan.household, size=plan.size,
                                     weather_seed=hash(plan.region) & 0xFFFF)
        self.firmware = KitFirmware(self.kit_id, identity.command_secret, self.clock,
                                    profile=profile, protocol_version=plan.protocol)
        self.firmware.tamper = "tamper" in plan.misbehaviour
        self.firmware.stuck_sensor = "stuck_sensor" in plan.misbehaviour
        self.rng = random.Random(f"{fleet.plan.seed}:{self.kit_id}")
        self.counters = KitCounters()
        self.wire = WireCounters()
        self.buffer: deque[bytes] = deque(maxlen=fleet.buffer_limit)  # messages, not readings
        self.interval = sc.telemetry_interval_s
        self.conn = MqttConnection(
            fleet.host, fleet.port, identity.mqtt_username or self.kit_id,
            username=identity.mqtt_username, password=identity.mqtt_password,
            keepalive=sc.keepalive_s, clean_session=False,
            will=self._offline(),
            on_message=self._on_message, counters=self.wire, local_addr=fleet.local_addr,
            tls=ResumingTLS.trusting(str(fleet.tls_ca)) if fleet.tls_ca else None,
            keepalive_clock=self.clock.now if sc.network.keepalive_clock == "simulated"
            else None)
        self._outage_i = 0
        self._reconnect_attempt = 0  # 0: connect at once; n: jittered backoff of attempt n
        self.wire_at_start = 0  # bytes before the first reading (connect, subscribe)
        # keypad: the chain anchor is set from the kit's provisioning time at setup
        self.keypad = Keypad(self.firmware, anchor=int(sc.start_ts)) \
            if plan.keypad is not None else None
        self.metrics = MetricsLink(
            self.firmware, every_s=sc.metrics.every_s, encoding=plan.metrics_encoding,
            first_post=sc.start_ts + plan.first_report_s + sc.metrics.every_s,
            anchor=int(sc.start_ts)) if plan.kind == "openpaygo_metrics" else None
        self.has_modem = plan.keypad != "only" and self.metrics is None  # MQTT, that is
        self.keypad_rng = random.Random(f"{fleet.plan.seed}:{self.kit_id}:keypad")
        self.codes_due: deque[tuple[float, str]] = deque()  # (sim time to type it, code)
        self.codes_seen: set[str] = set()
        self.token_count_seen = -1  # newest count read from the support API
        self.support_until = 0.0  # monotonic deadline: the customer waits on support
        self._announcing: asyncio.Task[None] | None = None
        # the version whose command topic the broker has acknowledged a subscription to
        # (its persistent session keeps it): until then every connect subscribes again
        self._subscribed: int | None = None
        self.applied_at: list[float] = []  # time.monotonic() of each new command applied

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
        """Live until the run's end (simulated) or ``stop``: readings, the fail-safe, codes
        to type and the link, each round at most ``TICK_REAL_S`` apart."""
        fleet, clock = self.fleet, self.fleet.clock
        next_report = self._first_report(clock.now())
        self._reconnect_attempt = 0
        if fleet.ramp_s > 0:
            await sleep_or_stop(stop, self.rng.uniform(0, fleet.ramp_s))
        while not stop.is_set():
            now = clock.now()
            if fleet.sim_end is not None and now >= fleet.sim_end:
                break
            next_report = self._report_if_due(now, next_report)
            if self.metrics is not None and self.metrics.due(now) \
                    and self.in_outage(now) is None:
                await self.post_metrics(now)
            if self.codes_due:
                self.type_due_codes(now)
            if self.firmware.tick() and self.has_modem:
                self.reading()  # report the fail-safe lock at once
            outage_end = self.in_outage(now)
            if await self._tend_link(stop, outage_end):
                await sleep_or_stop(stop, self._real_wait(next_report, outage_end))

    def _first_report(self, now: float) -> float:
        """The kit's own schedule: phase ``first_report_s`` within each interval."""
        base = self.fleet.plan.scenario.start_ts + self.plan.first_report_s
        return base + max(0.0, (now - base) // self.interval + 1) * self.interval

    def _report_if_due(self, now: float, next_report: float) -> float:
        """Take the reading that is due, if one is; the time of the next one."""
        if now < next_report:
            return next_report
        if self.metrics is not None:
            self.metrics.take(self.firmware.telemetry())
        elif self.has_modem:
            self.reading()
        behind = (now - next_report) // self.interval
        return next_report + (behind + 1) * self.interval  # a sleeping kit skips, not floods

    def _real_wait(self, next_report: float, outage_end: float | None) -> float:
        """Real seconds until the next thing to do: a reading, a code, an outage's start or
        end, a keepalive ping (on the simulated clock)."""
        clock = self.fleet.clock
        speed = clock_speed(clock)
        wait = (next_report - clock.now()) / speed
        if self.codes_due:
            wait = min(wait, (self.codes_due[0][0] - clock.now()) / speed)
        if self.metrics is not None:
            wait = min(wait, (self.metrics.next_post - clock.now()) / speed)
        if outage_end is not None:
            wait = min(wait, (outage_end - clock.now()) / speed)
        elif not self.fleet.settling and self._outage_i < len(self.plan.outages):
            # wake for the next link drop too (none while settling: the link stays up)
            wait = min(wait, (self.plan.outages[self._outage_i][0] - clock.now()) / speed)
        if self.fleet.plan.scenario.network.keepalive_clock == "simulated":
            wait = min(wait, self.keepalive_s / speed)  # pings due on the simulated clock
        return max(0.0, min(TICK_REAL_S, wait))

    @property
    def keepalive_s(self) -> int:
        """The keepalive of the version the kit speaks now."""
        sc = self.fleet.plan.scenario
        if self.firmware.protocol == protocol.V2 and sc.protocols.v2_keepalive_s:
            return sc.protocols.v2_keepalive_s
        return sc.keepalive_s

    # --- the link ------------------------------------------------------------------

    async def _tend_link(self, stop: asyncio.Event, outage_end: float | None) -> bool:
        """The link as the plan wants it: cut during an outage, else up and alive. False
        when the next round should start at once (no connection, or stopped)."""
        if not self.has_modem:
            return True  # no radio: the keypad is the only way in
        if outage_end is not None:
            if self.conn.connected:
                self.conn.abort()  # the radio link dies: no DISCONNECT, the will fires
                self.counters.link_drops += 1
            self._reconnect_attempt = 1  # the first reconnect after an outage is jittered too
            return True
        if not self.conn.connected:
            return await self._reconnect(stop)
        with contextlib.suppress(MqttError):  # a link that just died: the next round
            self.conn.ping_if_idle()          # sees it and reconnects
            await self.conn.drain()
        return True

    async def _reconnect(self, stop: asyncio.Event) -> bool:
        """Connect after the attempt's jittered backoff; True once connected."""
        fleet = self.fleet
        if self._reconnect_attempt:
            delay = min(fleet.reconnect_cap_s,
                        fleet.reconnect_base_s * 1.5 ** self._reconnect_attempt)
            if await sleep_or_stop(stop, self.rng.uniform(0, delay)):
                return False
        try:
            await self.connect()
        except MqttError as exc:
            self._reconnect_attempt += 1
            self.counters.connect_failures += 1
            log.debug("kit %s: %s", self.kit_id, exc, extra={"kit_id": self.kit_id})
            return False
        self._reconnect_attempt = 0
        return True

    async def connect(self) -> None:
        first = self.counters.reconnects == 0 and self.wire.connects == 0
        self.conn.will = self._offline()
        self.conn.keepalive = self.keepalive_s
        await self.conn.connect()
        # v2 leans on its persistent session: the broker kept the subscription (and queued
        # the commands meanwhile), so a reconnect does not re-subscribe (nor get the
        # retained command again), once that subscription was acknowledged (a link that
        # dropped just after a "protocol" command leaves none); v1 kits always re-subscribe
        try:
            await self._announce(subscribe=self.firmware.protocol != protocol.V2
                                 or not self.conn.session_present
                                 or self._subscribed != protocol.V2)
        except MqttError:
            self.conn.abort()  # connected but deaf to commands: start over
            raise
        if not first:
            self.counters.reconnects += 1
        pending = list(self.buffer)
        self.buffer.clear()
        for payload in pending:
            self._send_telemetry(payload)
        await self.conn.drain()

    async def _announce(self, *, subscribe: bool = True) -> None:
        """Online, in the version the kit speaks (how the server learns it), and listening
        for commands in it."""
        version = self.firmware.protocol
        self.conn.publish(protocol.status_topic(self.kit_id, version),
                          self.firmware.status(online=True), 1, True)
        if subscribe:
            await self.conn.subscribe([protocol.cmd_topic(self.kit_id, version),
                                       protocol.replay_topic(version)], 1,
                                      timeout_s=SUBSCRIBE_TIMEOUT_S)
            self._subscribed = version

    def _offline(self) -> tuple[str, bytes, int, bool]:
        """The retained offline status (the last will), in the version the kit speaks."""
        return (protocol.status_topic(self.kit_id, self.firmware.protocol),
                self.firmware.status(online=False), 1, True)

    async def _announce_once(self) -> None:
        """After a "protocol" command: announce and listen in the new version; if that
        fails (the link dropped, no SUBACK), start the connection over, whose connect
        subscribes again."""
        try:
            await self._announce()
        except (MqttError, TimeoutError):
            self.conn.abort()

    async def stop(self) -> None:
        """Clean shutdown: offline status, DISCONNECT (the will is not sent then)."""
        if self.conn.connected:
            with contextlib.suppress(MqttError):
                topic, offline, _qos, _retain = self._offline()
                self.conn.publish(topic, offline, 1, True)
                deadline = time.monotonic() + 5
                while self.conn.inflight and self.conn.connected and \
                        time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
            await self.conn.disconnect()
        else:
            await self.conn.close()

    # --- telemetry and misbehaviour --------------------------------------------------

    def reading(self) -> None:
        for payload in self.firmware.report():
            if self.conn.connected:
                self._send_telemetry(payload)
                self._misbehave()
            else:
                if len(self.buffer) == self.buffer.maxlen:
                    self.counters.dropped_from_buffer += 1
                self.buffer.append(payload)
                self.counters.buffered_total += 1

    def _send_telemetry(self, payload: bytes, version: int | None = None) -> None:
        """Publish one telemetry message on the topic of ``version`` (default: the version
        the kit speaks), logged for a later replay request."""
        version = self.firmware.protocol if version is None else version
        try:
            self.conn.publish(protocol.telemetry_topic(self.kit_id, version), payload, 1)
            self.counters.telemetry_sent += 1
            self.firmware.published(payload, version)
        except MqttError:
            self.buffer.append(payload)

    def _misbehave(self) -> None:
        """Now and then (one reading in ten), do what a broken or hacked kit does."""
        bad = self.plan.misbehaviour - {"tamper", "stuck_sensor", "never_ack"}
        if not bad or self.firmware.protocol != protocol.PROTOCOL_VERSION \
                or self.rng.random() >= 0.1:  # v1's misbehaviours: v2 kits behave
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

    # --- OpenPAYGO Metrics ------------------------------------------------------------

    async def post_metrics(self, now: float) -> None:
        """Post the unsent readings now (on schedule, or at the end of a run)."""
        assert self.metrics is not None
        http = self.fleet.metrics_http
        if http is None:
            self.metrics.next_post = now + self.metrics.every_s  # nowhere to post to
            return
        posted = await self.metrics.post(http, now)
        self.counters.telemetry_sent += posted.steps
        for result in posted.tokens:
            self._count_token(result)

    def _count_token(self, result: KeypadResult) -> None:
        self.counters.tokens_entered += 1
        if result.accepted:
            self.counters.tokens_accepted += 1
        else:
            self.counters.tokens_rejected += 1

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
        self._count_token(result)
        log.info("kit %s: keypad code %s -> %s", self.kit_id,
                 "accepted" if result.accepted else "refused", result.token_type,
                 extra={"kit_id": self.kit_id})
        if self.has_modem and self.conn.connected:
            self.reading()  # the kit reports its new state at once

    # --- commands --------------------------------------------------------------------

    async def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        if not payload:
            return  # the broker clearing the retained command
        replay = protocol.replay_version(topic)
        if replay is not None:
            for version, message in self.firmware.replay(payload, replay):
                self._send_telemetry(message, version)
                self.counters.replayed += 1
            return
        speaking = self.firmware.protocol
        self._handle_command(payload, protocol.parse_topic(topic).version)
        if self.firmware.protocol != speaking:  # a "protocol" command: say so, listen there
            # not awaited here: this runs on the read loop, which must read the SUBACK
            self._announcing = asyncio.get_running_loop().create_task(self._announce_once())

    def _handle_command(self, payload: bytes, version: int = protocol.PROTOCOL_VERSION) -> None:
        self.counters.commands_received += 1
        seq_before = self.firmware.last_seq
        ack = self.firmware.handle_command(payload, version)
        if ack["result"] == "applied":
            self.counters.commands_applied += 1
            if self.firmware.last_seq != seq_before:
                self.applied_at.append(time.monotonic())
        else:
            self.counters.commands_rejected += 1
        if "never_ack" in self.plan.misbehaviour:
            return
        with contextlib.suppress(MqttError):
            self.conn.publish(protocol.ack_topic(self.kit_id, ack["v"]), protocol.encode(ack), 1)
            self.counters.acks_sent += 1
