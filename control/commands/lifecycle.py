"""Commands as state to converge, not messages fired: issue, sign, track, expire.

The desired state of a kit comes from its account (owned, credit end). Whenever it
differs from what we last commanded, a new command with the next per-kit ``seq`` is
issued and every older pending command of that kit is marked ``superseded``. Only the
kit's own ack moves a command to ``applied`` or ``rejected``.

Lifecycle: ``queued`` (issued, never published) -> ``sent`` (published; re-sent with
exponential backoff and jitter until acked, and at once when the kit comes back online)
-> ``applied`` | ``rejected`` (the kit's ack) | ``expired`` (``expires_at`` passed)
| ``superseded`` (a newer command for the kit was issued).

Several control processes may share one PostgreSQL: rows are claimed with
``FOR UPDATE SKIP LOCKED`` so a command is published by one process per attempt, and
the sweep runs under a transaction-scoped advisory lock (control.commands.service).
"""

from __future__ import annotations

import logging
import random
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, insert, select, text, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from cizo import protocol
from control.ledger import credit
from control.ledger.accounts import state_of
from control.ledger.models import Account, Command, Kit
from control.ledger.secrets import SecretBox

log = logging.getLogger(__name__)

PENDING = ("queued", "sent")
FINAL = ("applied", "rejected", "expired", "superseded")
STATE_ACTIONS = ("unlock", "lock", "own")
REISSUE_ON = ("expired", "replayed_seq")  # other refusals are alerts, not retried blindly


@dataclass(frozen=True, slots=True)
class Desired:
    action: str  # unlock | lock | own
    credit_until: int | None

    @property
    def lock_due_at(self) -> int | None:
        """The kit's ``lock_due_at`` once this is commanded: set only while it is commanded
        unlocked (the sweep's index of kits coming due)."""
        return self.credit_until if self.action == "unlock" else None


def desired_for(acct: Account, now: float) -> Desired:
    if acct.closed_at is not None:
        return Desired("lock", acct.credit_until)  # repossessed: locked for good
    action = credit.desired_action(state_of(acct), now)
    return Desired(action, None if action == "own" else acct.credit_until)


def desired_from(owned: bool, credit_until: int | None, now: float,
                 closed: bool = False) -> Desired:
    """The same rule as ``desired_for`` from bare columns (the batched sweep's rows)."""
    if closed:
        return Desired("lock", credit_until)
    action = credit.desired_action(
        credit.CreditState(0, 0, credit_until, owned), now)
    return Desired(action, None if action == "own" else credit_until)


def commanded(kit: Kit) -> Desired | None:
    if kit.commanded_action is None:
        return None
    return Desired(kit.commanded_action, kit.commanded_credit_until)


def backoff_s(attempts: int, *, base_s: float, cap_s: float, jitter: float,
              rnd: Callable[[], float] = random.random) -> float:
    """Delay before re-sending after ``attempts`` publications: base * 2^(n-1), capped,
    scaled by a random factor in [1 - jitter, 1 + jitter] so a fleet does not move in step.
    A cap below the base never shortens the first delay (a 6 h base with the default 15 min
    cap re-sent every sweep: ``effective_cap_s``)."""
    raw = min(effective_cap_s(base_s, cap_s), base_s * (2 ** max(0, attempts - 1)))
    return float(raw * (1 - jitter + 2 * jitter * rnd()))


def effective_cap_s(base_s: float, cap_s: float) -> float:
    """The longest wait between re-sends: the cap, but never less than the first delay."""
    return max(base_s, cap_s)


def sqlite_write_lock(s: Session) -> None:
    """SQLite: take the database's single writer lock now, with a write that changes nothing.

    SQLite ignores ``FOR UPDATE``, and outside a write transaction each read sees whatever
    committed last: a transaction that reads a kit or a command and then writes it back
    could overwrite a concurrent commit (a command acked meanwhile set back to ``sent``, a
    ``seq`` or token count taken twice). Called first in such a transaction, every read that
    follows sees the latest state and nobody commits before this transaction ends. Nothing
    on PostgreSQL, whose row locks do this."""
    if s.get_bind().dialect.name == "sqlite":
        s.execute(SQLITE_WRITE_LOCK)


SQLITE_WRITE_LOCK = text("UPDATE kits SET cmd_seq = cmd_seq WHERE 0")


def skip_locked(q: Select[Any], s: Session) -> Select[Any]:
    """Row claims for concurrent control processes (PostgreSQL; SQLite has one writer)."""
    bind = s.get_bind()
    if bind.dialect.name == "postgresql":
        return q.with_for_update(skip_locked=True)
    return q


def supersede_pending(s: Session, kit_ids: Sequence[str], now: float) -> None:
    if len(kit_ids) > 1 and s.get_bind().dialect.name == "postgresql":
        s.execute(text(
            "UPDATE commands SET status = 'superseded', finished_at = :now, "
            "next_attempt_at = NULL WHERE kit_id = ANY(CAST(:ids AS varchar[])) "
            "AND status IN ('queued', 'sent')"), {"now": now, "ids": list(kit_ids)})
        return
    s.execute(
        update(Command)
        .where(Command.kit_id.in_(list(kit_ids)), Command.status.in_(PENDING))
        .values(status="superseded", finished_at=now, next_attempt_at=None)
    )


def _next_seq(s: Session, kit: Kit, want: Desired | None) -> int:
    """Take the kit's next ``seq`` in the database (``cmd_seq + 1 ... RETURNING``) and record
    what is now commanded, in the one UPDATE the kit needs anyway.

    Whatever the caller read before (a kit row read without a lock on SQLite, or on a path
    that locks only the account), two transactions never get the same seq: the UPDATE waits
    for the row (PostgreSQL) or the writer lock (SQLite) and counts from the committed value.
    The pending commands it supersedes are looked up after it, so they include any command
    that transaction committed."""
    values: dict[str, Any] = {"cmd_seq": Kit.cmd_seq + 1}
    if want is not None:
        values.update(commanded_action=want.action, commanded_credit_until=want.credit_until,
                      lock_due_at=want.lock_due_at)
    seq = int(s.execute(update(Kit).where(Kit.id == kit.id).values(**values)
                        .returning(Kit.cmd_seq)
                        .execution_options(synchronize_session=False)).scalar_one())
    set_committed_value(kit, "cmd_seq", seq)
    for name, value in values.items():
        if name != "cmd_seq":
            set_committed_value(kit, name, value)
    return seq


def issue(
    s: Session, *, kit: Kit, want: Desired, origin: str, now: float, ttl_s: int
) -> Command:
    """A new command for ``kit``; older pending ones become ``superseded``."""
    seq = _next_seq(s, kit, want)
    supersede_pending(s, [kit.id], now)
    cmd = Command(
        id=str(uuid.uuid4()), kit_id=kit.id, seq=seq, action=want.action,
        credit_until=want.credit_until, issued_at=int(now), expires_at=int(now) + ttl_s,
        status="queued", origin=origin, attempts=0, created_at=now, next_attempt_at=now,
    )
    s.add(cmd)
    log.info("command issued", extra={"kit_id": kit.id, "command_id": cmd.id,
                                      "action": want.action, "seq": cmd.seq, "origin": origin})
    return cmd


def issue_rotate(s: Session, *, kit: Kit, box: SecretBox, now: float, ttl_s: int,
                 origin: str = "support") -> Command:
    """A signed ``rotate`` with a fresh nonce; the derived secret waits in ``secret_next_enc``
    until an ack signed with it proves the kit holds it (control.commands.service.handle_ack)."""
    nonce = secrets.token_hex(16)
    current = box.decrypt(kit.secret_enc)
    kit.secret_next_enc = box.encrypt(protocol.derive_rotated_secret(current, nonce))
    seq = _next_seq(s, kit, None)
    supersede_pending(s, [kit.id], now)
    cmd = Command(
        id=str(uuid.uuid4()), kit_id=kit.id, seq=seq, action="rotate",
        credit_until=None, issued_at=int(now), expires_at=int(now) + ttl_s, status="queued",
        origin=origin, attempts=0, created_at=now, next_attempt_at=now, nonce=nonce,
    )
    # commanded_* and lock_due_at stay: a state command due meanwhile (a payment, the credit
    # running out) supersedes the rotate, and the state command it superseded is sent again
    # once the kit has rotated (or the rotate failed or expired): see ControlService.handle_ack
    s.add(cmd)
    log.info("rotate issued", extra={"kit_id": kit.id, "command_id": cmd.id, "seq": cmd.seq})
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


def rotation_pending(s: Session, kit: Kit) -> bool:
    """A ``rotate`` command of this kit is still queued or sent."""
    return s.scalar(select(Command.id).where(
        Command.kit_id == kit.id, Command.action == "rotate",
        Command.status.in_(PENDING)).limit(1)) is not None


def new_command_row(*, kit_id: str, seq: int, want: Desired, origin: str, now: float,
                    ttl_s: int) -> dict[str, Any]:
    """The columns of a freshly issued (``queued``) state command, for bulk inserts."""
    return {"id": str(uuid.uuid4()), "kit_id": kit_id, "seq": seq, "action": want.action,
            "credit_until": want.credit_until, "issued_at": int(now),
            "expires_at": int(now) + ttl_s, "status": "queued", "origin": origin,
            "attempts": 0, "created_at": now, "next_attempt_at": now}


def command_payload(row: Mapping[str, Any], secret_hex: str) -> bytes:
    """The signed bytes of a command given as columns (a ``commands`` row or its dict)."""
    return protocol.encode(protocol.build_command(
        kit_id=row["kit_id"], command_id=row["id"], seq=row["seq"], action=row["action"],
        credit_until=row["credit_until"], issued_at=row["issued_at"],
        expires_at=row["expires_at"], secret_hex=secret_hex, nonce=row.get("nonce")))


def signed_payload(cmd: Command, box: SecretBox, kit: Kit) -> bytes:
    fields = protocol.build_command(
        kit_id=cmd.kit_id, command_id=cmd.id, seq=cmd.seq, action=cmd.action,  # type: ignore[arg-type]
        credit_until=cmd.credit_until, issued_at=cmd.issued_at, expires_at=cmd.expires_at,
        secret_hex=box.decrypt(kit.secret_enc), nonce=cmd.nonce,
    )
    return protocol.encode(fields)


def due_for_lock(s: Session, now: float, limit: int = 10_000) -> list[str]:
    """Kits commanded unlocked whose credit has ended: one range scan of an index."""
    rows = s.scalars(
        select(Kit.id).where(Kit.lock_due_at <= int(now)).order_by(Kit.lock_due_at).limit(limit)
    )
    return list(rows)


def sweep_due(s: Session, *, now: float, ttl_s: int, origin: str = "sweep",
              limit: int = 50_000) -> list[str]:
    """Issue the commands of every kit whose ``lock_due_at`` has passed, in a few statements.

    One indexed range scan (joined to the account) finds them, then one UPDATE supersedes
    their pending commands, one multi-row INSERT queues the new ones and one executemany
    UPDATE moves their kits: no per-kit round trip, whatever the number due.
    Returns the new commands' ids.
    """
    q = (
        select(Kit.id, Kit.cmd_seq, Kit.commanded_action, Kit.commanded_credit_until,
               Account.owned, Account.credit_until, Account.closed_at)
        .join(Account, Account.kit_id == Kit.id)
        .where(Kit.lock_due_at <= int(now), Kit.decommissioned_at.is_(None))
        .order_by(Kit.lock_due_at)
        .limit(limit)
    )
    if s.get_bind().dialect.name == "postgresql":
        q = q.with_for_update(of=Kit, skip_locked=True)
    rows = s.execute(q).all()
    new_cmds: list[dict[str, Any]] = []
    kit_updates: list[dict[str, Any]] = []
    for r in rows:
        want = desired_from(r.owned, r.credit_until, now, r.closed_at is not None)
        if Desired(r.commanded_action, r.commanded_credit_until) == want:
            # commanded unlock still holds (credit was extended in place): move the index
            kit_updates.append({"id": r.id, "cmd_seq": r.cmd_seq,
                                "commanded_action": want.action,
                                "commanded_credit_until": want.credit_until,
                                "lock_due_at": want.lock_due_at
                                if (want.credit_until or 0) > now else None})
            continue
        seq = r.cmd_seq + 1
        new_cmds.append(new_command_row(kit_id=r.id, seq=seq, want=want, origin=origin,
                                        now=now, ttl_s=ttl_s))
        kit_updates.append({"id": r.id, "cmd_seq": seq, "commanded_action": want.action,
                            "commanded_credit_until": want.credit_until,
                            "lock_due_at": want.lock_due_at})
    if new_cmds:
        supersede_pending(s, [c["kit_id"] for c in new_cmds], now)
    if s.get_bind().dialect.name == "postgresql":
        _pg_write(s, new_cmds, kit_updates, now=now, ttl_s=ttl_s, origin=origin)
    else:
        if new_cmds:
            s.execute(insert(Command), new_cmds)
        if kit_updates:
            s.execute(update(Kit), kit_updates)  # ORM bulk UPDATE by primary key
    if new_cmds:
        log.info("sweep queued %d commands", len(new_cmds), extra={"origin": origin})
    return [c["id"] for c in new_cmds]


_PG_INSERT = text("""
INSERT INTO commands (id, kit_id, seq, action, credit_until, issued_at, expires_at, status,
                      origin, attempts, created_at, next_attempt_at)
SELECT u.id, u.kit_id, u.seq, u.action, u.cu, :issued, :expires, 'queued', :origin, 0,
       :now, :now
FROM unnest(CAST(:ids AS varchar[]), CAST(:kit_ids AS varchar[]), CAST(:seqs AS bigint[]),
            CAST(:actions AS varchar[]), CAST(:cus AS bigint[]))
     AS u(id, kit_id, seq, action, cu)
""")
_PG_UPDATE = text("""
UPDATE kits AS k SET cmd_seq = u.seq, commanded_action = u.action,
                     commanded_credit_until = u.cu, lock_due_at = u.ld
FROM unnest(CAST(:ids AS varchar[]), CAST(:seqs AS bigint[]), CAST(:actions AS varchar[]),
            CAST(:cus AS bigint[]), CAST(:lds AS bigint[])) AS u(id, seq, action, cu, ld)
WHERE k.id = u.id
""")


def _pg_write(s: Session, new_cmds: list[dict[str, Any]], kit_updates: list[dict[str, Any]],
              *, now: float, ttl_s: int, origin: str) -> None:
    """PostgreSQL: the whole batch as one INSERT and one UPDATE over unnest()ed arrays
    (one round trip each, whatever the batch size)."""
    if new_cmds:
        s.execute(_PG_INSERT, {
            "ids": [c["id"] for c in new_cmds], "kit_ids": [c["kit_id"] for c in new_cmds],
            "seqs": [c["seq"] for c in new_cmds], "actions": [c["action"] for c in new_cmds],
            "cus": [c["credit_until"] for c in new_cmds], "issued": int(now),
            "expires": int(now) + ttl_s, "origin": origin, "now": now})
    if kit_updates:
        s.execute(_PG_UPDATE, {
            "ids": [k["id"] for k in kit_updates], "seqs": [k["cmd_seq"] for k in kit_updates],
            "actions": [k["commanded_action"] for k in kit_updates],
            "cus": [k["commanded_credit_until"] for k in kit_updates],
            "lds": [k["lock_due_at"] for k in kit_updates]})


def defer_offline(s: Session, now: float, wait_s: float) -> int:
    """Sent commands due for a resend whose kit is offline wait until ``wait_s`` after
    their last publication instead.

    A command is published retained: an offline kit gets the latest one from the broker
    the moment it reconnects, and reconnecting re-sends whatever is still pending
    (ControlService.handle_status). Re-publishing to a kit that is away only costs work;
    the long wait still re-sends in case the kit's online status was missed."""
    # a keypad-only kit has no modem: one retained copy is all it could ever get (it is
    # served by OpenPAYGO codes); should it connect after all, reconnecting re-sends
    s.execute(
        update(Command)
        .where(Command.status == "sent", Command.next_attempt_at <= now,
               Command.kit_id.in_(select(Kit.id).where(Kit.keypad_only.is_(True),
                                                       Kit.online.is_not(True))))
        .values(next_attempt_at=None)
        .execution_options(synchronize_session=False)
    )
    offline = select(Kit.id).where(Kit.online.is_not(True))
    result = s.execute(
        update(Command)
        .where(Command.status == "sent", Command.next_attempt_at <= now,
               Command.sent_at > now - wait_s, Command.kit_id.in_(offline))
        .values(next_attempt_at=Command.sent_at + wait_s)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def to_publish(s: Session, now: float, limit: int = 1000, *,
               resends: bool = True) -> list[Command]:
    """Pending commands whose next attempt is due (new, or unacked past their backoff;
    only new ones when ``resends`` is false).

    Rows are claimed (SKIP LOCKED): another control process skips them meanwhile.
    """
    q = (
        select(Command)
        .where(Command.next_attempt_at <= now,
               Command.status.in_(PENDING) if resends else Command.status == "queued")
        .order_by(Command.next_attempt_at)
        .limit(limit)
    )
    return list(s.scalars(skip_locked(q, s)))


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
        .values(status="expired", finished_at=now, next_attempt_at=None)
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
    cmd = s.get(Command, ack.id) if ack.id else None
    if cmd is None or cmd.kit_id != kit.id:
        log.warning("ack for unknown command", extra={"kit_id": kit.id, "command_id": ack.id})
        return None
    if cmd.status in ("applied", "rejected"):
        return cmd  # a repeated ack; applied is final
    was_pending = cmd.status in PENDING
    cmd.status = ack.result
    cmd.reason = ack.reason
    cmd.finished_at = now
    cmd.next_attempt_at = None
    if (was_pending and ack.result == "rejected" and cmd.action in STATE_ACTIONS
            and ack.reason in REISSUE_ON):
        # the kit refused it as stale: the next sweep issues a fresh one (higher seq). Not
        # for a command already superseded or expired: a late copy of it is refused as a
        # replay once its successor applied, and re-issuing then only adds commands
        kit.commanded_action = None
        kit.commanded_credit_until = None
        kit.lock_due_at = int(now)
    log.info("command %s", ack.result,
             extra={"kit_id": kit.id, "command_id": cmd.id, "reason": ack.reason})
    return cmd
