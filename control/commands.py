"""Commands as state to converge, not messages fired: issue, sign, track, expire.

The desired state of a kit comes from its account (owned, credit end). Whenever it
differs from what we last commanded, a new command with the next per-kit ``seq`` is
issued and every older pending command of that kit is marked ``superseded``. Only the
kit's own ack moves a command to ``applied`` or ``rejected``.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cizo import protocol
from control import credit
from control.ledger import state_of
from control.models import Account, Command, Kit
from control.security import SecretBox

log = logging.getLogger(__name__)

PENDING = ("queued", "sent")
FINAL = ("applied", "rejected", "expired", "superseded")


@dataclass(frozen=True, slots=True)
class Desired:
    action: str  # unlock | lock | own
    credit_until: int | None


def desired_for(acct: Account, now: float) -> Desired:
    action = credit.desired_action(state_of(acct), now)
    return Desired(action, None if action == "own" else acct.credit_until)


def commanded(kit: Kit) -> Desired | None:
    if kit.commanded_action is None:
        return None
    return Desired(kit.commanded_action, kit.commanded_credit_until)


def issue(
    s: Session, *, kit: Kit, want: Desired, origin: str, now: float, ttl_s: int
) -> Command:
    """A new command for ``kit``; older pending ones become ``superseded``."""
    s.execute(
        update(Command)
        .where(Command.kit_id == kit.id, Command.status.in_(PENDING))
        .values(status="superseded", finished_at=now)
    )
    kit.cmd_seq += 1
    cmd = Command(
        id=str(uuid.uuid4()), kit_id=kit.id, seq=kit.cmd_seq, action=want.action,
        credit_until=want.credit_until, issued_at=int(now), expires_at=int(now) + ttl_s,
        status="queued", origin=origin, attempts=0, created_at=now,
    )
    kit.commanded_action = want.action
    kit.commanded_credit_until = want.credit_until
    kit.lock_due_at = want.credit_until if want.action == "unlock" else None
    s.add(cmd)
    log.info("command issued", extra={"kit_id": kit.id, "command_id": cmd.id,
                                      "action": want.action, "seq": cmd.seq, "origin": origin})
    return cmd


def converge(
    s: Session, *, kit: Kit, acct: Account, origin: str, now: float, ttl_s: int
) -> Command | None:
    """Issue a command if the account's desired state differs from the last command."""
    if kit.decommissioned_at is not None:
        return None
    want = desired_for(acct, now)
    if commanded(kit) == want:
        return None
    return issue(s, kit=kit, want=want, origin=origin, now=now, ttl_s=ttl_s)


def signed_payload(cmd: Command, box: SecretBox, kit: Kit) -> bytes:
    fields = protocol.build_command(
        kit_id=cmd.kit_id, command_id=cmd.id, seq=cmd.seq, action=cmd.action,  # type: ignore[arg-type]
        credit_until=cmd.credit_until, issued_at=cmd.issued_at, expires_at=cmd.expires_at,
        secret_hex=box.decrypt(kit.secret_enc),
    )
    return protocol.encode(fields)


def due_for_lock(s: Session, now: float, limit: int = 10_000) -> list[str]:
    """Kits commanded unlocked whose credit has ended: one range scan of an index."""
    rows = s.scalars(
        select(Kit.id).where(Kit.lock_due_at <= int(now)).order_by(Kit.lock_due_at).limit(limit)
    )
    return list(rows)


def to_publish(s: Session, now: float, resend_after_s: float, limit: int = 1000) -> list[Command]:
    """Queued commands, and sent ones not acked in time (re-sent: the kit is idempotent)."""
    q = (
        select(Command)
        .where(
            (Command.status == "queued")
            | ((Command.status == "sent") & (Command.sent_at < now - resend_after_s))
        )
        .order_by(Command.created_at)
        .limit(limit)
    )
    return list(s.scalars(q))


def expire(s: Session, now: float) -> list[str]:
    """Pending commands past ``expires_at`` become ``expired``; returns their kits' ids."""
    rows = s.execute(
        select(Command.id, Command.kit_id).where(
            Command.status.in_(PENDING), Command.expires_at <= int(now)
        )
    ).all()
    if not rows:
        return []
    s.execute(
        update(Command)
        .where(Command.id.in_([r.id for r in rows]))
        .values(status="expired", finished_at=now)
    )
    # forgetting what we commanded makes the next converge() issue a fresh command
    s.execute(
        update(Kit)
        .where(Kit.id.in_({r.kit_id for r in rows}))
        .values(commanded_action=None, commanded_credit_until=None, lock_due_at=None)
    )
    return sorted({r.kit_id for r in rows})


def apply_ack(s: Session, *, kit: Kit, ack: protocol.Ack, now: float) -> Command | None:
    """Record a kit's ack: the command's final state and what the kit now reports."""
    kit.reported_locked = ack.locked
    kit.reported_credit_until = ack.credit_until
    kit.last_seen = now
    cmd = s.get(Command, ack.id)
    if cmd is None or cmd.kit_id != kit.id:
        log.warning("ack for unknown command", extra={"kit_id": kit.id, "command_id": ack.id})
        return None
    if cmd.status in ("applied", "rejected"):
        return cmd  # a repeated ack; applied is final
    cmd.status = ack.result
    cmd.reason = ack.reason
    cmd.finished_at = now
    log.info("command %s", ack.result,
             extra={"kit_id": kit.id, "command_id": cmd.id, "reason": ack.reason})
    return cmd
