"""The kit firmware's rules, as pure code: command checks, credit, fail-safe lock, telemetry.

No I/O and no wall clock: the MQTT side (``firmware_sim.kit``) feeds bytes in and
publishes the dicts that come out, and every time is read from the injected ``Clock``,
so the unit tests move a ``FrozenClock`` instead of sleeping.

Command checks, in order (the first failure is the ack's ``reason``):

1. ``malformed`` - not a valid v1 command (or an ``unlock`` without ``credit_until``);
2. ``wrong_kit`` - ``kit_id`` is another kit's (checked before the signature so a
   misrouted command is reported as such rather than as a forgery);
3. ``bad_signature`` - the HMAC does not verify with this kit's secret;
4. a repeat of the last applied command (same ``id`` and ``seq``) is acked ``applied``
   again without changing anything - retained/QoS1 redelivery is normal, and the
   server needs the ack even if the first one was lost; this is checked before expiry
   so an old retained command redelivered after a reconnect still gets its ack;
5. ``replayed_seq`` - ``seq`` is not above the last applied one;
6. ``expired`` - ``expires_at`` is not in the future.

``own`` unlocks for good (``tick`` never locks an owned kit), but a later valid signed
command still applies: the server stays the authority (e.g. after a reversed payment).

The kit speaks contract v1 or v2 (``protocol``): a command is read and acked in the
version of the topic it came on, and a ``protocol`` command moves the kit to another
version. In v2 readings are held and sent several to a message (``report``).

Every telemetry message the kit publishes is kept in a bounded log (``published``), and
a bridge's replay request makes the kit publish again those sent since a time
(``replay``): the end-to-end answer to a broker that acknowledged a message and then had
no subscriber to give it to (docs/protocol.md, "Replay").
"""

from __future__ import annotations

import collections
import json
import logging
from typing import Any

from cizo import compact, protocol
from cizo.clock import Clock
from firmware_sim.physics import KitProfile, PhysicsState

log = logging.getLogger(__name__)

# At most this many physics sub-steps per telemetry() call, so a clock jumped forward
# by weeks costs the same as one jumped by minutes.
_MAX_SUBSTEPS = 500
_MIN_SUBSTEP_S = 300.0
V2_BATCH = 4  # readings per v2 message: the hour's four 15-minute readings
# Telemetry messages kept to publish again on request: about five days of v1's 15-minute
# readings, three weeks of v2's hourly messages (a few hundred KB of a kit's flash).
REPLAY_LOG = 500


class KitFirmware:
    """One kit's controller state: lock, credit, command sequence and energy counters."""

    def __init__(
        self,
        kit_id: str,
        secret_hex: str,
        clock: Clock,
        *,
        fw: str = "sim-1.0",
        profile: KitProfile | None = None,
        soc: float = 70.0,
        boot: int = 1,
        protocol_version: int = protocol.PROTOCOL_VERSION,
    ) -> None:
        bytes.fromhex(secret_hex)  # fail fast on a bad secret, not on the first command
        self.kit_id = kit_id
        self.fw = fw
        self.clock = clock
        self.profile = profile or KitProfile.for_kit(kit_id)
        self.locked = True
        self.owned = False
        self.credit_until: int | None = None
        self.last_seq = 0
        self.last_applied_id: str | None = None
        self.boot = boot
        self.seq = 0  # telemetry sequence within this boot
        self.physics = PhysicsState(soc=soc)
        self._secret_hex = secret_hex
        self._prev_secret: str | None = None  # kept to re-ack a redelivered rotate
        self._physics_t: float | None = None
        # misbehaviour on demand: set from the scenario's fault plan (driven_kit.DrivenKit)
        self.tamper = False  # the output is bypassed: load flows while locked
        self.stuck_sensor = False  # readings freeze at their last value
        self._stuck_reading: dict[str, Any] | None = None
        self.received: collections.deque[bytes] = collections.deque(maxlen=8)
        self.protocol = protocol_version  # the contract version the kit speaks
        self._batch: list[dict[str, Any]] = []  # v2 readings not yet sent
        self._ack_version = protocol_version  # the version of the command being handled
        # telemetry published, oldest first: payload -> (kit time, topic version)
        self._published: collections.OrderedDict[bytes, tuple[float, int]] = \
            collections.OrderedDict()

    # --- commands ------------------------------------------------------------------

    def handle_command(self, payload: bytes,
                       version: int = protocol.PROTOCOL_VERSION) -> dict[str, Any]:
        """Check and maybe apply one command received on the ``version`` command topic;
        returns the ack to publish (in that version)."""
        now = self.clock.now()
        self._advance(now)
        self.received.append(payload)
        self._ack_version = version
        try:
            cmd = protocol.parse_command(payload, version)
        except protocol.ContractError as exc:
            cmd_id, seq = _best_effort_id(payload, version)
            return self._ack(cmd_id, seq, "malformed", detail=str(exc))
        if cmd.action == "unlock" and cmd.credit_until is None:
            return self._ack(cmd.id, cmd.seq, "malformed", detail="unlock without credit_until")
        if cmd.action == "rotate" and not _is_nonce(cmd.nonce):
            return self._ack(cmd.id, cmd.seq, "malformed", detail="rotate without a nonce")
        if cmd.action == "protocol" and cmd.protocol not in protocol.VERSIONS:
            return self._ack(cmd.id, cmd.seq, "malformed", detail=f"protocol {cmd.protocol}")
        if cmd.kit_id != self.kit_id:
            return self._ack(cmd.id, cmd.seq, "wrong_kit", detail=cmd.kit_id)
        # verify the fields as sent, not as parsed: extra fields are signed too
        fields = protocol.fields_of(payload, version)
        if not protocol.verify(fields, self._secret_hex):
            # the rotate just applied, redelivered, is signed with the old secret
            if (cmd.id == self.last_applied_id and self._prev_secret is not None
                    and protocol.verify(fields, self._prev_secret)):
                return self._ack(cmd.id, cmd.seq, None)
            return self._ack(cmd.id, cmd.seq, "bad_signature")
        if cmd.id == self.last_applied_id and cmd.seq == self.last_seq:
            return self._ack(cmd.id, cmd.seq, None)
        if cmd.seq <= self.last_seq:
            return self._ack(cmd.id, cmd.seq, "replayed_seq",
                             detail=f"seq {cmd.seq} <= last {self.last_seq}")
        if cmd.expires_at <= now:
            return self._ack(cmd.id, cmd.seq, "expired", detail=f"expires_at {cmd.expires_at}")

        if cmd.action == "unlock":
            assert cmd.credit_until is not None  # checked above
            self.owned = False
            self.credit_until = cmd.credit_until
            self.locked = cmd.credit_until <= now
        elif cmd.action == "lock":
            self.owned = False
            self.locked = True
            self.credit_until = cmd.credit_until
        elif cmd.action == "rotate":  # the new secret is derived, never sent
            assert cmd.nonce is not None  # checked above
            self._prev_secret = self._secret_hex
            self._secret_hex = protocol.derive_rotated_secret(self._secret_hex, cmd.nonce)
        elif cmd.action == "protocol":  # acked in the old version, then spoken from now on
            assert cmd.protocol is not None  # checked above
            self.protocol = cmd.protocol
        else:  # own
            self.owned = True
            self.locked = False
            self.credit_until = None
        self.last_seq = cmd.seq
        self.last_applied_id = cmd.id
        log.info("kit %s applied %s seq=%d locked=%s credit_until=%s",
                 self.kit_id, cmd.action, cmd.seq, self.locked, self.credit_until)
        return self._ack(cmd.id, cmd.seq, None)

    def _ack(self, cmd_id: str, seq: int, reason: str | None, detail: str = "") -> dict[str, Any]:
        if reason is not None:
            log.warning("kit %s rejected command %r seq=%d: %s %s",
                        self.kit_id, cmd_id, seq, reason, detail)
        # acks are signed (optional "sig") so the server knows which secret we hold
        return protocol.sign_ack({
            "v": self._ack_version,
            "id": cmd_id,
            "seq": seq,
            "result": "rejected" if reason else "applied",
            "reason": reason,
            "locked": self.locked,
            "credit_until": self.credit_until,
        }, self._secret_hex)

    @property
    def secret_hex(self) -> str:
        """The command secret the kit holds now (changes on ``rotate``)."""
        return self._secret_hex

    # --- fail-safe -------------------------------------------------------------------

    def _update_lock(self, t: float) -> bool:
        if self.locked or self.owned:
            return False
        if self.credit_until is None or self.credit_until <= t:
            self.locked = True
            return True
        return False

    def tick(self) -> bool:
        """Lock when the credit has run out, server or no server; True if it just locked."""
        changed = self._update_lock(self.clock.now())
        if changed:
            log.info("kit %s credit ran out at %s: locked", self.kit_id, self.credit_until)
        return changed

    # --- telemetry -------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        """Run the physics (and the fail-safe) from the last call up to ``now``."""
        start = self._physics_t
        self._physics_t = now
        if start is None or now <= start:
            self.tick()
            self.physics.step(self.profile, now, 0.0, load_enabled=self.output_on)
            return
        span = now - start
        steps = min(_MAX_SUBSTEPS, max(1, int(span // _MIN_SUBSTEP_S)))
        dt = span / steps
        for i in range(1, steps + 1):
            t = start + i * dt
            if self._update_lock(t):
                log.info("kit %s credit ran out at %s: locked", self.kit_id, self.credit_until)
            self.physics.step(self.profile, t, dt, load_enabled=self.output_on)

    @property
    def output_on(self) -> bool:
        """Power reaches the loads: unlocked, or locked but tampered with (bypassed)."""
        return not self.locked or self.tamper

    def status(self, *, online: bool) -> bytes:
        """The kit's presence message, in the version it speaks (retained on its status
        topic; the offline one is also its last will): how the server learns the version."""
        message: dict[str, Any] = {"v": self.protocol, "online": online}
        if online:
            message["fw"] = self.fw
        return protocol.encode(message)

    def telemetry(self) -> dict[str, Any]:
        """The next v1 telemetry payload (advances the physics to now)."""
        now = self.clock.now()
        self._advance(now)
        self.seq += 1
        ph = self.physics
        sensors = {
            "battery_v": round(ph.battery_v, 2),
            "soc": round(ph.soc, 1),
            "pv_w": round(ph.pv_w, 1),
            "load_w": round(ph.load_w, 1),
            "temp_c": round(ph.temp_c, 1),
        }
        if self.stuck_sensor:
            if self._stuck_reading is None:
                self._stuck_reading = sensors
            sensors = self._stuck_reading
        else:
            self._stuck_reading = None
        return {
            "v": protocol.PROTOCOL_VERSION,
            "kit_id": self.kit_id,
            "ts": int(now),
            "seq": self.seq,
            "boot": self.boot,
            "battery_v": sensors["battery_v"],
            "soc": sensors["soc"],
            "pv_w": sensors["pv_w"],
            "load_w": sensors["load_w"],
            "pv_wh_total": round(ph.pv_wh_total, 2),
            "load_wh_total": round(ph.load_wh_total, 2),
            "locked": self.locked,
            "credit_until": self.credit_until,
            "temp_c": sensors["temp_c"],
        }

    def report(self) -> list[bytes]:
        """Take a reading now; the telemetry messages due, in the kit's version. v1 sends
        each reading. v2 holds them until ``V2_BATCH`` are taken, but sends at once a
        reading that changes the lock state (and, alone, one whose credit or boot differs
        from the held ones': a v2 message shares them)."""
        tele = self.telemetry()
        if self.protocol != protocol.V2:
            return [protocol.encode(tele)]
        out = []
        batch = self._batch
        if batch and (tele["credit_until"] != batch[0]["credit_until"]
                      or tele["boot"] != batch[0]["boot"]
                      or tele["seq"] != batch[-1]["seq"] + 1):
            out.append(compact.encode_readings(batch))
            batch.clear()
        batch.append(tele)
        if len(batch) >= V2_BATCH or (len(batch) > 1 and tele["locked"] != batch[-2]["locked"]):
            out.append(compact.encode_readings(batch))
            batch.clear()
        return out

    # --- replay ----------------------------------------------------------------------

    def published(self, payload: bytes, version: int) -> None:
        """A telemetry message just went out on the ``version`` topic: logged with the
        time, so a replay request can send it again. A message sent again keeps the time it
        first went out: requests close together (two bridges, several restarts) would
        otherwise keep re-sending the same messages, each answer making them new again."""
        log_ = self._published
        if payload in log_:
            return
        log_[payload] = (self.clock.now(), version)
        while len(log_) > REPLAY_LOG:
            log_.popitem(last=False)

    def replay(self, payload: bytes, version: int) -> list[tuple[int, bytes]]:
        """The telemetry messages to publish again, ``(topic version, payload)``, for a
        replay request received on the ``version`` replay topic.

        Every request is answered, a second bridge's after the same restart included: a
        request queued for the kit while it was away can reach it before any bridge is
        subscribed again, and its answer is then dropped like the readings it was for;
        only a later request, sent once a bridge is back, makes the gap whole. The copies
        cost a few messages per request (the margin before the loss), and are written as
        the same points."""
        if version != self.protocol:
            return []  # the bridges ask in every version: a kit answers in the one it speaks
        try:
            since = protocol.parse_replay(payload, version).since
        except protocol.ContractError as exc:
            log.warning("kit %s: ignored a malformed replay request: %s", self.kit_id, exc)
            return []
        out = [(v, p) for p, (at, v) in self._published.items() if at >= since]
        log.info("kit %s: replaying %d telemetry messages published since %d",
                 self.kit_id, len(out), since)
        return out

    def reboot(self) -> None:
        """A power cycle: new boot number, telemetry seq restarts; lock state is in flash."""
        self.boot += 1
        self.seq = 0


def _is_nonce(nonce: str | None) -> bool:
    if nonce is None or len(nonce) != 32:
        return False
    try:
        bytes.fromhex(nonce)
    except ValueError:
        return False
    return True


def _best_effort_id(payload: bytes, version: int) -> tuple[str, int]:
    """The id/seq of a malformed command, when they can be read, so the ack can be matched."""
    try:
        data = compact.loads(payload) if version == protocol.V2 else json.loads(payload)
    except (ValueError, RecursionError):
        return "", 0
    if not isinstance(data, dict):
        return "", 0
    cmd_id = data.get("id")
    seq = data.get("seq")
    return (
        cmd_id if isinstance(cmd_id, str) else "",
        seq if isinstance(seq, int) and not isinstance(seq, bool) else 0,
    )
