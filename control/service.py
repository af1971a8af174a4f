"""The control loop: converge each kit to its account, publish signed commands, read acks.

I/O stays at the edges: the database through ``Database``, the broker through a
``CommandPublisher`` (the real one is control.mqtt_link.MqttLink; tests may pass any
object with the same method).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.orm import Session

from cizo import protocol
from cizo.clock import Clock
from cizo.settings import Settings
from control import commands
from control.db import Database
from control.ledger import account_for_kit
from control.models import Command, Kit
from control.security import SecretBox

log = logging.getLogger(__name__)


class CommandPublisher(Protocol):
    def publish_command(self, kit_id: str, payload: bytes) -> bool:
        """Publish retained at QoS1 on kits/{kit_id}/cmd; False if the broker is away."""
        ...


@dataclass
class SweepResult:
    expired: int = 0
    issued: int = 0
    published: int = 0


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

    def converge_kit(self, s: Session, kit_id: str, origin: str) -> Command | None:
        """Inside the caller's transaction: issue a command if the kit must change."""
        kit = s.get(Kit, kit_id)
        acct = account_for_kit(s, kit_id)
        if kit is None or acct is None:
            return None
        return commands.converge(
            s, kit=kit, acct=acct, origin=origin, now=self.clock.now(),
            ttl_s=self.settings.command_ttl_s,
        )

    def publish(self, command_ids: list[str]) -> int:
        """Publish these commands now (after their transaction committed)."""
        if self.publisher is None or not command_ids:
            return 0
        sent = 0
        with self.db.session() as s:
            for cid in command_ids:
                cmd = s.get(Command, cid)
                if cmd is not None and cmd.status in commands.PENDING:
                    sent += self._publish_one(s, cmd)
        return sent

    def _publish_one(self, s: Session, cmd: Command) -> int:
        assert self.publisher is not None
        kit = s.get(Kit, cmd.kit_id)
        if kit is None:
            return 0
        payload = commands.signed_payload(cmd, self.box, kit)
        if not self.publisher.publish_command(cmd.kit_id, payload):
            return 0
        cmd.status = "sent"
        cmd.sent_at = self.clock.now()
        cmd.attempts += 1
        return 1

    def sweep(self) -> SweepResult:
        """One pass: expire stale commands, lock kits whose credit ended, (re)publish."""
        now = self.clock.now()
        result = SweepResult()
        with self.db.session() as s:
            expired_kits = commands.expire(s, now)
            result.expired = len(expired_kits)
            # a kit whose command expired converges again from its account
            for kit_id in [*expired_kits, *commands.due_for_lock(s, now)]:
                if self.converge_kit(s, kit_id, origin="sweep") is not None:
                    result.issued += 1
        if self.publisher is not None:
            with self.db.session() as s:
                for cmd in commands.to_publish(s, now, self.settings.command_resend_after_s):
                    result.published += self._publish_one(s, cmd)
        if result.issued or result.expired:
            log.info("sweep", extra={"issued": result.issued, "expired": result.expired,
                                     "published": result.published})
        return result

    # --- messages from kits -----------------------------------------------------

    def handle_ack(self, kit_id: str, payload: bytes) -> None:
        try:
            ack = protocol.parse_ack(payload)
        except protocol.ContractError as exc:
            self.counters.bad(exc.reason)
            log.warning("bad ack", extra={"kit_id": kit_id, "reason": exc.reason})
            return
        with self.db.session() as s:
            kit = s.get(Kit, kit_id)
            if kit is None:
                self.counters.bad("unknown_kit")
                return
            commands.apply_ack(s, kit=kit, ack=ack, now=self.clock.now())
            self.counters.acks += 1

    def handle_status(self, kit_id: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained message
        try:
            status = protocol.parse_status(payload)
        except protocol.ContractError as exc:
            self.counters.bad(exc.reason)
            return
        resend: list[str] = []
        with self.db.session() as s:
            kit = s.get(Kit, kit_id)
            if kit is None:
                self.counters.bad("unknown_kit")
                return
            came_online = status.online and not kit.online
            kit.online = status.online
            kit.fw = status.fw or kit.fw
            kit.last_seen = self.clock.now()
            if came_online:
                # re-send what is still pending the moment the kit is back
                resend = [c.id for c in s.query(Command).filter(
                    Command.kit_id == kit_id, Command.status == "sent")]
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
            kit = s.get(Kit, kit_id)
            acct = account_for_kit(s, kit_id)
            if kit is None or acct is None:
                self.counters.bad("unknown_kit")
                return
            kit.reported_locked = tele.locked
            kit.reported_credit_until = tele.credit_until
            kit.last_seen = now
            want = commands.desired_for(acct, now)
            wrong = (want.action == "lock") != tele.locked
            pending = s.query(Command).filter(
                Command.kit_id == kit_id, Command.status.in_(commands.PENDING)).count()
            if wrong and not pending and tele.ts >= now - 120:
                self.counters.anomalies += 1
                log.warning("kit state differs from its account",
                            extra={"kit_id": kit_id, "reported_locked": tele.locked,
                                   "desired": want.action})
                issued = commands.issue(s, kit=kit, want=want, origin="correction", now=now,
                                        ttl_s=self.settings.command_ttl_s)
        if issued is not None:
            self.publish([issued.id])
