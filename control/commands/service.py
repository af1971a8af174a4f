"""The control loop: converge each kit to its account, claim signed commands, publish them.

Every command goes out the same way: the transaction that issues it (a payment's credit, a
support action, the sweep, an ack's follow-up) also signs it and marks it ``sent`` — it is
*claimed* — and once that transaction has committed, ``ControlService.send`` publishes it.
A broker that refuses it puts it back as it was (the sweep tries again); a process that dies
between commit and publish leaves it ``sent`` with its re-send time set, so the sweep
re-publishes it then. Nothing is published from inside a transaction, so an ack can never
arrive before the ``sent`` it answers has committed.

I/O stays at the edges: the database through ``Database``, the broker through a
``CommandPublisher`` (the real one is control.commands.mqtt_link.MqttLink; tests pass any
object with the same method).

Two or more control processes may run against one PostgreSQL: the sweep takes a
transaction-scoped advisory lock (one sweeper at a time, the others skip that round),
commands are claimed with ``SKIP LOCKED``, and kit rows are locked while a kit's commands
are issued, so a reconnect or an anomaly seen by both processes is acted on once.

Why about 500 lines in one module: claiming, publishing, the sweep's re-sends and the
handling of acks and statuses all take the same kit-row locks in the same order; kept
together, that order can be read (and kept) in one place.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Table, bindparam, func, select, text, update
from sqlalchemy.orm import Session

from cizo import protocol
from cizo.clock import Clock
from cizo.settings import Settings
from control.commands import desired, lifecycle
from control.commands.desired import Desired
from control.commands.lifecycle import KitSeq
from control.ledger.accounts import account_for_kit
from control.ledger.db import Database
from control.ledger.models import Account, Command, Kit
from control.ledger.secrets import SecretBox
from control.ledger.writes import Write, write_all

log = logging.getLogger(__name__)

SWEEP_LOCK_KEY = 0x5C120005  # pg advisory lock id of the sweep (any constant, shared)


class CommandPublisher(Protocol):
    def publish_command(self, kit_id: str, payload: bytes, version: int = 1) -> bool:
        """Publish retained at QoS1 on the kit's command topic in contract ``version``
        (kits/{kit_id}/cmd, k/{kit_id}/c); False if the broker is away."""
        ...


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A command signed and claimed (marked ``sent``) inside a transaction, to publish once
    that transaction has committed (``ControlService.send``). ``before`` is what the claim
    replaced, put back if the broker refuses it."""

    command_id: str
    kit_id: str
    payload: bytes
    attempts: int
    before: tuple[str, int, float | None]  # status, attempts, sent_at
    version: int = protocol.PROTOCOL_VERSION  # the contract the payload is in


@dataclass(frozen=True, slots=True)
class Issued:
    """A command just issued, and its claim when a broker link exists to publish it."""

    id: str
    outgoing: Outgoing | None


@dataclass(frozen=True, slots=True)
class Planned:
    """A command planned in a transaction: what it is, the writes that record it, and the
    kit's move (its new seq and commanded state) those writes make."""

    issued: Issued
    writes: list[Write]
    move: dict[str, Any]


@dataclass
class SweepResult:
    expired: int = 0
    issued: int = 0
    published: int = 0
    skipped: bool = False  # another process held the sweep lock
    resends_held: bool = False  # acks were waiting to be read: re-sends wait a sweep


@dataclass
class Counters:
    acks: int = 0
    anomalies: int = 0
    bad_messages: dict[str, int] = field(default_factory=dict)

    def bad(self, reason: str) -> None:
        self.bad_messages[reason] = self.bad_messages.get(reason, 0) + 1


class ControlService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        box: SecretBox,
        clock: Clock,
        publisher: CommandPublisher | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.box = box
        self.clock = clock
        self.publisher = publisher
        self.counters = Counters()

    # --- issuing (inside the caller's transaction) -----------------------------------

    def plan(self, kit: KitSeq, want: Desired | None, *, origin: str,
             rotate_nonce: str | None = None, to_version: int | None = None,
             now: float | None = None) -> Planned:
        """A command for ``kit`` (held locked by the caller), signed and claimed — the state
        ``want``, or a ``rotate`` with ``rotate_nonce`` — and the writes that record it, for
        the caller's transaction (control.ledger.writes sends them with its own; ``now``:
        the caller's instant, so all its writes carry one)."""
        now = self.clock.now() if now is None else now
        ttl = self.settings.command_ttl_s
        if to_version is not None:
            row, move = lifecycle.plan_protocol(kit, version=to_version, origin=origin,
                                                now=now, ttl_s=ttl)
        elif rotate_nonce is not None:
            row, move = lifecycle.plan_rotate(kit, nonce=rotate_nonce, origin=origin, now=now,
                                              ttl_s=ttl)
        else:
            assert want is not None
            row, move = lifecycle.plan_state_command(kit, want, origin=origin, now=now,
                                                     ttl_s=ttl)
        out = self.claim_row(row, kit.secret_enc, kit.protocol_version)
        writes = lifecycle.issue_writes([row], [move], now, postgres=self.db.is_postgres)
        return Planned(Issued(row["id"], out), writes, move)

    def plan_converge(self, kit: KitSeq, want: Desired, *, decommissioned: bool, origin: str,
                      now: float | None = None) -> Planned | None:
        """``plan`` a command if ``want`` differs from what the kit was last commanded."""
        if decommissioned or kit.commanded == want:
            return None
        return self.plan(kit, want, origin=origin, now=now)

    def converge_kit(self, s: Session, kit_id: str, origin: str, *, kit: Kit | None = None,
                     acct: Account | None = None) -> Issued | None:
        """Converge a kit whose row the session holds locked (``kit``/``acct``: the objects
        when the caller has them already) and write its command now."""
        kit = kit if kit is not None else s.get(Kit, kit_id)
        acct = acct if acct is not None else account_for_kit(s, kit_id)
        if kit is None or acct is None:
            return None
        s.flush()
        planned = self.plan_converge(
            KitSeq.of(kit), lifecycle.desired_for(acct, self.clock.now()),
            decommissioned=kit.decommissioned_at is not None, origin=origin)
        return self._write(s, kit, planned) if planned is not None else None

    def rotate_secret(self, s: Session, kit: Kit, *, origin: str = "support") -> Issued:
        """A signed ``rotate`` with a fresh nonce; the derived secret waits in
        ``secret_next_enc`` until an ack signed with it proves the kit holds it
        (``handle_ack``)."""
        nonce = secrets.token_hex(16)
        current = self.box.decrypt(kit.secret_enc)
        kit.secret_next_enc = self.box.encrypt(protocol.derive_rotated_secret(current, nonce))
        s.flush()
        return self._write(s, kit, self.plan(KitSeq.of(kit), None, origin=origin,
                                             rotate_nonce=nonce))

    def switch_protocol(self, s: Session, kit: Kit, version: int, *,
                        origin: str = "support") -> Issued:
        """A signed ``protocol`` command, in the contract the kit speaks now: once applied,
        the kit speaks ``version`` and announces it in its status (``handle_status``)."""
        return self._write(s, kit, self.plan(KitSeq.of(kit), None, origin=origin,
                                             to_version=version))

    @staticmethod
    def _write(s: Session, kit: Kit, planned: Planned) -> Issued:
        """Write a planned command now, and make the session's ``kit`` show its move."""
        write_all(s, planned.writes)
        lifecycle.sync_kit(kit, planned.move)
        return planned.issued

    # --- claiming and publishing ------------------------------------------------------

    def claim_row(self, row: dict[str, Any], secret_enc: str | None,
                  version: int = protocol.PROTOCOL_VERSION) -> Outgoing | None:
        """Sign a command not yet written (its row's columns) and mark it sent in place;
        None when no broker link exists (it stays queued for the sweep)."""
        if self.publisher is None or secret_enc is None:
            return None
        payload = lifecycle.command_payload(row, self.box.decrypt(secret_enc), version)
        before = (row["status"], row["attempts"], row["sent_at"])
        row.update(self._sent_values(row["attempts"] + 1, self.clock.now()))
        return Outgoing(row["id"], row["kit_id"], payload, row["attempts"], before, version)

    def claim(self, s: Session, cmds: Sequence[Command]) -> list[Outgoing]:
        """Sign and mark sent commands already written (due re-sends, a kit back online)."""
        if self.publisher is None or not cmds:
            return []
        secrets_by_kit: dict[str, tuple[str, int]] = {
            kid: (enc, version) for kid, enc, version in s.execute(
                select(Kit.id, Kit.secret_enc, Kit.protocol_version).where(
                    Kit.id.in_({c.kit_id for c in cmds})))}
        now = self.clock.now()
        out = []
        for cmd in cmds:
            found = secrets_by_kit.get(cmd.kit_id)
            if found is None:
                continue
            enc, version = found
            payload = lifecycle.command_payload(_columns(cmd), self.box.decrypt(enc), version)
            before = (cmd.status, cmd.attempts, cmd.sent_at)
            for name, value in self._sent_values(cmd.attempts + 1, now).items():
                setattr(cmd, name, value)
            out.append(Outgoing(cmd.id, cmd.kit_id, payload, cmd.attempts, before, version))
        return out

    def send(self, outgoing: Iterable[Outgoing | None], *, payment_id: int | None = None
             ) -> int:
        """After commit: publish claimed commands. One the broker refuses is put back as it
        was, due now, for the sweep; returns how many were published."""
        outs = [o for o in outgoing if o is not None]
        if self.publisher is None or not outs:
            return 0
        refused = [o for o in outs if not self._publish(o, payment_id)]
        if refused:
            with self.db.session() as s:
                s.execute(_UNCLAIM, [{
                    "cid": o.command_id, "claimed": o.attempts, "st": o.before[0],
                    "att": o.before[1], "sent": o.before[2], "now": self.clock.now(),
                } for o in refused])
            log.warning("%d command(s) not published (broker away); left for the sweep",
                        len(refused), extra={"kit_id": refused[0].kit_id,
                                             "command_id": refused[0].command_id,
                                             "payment_id": payment_id})
        return len(outs) - len(refused)

    def _publish(self, out: Outgoing, payment_id: int | None) -> bool:
        assert self.publisher is not None
        try:
            return bool(self.publisher.publish_command(out.kit_id, out.payload, out.version))
        except Exception:
            log.exception("publishing command failed", extra={
                "kit_id": out.kit_id, "command_id": out.command_id, "payment_id": payment_id})
            return False

    def _sent_values(self, attempts: int, now: float) -> dict[str, Any]:
        """A command just published for the ``attempts``-th time: when to re-send it."""
        return {"status": "sent", "sent_at": now, "attempts": attempts,
                "next_attempt_at": now + self.resend_delay_s(attempts)}

    def resend_delay_s(self, attempts: int) -> float:
        """How long to wait for an ack after the ``attempts``-th publication."""
        return desired.backoff_s(
            attempts, base_s=self.settings.command_resend_after_s,
            cap_s=self.settings.command_backoff_max_s,
            jitter=self.settings.command_backoff_jitter)

    def _link_up(self) -> bool:
        return self.publisher is not None and bool(getattr(self.publisher, "connected", True))

    def _acks_waiting(self) -> int:
        """Acks the publisher (the MQTT link) has received and not yet handed to us."""
        return int(getattr(self.publisher, "acks_waiting", 0))

    # --- the sweep ------------------------------------------------------------------

    def _sweep_lock(self, s: Session) -> bool:
        if not self.db.is_postgres:
            # one writer at a time: what the sweep reads (kits' seqs, commanded state) is
            # what it writes over, not a payment's commit that landed in between
            lifecycle.sqlite_write_lock(s)
            return True
        got = s.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": SWEEP_LOCK_KEY})
        return bool(got)

    def sweep(self) -> SweepResult:
        """One pass: expire stale commands, lock kits whose credit ended, (re)publish."""
        result = SweepResult()
        issued: list[Outgoing | None] = []
        with self.db.session() as s:
            if not self._sweep_lock(s):
                result.skipped = True
            else:
                now = self.clock.now()
                expired_kits = lifecycle.expire(s, now)
                result.expired = len(expired_kits)
                # a kit whose command expired converges again from its account
                for kit in lifecycle.lock_kits(s, expired_kits):
                    again = self.converge_kit(s, kit.id, origin="sweep", kit=kit)
                    if again is not None:
                        result.issued += 1
                        issued.append(again.outgoing)
                result.issued += len(lifecycle.sweep_due(
                    s, now=now, ttl_s=self.settings.command_ttl_s))
        result.published += self.send(issued)
        if self._link_up():
            with self.db.session() as s:
                lifecycle.sqlite_write_lock(s)  # no ack or supersede is overwritten by "sent"
                lifecycle.defer_offline(s, self.clock.now(), desired.effective_cap_s(
                    self.settings.command_resend_after_s, self.settings.command_backoff_max_s))
                # an unread ack may be for a command now due again: re-send once read
                resends = self._acks_waiting() == 0
                result.resends_held = not resends
                due = self.claim(s, lifecycle.to_publish(s, self.clock.now(), resends=resends))
            result.published += self.send(due)
        if result.issued or result.expired:
            log.info("sweep", extra={"issued": result.issued, "expired": result.expired,
                                     "published": result.published})
        return result

    # --- kits ----------------------------------------------------------------------

    def lock_kit(self, s: Session, kit_id: str) -> Kit | None:
        """The kit row, locked for this transaction (PostgreSQL row lock; SQLite writer
        lock), read fresh."""
        found = lifecycle.lock_kits(s, [kit_id])
        return found[0] if found else None

    # --- messages from kits ---------------------------------------------------------

    def _ack_secret_ok(self, kit: Kit, payload: bytes, ack: protocol.Ack) -> bool:
        """Which secret signed the ack: the current one, or a pending rotation's (which is
        then adopted: the kit has proved it holds it). Unsigned acks pass unless required."""
        if ack.sig is None:
            return not self.settings.require_ack_sig
        fields = protocol.fields_of(payload, ack.v)
        if protocol.verify(fields, self.box.decrypt(kit.secret_enc)):
            return True
        if kit.secret_next_enc is not None and protocol.verify(
                fields, self.box.decrypt(kit.secret_next_enc)):
            kit.secret_enc = kit.secret_next_enc
            kit.secret_next_enc = None
            # whatever was commanded under the old secret is sent again under the new one
            kit.commanded_action = None
            kit.commanded_credit_until = None
            log.info("kit proved its rotated secret", extra={"kit_id": kit.id})
            return True
        return False

    def handle_ack(self, kit_id: str, payload: bytes,
                   version: int = protocol.PROTOCOL_VERSION) -> None:
        try:
            ack = protocol.parse_ack(payload, version)
        except protocol.ContractError as exc:
            self.counters.bad(exc.reason)
            log.warning("bad ack", extra={"kit_id": kit_id, "reason": exc.reason})
            return
        follow_up: Issued | None = None
        with self.db.session() as s:
            kit = self.lock_kit(s, kit_id)
            if kit is None:
                self.counters.bad("unknown_kit")
                return
            if not self._ack_secret_ok(kit, payload, ack):
                self.counters.bad("bad_ack_signature")
                log.warning("ack with a bad signature ignored",
                            extra={"kit_id": kit_id, "command_id": ack.id})
                return
            before = s.get(Command, ack.id) if ack.id else None
            was_pending = before is not None and before.status in desired.PENDING
            cmd = lifecycle.apply_ack(s, kit=kit, ack=ack, now=self.clock.now())
            self.counters.acks += 1
            if cmd is not None and cmd.action == "rotate" and was_pending:
                if ack.result == "rejected":
                    kit.secret_next_enc = None  # the kit kept its secret
                # the state command the rotate superseded goes out again (new secret if any)
                kit.commanded_action = None
                kit.commanded_credit_until = None
            if kit.commanded_action is None and kit.decommissioned_at is None:
                # after a rotation (or a stale refusal): converge under the current secret
                follow_up = self.converge_kit(s, kit_id, origin="sweep", kit=kit)
        if follow_up is not None:
            self.send([follow_up.outgoing])

    def handle_status(self, kit_id: str, payload: bytes,
                      version: int = protocol.PROTOCOL_VERSION) -> None:
        """Presence, and the contract version the kit announces it speaks (after a
        ``protocol`` command, or a kit provisioned with another version than it runs)."""
        if not payload:
            return  # a cleared retained message
        try:
            status = protocol.parse_status(payload, version)
        except protocol.ContractError as exc:
            self.counters.bad(exc.reason)
            return
        resend: list[Outgoing] = []
        now = self.clock.now()
        with self.db.session() as s:
            kit = self.lock_kit(s, kit_id)
            if kit is None:
                self.counters.bad("unknown_kit")
                return
            came_online = status.online and not kit.online
            if status.online and kit.protocol_version != status.v:
                log.info("kit speaks contract v%d now", status.v,
                         extra={"kit_id": kit_id, "was": kit.protocol_version})
                kit.protocol_version = status.v
                came_online = True  # what is pending goes out again, in the new version
            kit.online = status.online
            kit.fw = status.fw or kit.fw
            kit.last_seen = now
            if came_online:
                # re-send what is still pending the moment the kit is back
                pending = select(Command).where(Command.kit_id == kit_id,
                                                Command.status == "sent")
                resend = self.claim(s, s.scalars(lifecycle.skip_locked(pending, s)).all())
        self.send(resend)

    def handle_telemetry(self, kit_id: str, payload: bytes,
                         version: int = protocol.PROTOCOL_VERSION) -> None:
        """Reported state from telemetry (a v2 message: its latest good reading); a kit
        unlocked without credit is corrected."""
        now = self.clock.now()
        try:
            tele = _latest_reading(kit_id, payload, now, version)
        except protocol.ContractError as exc:
            self.counters.bad(exc.reason)
            return
        issued: Issued | None = None
        with self.db.session() as s:
            kit = self.lock_kit(s, kit_id)
            acct = account_for_kit(s, kit_id)
            if kit is None or acct is None:
                self.counters.bad("unknown_kit")
                return
            kit.last_seen = now
            if self._older_than_last_ack(s, kit, tele):
                return
            kit.reported_locked = tele.locked
            kit.reported_credit_until = tele.credit_until
            if kit.decommissioned_at is not None:
                return
            want = lifecycle.desired_for(acct, now)
            wrong = (want.action == "lock") != tele.locked
            pending = s.scalar(select(Command.id).where(
                Command.kit_id == kit_id, Command.status.in_(desired.PENDING)).limit(1))
            if wrong and pending is None and tele.ts >= now - 120:
                self.counters.anomalies += 1
                kit.anomaly_count = (kit.anomaly_count or 0) + 1
                kit.last_anomaly_at = now
                log.warning("kit state differs from its account",
                            extra={"kit_id": kit_id, "reported_locked": tele.locked,
                                   "desired": want.action})
                s.flush()
                issued = self._write(s, kit, self.plan(KitSeq.of(kit), want,
                                                       origin="correction"))
        if issued is not None:
            self.send([issued.outgoing])

    @staticmethod
    def _older_than_last_ack(s: Session, kit: Kit, tele: protocol.Telemetry) -> bool:
        """A reading taken before the kit's latest ack was handled says nothing of its state
        now (acks are read ahead of telemetry): it must not undo the ack's reported state
        nor count as an anomaly. Looked up only when the reading would change something."""
        if (tele.locked, tele.credit_until) == (kit.reported_locked, kit.reported_credit_until):
            return False
        last_ack = s.scalar(select(func.max(Command.finished_at)).where(
            Command.kit_id == kit.id, Command.status.in_(("applied", "rejected"))))
        return last_ack is not None and tele.ts < last_ack

    def clear_retained(self, kit_id: str) -> bool:
        """Remove a decommissioned kit's retained command from the broker."""
        clear = getattr(self.publisher, "clear_retained", None)
        if clear is None:
            return False
        result = clear(kit_id)
        return result is not False


def _latest_reading(kit_id: str, payload: bytes, now: float,
                    version: int) -> protocol.Telemetry:
    if version != protocol.V2:
        return protocol.parse_telemetry(kit_id, payload, now)
    readings = protocol.parse_readings(kit_id, payload, now)
    good = [r for r in readings if isinstance(r, protocol.Telemetry)]
    if not good:  # every reading refused: the first one's reason
        raise next(r for r in readings if isinstance(r, protocol.ContractError))
    return max(good, key=lambda r: r.ts)


def _columns(cmd: Command) -> dict[str, Any]:
    return {"kit_id": cmd.kit_id, "id": cmd.id, "seq": cmd.seq, "action": cmd.action,
            "credit_until": cmd.credit_until, "issued_at": cmd.issued_at,
            "expires_at": cmd.expires_at, "nonce": cmd.nonce}


# Put a refused claim back as it was (only if nothing has moved it since), due now.
_C: Table = Command.__table__  # type: ignore[assignment]
_UNCLAIM = (update(_C)
            .where(_C.c.id == bindparam("cid"), _C.c.status == "sent",
                   _C.c.attempts == bindparam("claimed"))
            .values(status=bindparam("st"), attempts=bindparam("att"),
                    sent_at=bindparam("sent"), next_attempt_at=bindparam("now")))
