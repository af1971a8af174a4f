"""The control loop: converge each kit to its account, publish signed commands, read acks.

I/O stays at the edges: the database through ``Database``, the broker through a
``CommandPublisher`` (the real one is control.commands.mqtt_link.MqttLink; tests may pass any
object with the same method).

Two or more control processes may run against one PostgreSQL: the sweep takes a
transaction-scoped advisory lock (one sweeper at a time, the others skip that round),
commands are claimed with ``SKIP LOCKED`` before they are published, and kit rows are
locked while a status or telemetry message is applied, so a reconnect or an anomaly seen
by both processes is acted on once.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from cizo import protocol
from cizo.clock import Clock
from cizo.settings import Settings
from control.commands import lifecycle as commands
from control.ledger.accounts import account_for_kit
from control.ledger.db import Database
from control.ledger.models import Account, Command, Kit
from control.ledger.secrets import SecretBox

log = logging.getLogger(__name__)

SWEEP_LOCK_KEY = 0x5C120005  # pg advisory lock id of the sweep (any constant, shared)


class CommandPublisher(Protocol):
    def publish_command(self, kit_id: str, payload: bytes) -> bool:
        """Publish retained at QoS1 on kits/{kit_id}/cmd; False if the broker is away."""
        ...


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A command signed and marked ``sent`` inside its issuing transaction, to publish once
    that transaction has committed (``ControlService.send_claimed``)."""

    command_id: str
    kit_id: str
    payload: bytes


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

    # --- converging -------------------------------------------------------------

    def converge_kit(self, s: Session, kit_id: str, origin: str, *, kit: Kit | None = None,
                     acct: Account | None = None) -> Command | None:
        """Inside the caller's transaction: issue a command if the kit must change.
        ``kit``/``acct``: the rows when the caller already holds them (locked), unread again."""
        kit = kit if kit is not None else s.get(Kit, kit_id)
        acct = acct if acct is not None else account_for_kit(s, kit_id)
        if kit is None or acct is None:
            return None
        return commands.converge(
            s, kit=kit, acct=acct, origin=origin, now=self.clock.now(),
            ttl_s=self.settings.command_ttl_s,
        )

    def claim_for_publish(self, s: Session, cmd: Command | None, kit: Kit) -> Outgoing | None:
        """Inside the issuing transaction: sign ``cmd`` and mark it sent, so publishing it
        right after commit needs no second transaction (the payment path's hot spot).

        Nothing is lost if the publish never happens: a process that dies between commit
        and publish leaves the command ``sent`` with its resend time set, and the sweep
        publishes it then; a broker that refuses it puts it back in the queue
        (``send_claimed``)."""
        if cmd is None or self.publisher is None:
            return None
        payload = commands.signed_payload(cmd, self.box, kit)
        self._mark_sent(cmd, self.clock.now())
        return Outgoing(cmd.id, kit.id, payload)

    def send_claimed(self, out: Outgoing | None, *, payment_id: int | None = None) -> bool:
        """After commit: publish a claimed command; if the broker is away, queue it again."""
        if out is None or self.publisher is None:
            return False
        extra = {"kit_id": out.kit_id, "command_id": out.command_id, "payment_id": payment_id}
        try:
            if self.publisher.publish_command(out.kit_id, out.payload):
                return True
        except Exception:
            log.exception("publishing command failed; queued again for the sweep", extra=extra)
        now = self.clock.now()
        with self.db.session() as s:
            s.execute(update(Command).where(Command.id == out.command_id,
                                            Command.status == "sent")
                      .values(status="queued", attempts=Command.attempts - 1, sent_at=None,
                              next_attempt_at=now))
        log.warning("command not published (broker away); queued again", extra=extra)
        return False

    def publish(self, command_ids: list[str]) -> int:
        """Publish these commands now (after their transaction committed)."""
        if self.publisher is None or not command_ids:
            return 0
        sent = 0
        with self.db.session() as s:
            commands.sqlite_write_lock(s)  # an ack landing meanwhile is not set back to sent
            q = select(Command).where(Command.id.in_(command_ids),
                                      Command.status.in_(commands.PENDING))
            for cmd in s.scalars(commands.skip_locked(q, s)):
                sent += self._publish_one(s, cmd)
        return sent

    def _publish_one(self, s: Session, cmd: Command) -> int:
        assert self.publisher is not None
        kit = s.get(Kit, cmd.kit_id)
        if kit is None:
            return 0
        payload = commands.signed_payload(cmd, self.box, kit)
        if not self.publisher.publish_command(cmd.kit_id, payload):
            return 0  # broker away: still due, the next sweep tries again
        self._mark_sent(cmd, self.clock.now())
        return 1

    def claim_row(self, row: dict[str, Any], secret_enc: str) -> Outgoing | None:
        """``claim_for_publish`` for a command given as columns (a bulk insert's row):
        signed with the kit's secret (``secret_enc``) and marked sent in place."""
        if self.publisher is None:
            return None
        payload = commands.command_payload(row, self.box.decrypt(secret_enc))
        row.update(self._sent_values(row["attempts"] + 1, self.clock.now()))
        return Outgoing(row["id"], row["kit_id"], payload)

    def _mark_sent(self, cmd: Command, now: float) -> None:
        for name, value in self._sent_values(cmd.attempts + 1, now).items():
            setattr(cmd, name, value)

    def _sent_values(self, attempts: int, now: float) -> dict[str, Any]:
        """A command just published for the ``attempts``-th time: when to re-send it."""
        return {"status": "sent", "sent_at": now, "attempts": attempts,
                "next_attempt_at": now + self.resend_delay_s(attempts)}

    def resend_delay_s(self, attempts: int) -> float:
        """How long to wait for an ack after the ``attempts``-th publication."""
        return commands.backoff_s(
            attempts, base_s=self.settings.command_resend_after_s,
            cap_s=self.settings.command_backoff_max_s,
            jitter=self.settings.command_backoff_jitter)

    def _acks_waiting(self) -> int:
        """Acks the publisher (the MQTT link) has received and not yet handed to us."""
        return int(getattr(self.publisher, "acks_waiting", 0))

    def _sweep_lock(self, s: Session) -> bool:
        if not self.db.is_postgres:
            # one writer at a time: what the sweep reads (kits' seqs, commanded state) is
            # what it writes over, not a payment's commit that landed in between
            commands.sqlite_write_lock(s)
            return True
        got = s.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": SWEEP_LOCK_KEY})
        return bool(got)

    def sweep(self) -> SweepResult:
        """One pass: expire stale commands, lock kits whose credit ended, (re)publish."""
        now = self.clock.now()
        result = SweepResult()
        with self.db.session() as s:
            if not self._sweep_lock(s):
                result.skipped = True
            else:
                expired_kits = commands.expire(s, now)
                result.expired = len(expired_kits)
                # a kit whose command expired converges again from its account
                for kit_id in expired_kits:
                    if self.converge_kit(s, kit_id, origin="sweep") is not None:
                        result.issued += 1
                result.issued += len(commands.sweep_due(
                    s, now=now, ttl_s=self.settings.command_ttl_s))
        if self.publisher is not None:
            with self.db.session() as s:
                commands.sqlite_write_lock(s)  # no ack or supersede is overwritten by "sent"
                commands.defer_offline(s, self.clock.now(), commands.effective_cap_s(
                    self.settings.command_resend_after_s, self.settings.command_backoff_max_s))
                # an unread ack may be for a command now due again: re-send once read
                resends = self._acks_waiting() == 0
                result.resends_held = not resends
                for cmd in commands.to_publish(s, self.clock.now(), resends=resends):
                    result.published += self._publish_one(s, cmd)
        if result.issued or result.expired:
            log.info("sweep", extra={"issued": result.issued, "expired": result.expired,
                                     "published": result.published})
        return result

    # --- messages from kits -----------------------------------------------------

    def lock_kit(self, s: Session, kit_id: str) -> Kit | None:
        """The kit row, locked for this transaction (PostgreSQL row lock; SQLite writer
        lock), read fresh."""
        q = select(Kit).where(Kit.id == kit_id)
        if self.db.is_postgres:
            q = q.with_for_update()
        else:
            commands.sqlite_write_lock(s)
        return s.scalars(q.execution_options(populate_existing=True)).one_or_none()

    def _ack_secret_ok(self, kit: Kit, payload: bytes, ack: protocol.Ack) -> bool:
        """Which secret signed the ack: the current one, or a pending rotation's (which is
        then adopted: the kit has proved it holds it). Unsigned acks pass unless required."""
        if ack.sig is None:
            return not self.settings.require_ack_sig
        fields = json.loads(payload)
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

    def handle_ack(self, kit_id: str, payload: bytes) -> None:
        try:
            ack = protocol.parse_ack(payload)
        except protocol.ContractError as exc:
            self.counters.bad(exc.reason)
            log.warning("bad ack", extra={"kit_id": kit_id, "reason": exc.reason})
            return
        follow_up: Command | None = None
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
            was_pending = before is not None and before.status in commands.PENDING
            cmd = commands.apply_ack(s, kit=kit, ack=ack, now=self.clock.now())
            self.counters.acks += 1
            if cmd is not None and cmd.action == "rotate" and was_pending:
                if ack.result == "rejected":
                    kit.secret_next_enc = None  # the kit kept its secret
                # the state command the rotate superseded goes out again (new secret if any)
                kit.commanded_action = None
                kit.commanded_credit_until = None
            if kit.commanded_action is None and kit.decommissioned_at is None:
                # after a rotation (or a stale refusal): converge under the current secret
                follow_up = self.converge_kit(s, kit_id, origin="sweep")
        if follow_up is not None:
            self.publish([follow_up.id])

    def handle_status(self, kit_id: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained message
        try:
            status = protocol.parse_status(payload)
        except protocol.ContractError as exc:
            self.counters.bad(exc.reason)
            return
        resend: list[str] = []
        now = self.clock.now()
        with self.db.session() as s:
            kit = self.lock_kit(s, kit_id)
            if kit is None:
                self.counters.bad("unknown_kit")
                return
            came_online = status.online and not kit.online
            kit.online = status.online
            kit.fw = status.fw or kit.fw
            kit.last_seen = now
            if came_online:
                # re-send what is still pending the moment the kit is back
                pending = s.scalars(select(Command).where(
                    Command.kit_id == kit_id, Command.status == "sent")).all()
                for c in pending:
                    c.next_attempt_at = now
                    resend.append(c.id)
        self.publish(resend)

    def handle_telemetry(self, kit_id: str, payload: bytes) -> None:
        """Reported state from telemetry; a kit unlocked without credit is corrected."""
        now = self.clock.now()
        try:
            tele = protocol.parse_telemetry(kit_id, payload, now)
        except protocol.ContractError as exc:
            self.counters.bad(exc.reason)
            return
        issued: Command | None = None
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
            want = commands.desired_for(acct, now)
            wrong = (want.action == "lock") != tele.locked
            pending = s.scalar(select(Command.id).where(
                Command.kit_id == kit_id, Command.status.in_(commands.PENDING)).limit(1))
            if wrong and pending is None and tele.ts >= now - 120:
                self.counters.anomalies += 1
                kit.anomaly_count = (kit.anomaly_count or 0) + 1
                kit.last_anomaly_at = now
                log.warning("kit state differs from its account",
                            extra={"kit_id": kit_id, "reported_locked": tele.locked,
                                   "desired": want.action})
                issued = commands.issue(s, kit=kit, want=want, origin="correction", now=now,
                                        ttl_s=self.settings.command_ttl_s)
        if issued is not None:
            self.publish([issued.id])

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

    # --- decommissioning ------------------------------------------------------------

    def clear_retained(self, kit_id: str) -> bool:
        """Remove a decommissioned kit's retained command from the broker."""
        clear = getattr(self.publisher, "clear_retained", None)
        if clear is None:
            return False
        result = clear(kit_id)
        return result is not False
