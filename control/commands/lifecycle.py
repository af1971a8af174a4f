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
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    ColumnElement,
    Connection,
    Float,
    Integer,
    Select,
    String,
    Table,
    any_,
    bindparam,
    case,
    func,
    insert,
    null,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from cizo import protocol
from control.commands.desired import (
    PENDING,
    REISSUE_ON,
    STATE_ACTIONS,
    Desired,
    commanded,
    desired_from,
)
from control.ledger.db import SQLITE_WRITE_LOCK
from control.ledger.models import Account, Command, Kit
from control.ledger.writes import Write, dialect, sql_text, write_all

log = logging.getLogger(__name__)

C, K, A = (cast(Table, m.__table__) for m in (Command, Kit, Account))


def desired_for(acct: Account, now: float) -> Desired:
    """The kit's desired state from its account."""
    return desired_from(acct.owned, acct.credit_until, now, acct.closed_at is not None)


def sqlite_write_lock(s: Session | Connection) -> None:
    """SQLite: take the database's single writer lock now, with a write that changes nothing.

    SQLite ignores ``FOR UPDATE``, and outside a write transaction each read sees whatever
    committed last: a transaction that reads a kit or a command and then writes it back
    could overwrite a concurrent commit (a command acked meanwhile set back to ``sent``, a
    ``seq`` or token count taken twice). Called first in such a transaction, every read that
    follows sees the latest state and nobody commits before this transaction ends. Nothing
    on PostgreSQL, whose row locks do this."""
    if dialect(s) == "sqlite":
        s.execute(SQLITE_WRITE_LOCK)


def skip_locked(q: Select[Any], s: Session) -> Select[Any]:
    """Row claims for concurrent control processes (PostgreSQL; SQLite has one writer)."""
    bind = s.get_bind()
    if bind.dialect.name == "postgresql":
        return q.with_for_update(skip_locked=True)
    return q


def lock_kits(s: Session, kit_ids: Sequence[str]) -> list[Kit]:
    """These kits' rows, locked for this transaction (PostgreSQL row locks, in id order so
    two transactions never wait on each other; SQLite's writer lock), read fresh."""
    if not kit_ids:
        return []
    q = select(Kit).where(Kit.id.in_(list(kit_ids))).order_by(Kit.id)
    if dialect(s) == "postgresql":
        q = q.with_for_update()
    else:
        sqlite_write_lock(s)
    return list(s.scalars(q.execution_options(populate_existing=True)))


def supersede_pending(s: Session | Connection, kit_ids: Sequence[str], now: float) -> None:
    """Every queued or sent command of these kits becomes ``superseded``."""
    write_all(s, [_supersede(kit_ids, now, postgres=dialect(s) == "postgresql")])


def _supersede(kit_ids: Sequence[str], now: float, *, postgres: bool) -> Write:
    if postgres and len(kit_ids) > 1:
        return Write(_SUPERSEDE_MANY, {"k_kits": list(kit_ids), "now": now})
    rows = [{"k_kit": k, "now": now} for k in kit_ids]
    return Write(_SUPERSEDE, rows[0] if len(rows) == 1 else rows)


def _superseding(kits: ColumnElement[bool]) -> Any:
    """Pending commands of ``kits`` superseded. Constants are written into the SQL
    (``sql_text``), not bound: fewer parameters keep a credit's bundle of writes within what
    the PostgreSQL driver caches."""
    return (update(C).where(kits, or_(*(C.c.status == sql_text(s) for s in PENDING)))
            .values(status=sql_text("superseded"), finished_at=bindparam("now"),
                    next_attempt_at=null()))


# The statements below come in two shapes built from one rule: a row at a time (one kit;
# executemany for a batch on SQLite, in-process), and on PostgreSQL a whole batch in one
# statement over unnest()ed arrays, so a sweep's thousands of kits cost one round trip.
_SUPERSEDE = _superseding(C.c.kit_id == bindparam("k_kit"))
_SUPERSEDE_MANY = _superseding(C.c.kit_id == any_(bindparam("k_kits", type_=ARRAY(String))))


@dataclass(frozen=True, slots=True)
class KitSeq:
    """A kit row as the issuing transaction holds it (locked): its last ``seq`` and what it
    was last commanded."""

    kit_id: str
    cmd_seq: int
    commanded: Desired | None
    lock_due_at: int | None
    secret_enc: str | None  # None: read without it (the sweep queues, it does not sign)
    protocol_version: int = protocol.PROTOCOL_VERSION

    @classmethod
    def of(cls, kit: Kit) -> KitSeq:
        return cls(kit.id, kit.cmd_seq, commanded(kit.commanded_action,
                                                  kit.commanded_credit_until),
                   kit.lock_due_at, kit.secret_enc, kit.protocol_version)


def new_command_row(*, kit_id: str, seq: int, action: str, credit_until: int | None,
                    origin: str, now: float, ttl_s: int, nonce: str | None = None
                    ) -> dict[str, Any]:
    """The columns of a freshly issued (``queued``) command."""
    return {"id": str(uuid.uuid4()), "kit_id": kit_id, "seq": seq, "action": action,
            "credit_until": credit_until, "issued_at": int(now),
            "expires_at": int(now) + ttl_s, "status": "queued", "origin": origin,
            "attempts": 0, "created_at": now, "next_attempt_at": now, "sent_at": None,
            "nonce": nonce}


def kit_move(kit_id: str, prev_seq: int, seq: int, want: Desired | None,
             lock_due_at: int | None) -> dict[str, Any]:
    """A kit's new seq and commanded state (``want`` None: unchanged, as for a rotate)."""
    return {"k_id": kit_id, "k_prev": prev_seq, "k_seq": seq, "k_keep": want is None,
            "k_action": want.action if want is not None else None,
            "k_until": want.credit_until if want is not None else None,
            "k_due": lock_due_at}


def issue_writes(rows: Sequence[dict[str, Any]], kits: Sequence[dict[str, Any]],
                 now: float, *, postgres: bool) -> list[Write]:
    """The one writer of issued commands, as writes for the caller's transaction: move each
    kit's seq and commanded state, supersede the pending commands of every kit that gets a
    new one, insert the new ones.

    Each kit's seq was read under its row lock (PostgreSQL ``FOR UPDATE``, SQLite's writer
    lock); the UPDATE matches only that seq, so a caller that forgot the lock fails loudly
    (``WriteCountError``) instead of issuing a seq twice."""
    writes = []
    if kits:
        writes.append(_move(kits, postgres))
    if rows:
        writes.append(_supersede([r["kit_id"] for r in rows], now, postgres=postgres))
        writes.append(_insert(rows, postgres))
        if len(rows) == 1:
            r = rows[0]
            log.info("command issued", extra={"kit_id": r["kit_id"], "command_id": r["id"],
                                              "action": r["action"], "seq": r["seq"],
                                              "origin": r["origin"]})
        else:  # a sweep's thousands: one line (each command is in the commands table)
            log.info("%d commands issued", len(rows), extra={"origin": rows[0]["origin"]})
    return writes


def write_issued(conn: Session | Connection, rows: Sequence[dict[str, Any]],
                 kits: Sequence[dict[str, Any]], now: float) -> None:
    """``issue_writes``, written now."""
    write_all(conn, issue_writes(rows, kits, now, postgres=dialect(conn) == "postgresql"))


# A kit move's columns, one rule for both shapes below.
_MOVE_FIELDS: dict[str, Any] = {"id": String, "prev": BigInteger, "seq": BigInteger,
                                "keep": Boolean, "action": String, "until": BigInteger,
                                "due": BigInteger}


def _moved(src: Mapping[str, Any]) -> dict[str, Any]:
    """What moving a kit writes, from its ``_MOVE_FIELDS`` values (``keep``: what is
    commanded stays, as for a rotate)."""
    keep = src["keep"]
    return {"cmd_seq": src["seq"],
            "commanded_action": case((keep, K.c.commanded_action), else_=src["action"]),
            "commanded_credit_until": case((keep, K.c.commanded_credit_until),
                                           else_=src["until"]),
            "lock_due_at": case((keep, K.c.lock_due_at), else_=src["due"])}


_ROW = {name: bindparam(f"k_{name}", type_=kind) for name, kind in _MOVE_FIELDS.items()}
_MOVE_KIT = update(K).where(K.c.id == _ROW["id"], K.c.cmd_seq == _ROW["prev"]).values(
    _moved(_ROW))
_BATCH = select(*(func.unnest(bindparam(f"k_{name}s", type_=ARRAY(kind))).label(name)
                  for name, kind in _MOVE_FIELDS.items())).subquery("moves")
_MOVE_KITS = update(K).where(K.c.id == _BATCH.c.id, K.c.cmd_seq == _BATCH.c.prev).values(
    _moved(dict(_BATCH.c.items())))


def _move(kits: Sequence[dict[str, Any]], postgres: bool) -> Write:
    if postgres and len(kits) > 1:
        return Write(_MOVE_KITS, {f"k_{name}s": [k[f"k_{name}"] for k in kits]
                                  for name in _MOVE_FIELDS}, rows=len(kits))
    return Write(_MOVE_KIT, kits[0] if len(kits) == 1 else list(kits), rows=len(kits))


# A new command's columns, one list for both shapes below.
_COMMAND_FIELDS: dict[str, Any] = {
    "id": String, "kit_id": String, "seq": BigInteger, "action": String,
    "credit_until": BigInteger, "issued_at": BigInteger, "expires_at": BigInteger,
    "status": String, "origin": String, "attempts": Integer, "created_at": Float,
    "next_attempt_at": Float, "sent_at": Float, "nonce": String}
_INSERT_COMMAND = insert(C).values({name: bindparam(f"c_{name}", type_=kind)
                                    for name, kind in _COMMAND_FIELDS.items()})
_INSERT_COMMANDS = insert(C).from_select(list(_COMMAND_FIELDS), select(*(
    func.unnest(bindparam(f"c_{name}s", type_=ARRAY(kind))).label(name)
    for name, kind in _COMMAND_FIELDS.items())))


def _insert(rows: Sequence[dict[str, Any]], postgres: bool) -> Write:
    if postgres and len(rows) > 1:
        return Write(_INSERT_COMMANDS, {f"c_{name}s": [r[name] for r in rows]
                                        for name in _COMMAND_FIELDS})
    params = [{f"c_{name}": r[name] for name in _COMMAND_FIELDS} for r in rows]
    return Write(_INSERT_COMMAND, params[0] if len(params) == 1 else params)


def plan_state_command(kit: KitSeq, want: Desired, *, origin: str, now: float, ttl_s: int
                       ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The command row and kit move that command ``want`` to ``kit``."""
    row = new_command_row(kit_id=kit.kit_id, seq=kit.cmd_seq + 1, action=want.action,
                          credit_until=want.credit_until, origin=origin, now=now, ttl_s=ttl_s)
    return row, kit_move(kit.kit_id, kit.cmd_seq, row["seq"], want, want.lock_due_at)


def plan_rotate(kit: KitSeq, *, nonce: str, origin: str, now: float, ttl_s: int
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ``rotate`` command row and its kit move.

    What is commanded and ``lock_due_at`` stay: a state command due meanwhile (a payment,
    the credit running out) supersedes the rotate, and the state command it superseded is
    sent again once the kit has rotated (or the rotate failed or expired): see
    ControlService.handle_ack."""
    row = new_command_row(kit_id=kit.kit_id, seq=kit.cmd_seq + 1, action="rotate",
                          credit_until=None, origin=origin, now=now, ttl_s=ttl_s, nonce=nonce)
    return row, kit_move(kit.kit_id, kit.cmd_seq, row["seq"], None, kit.lock_due_at)


def sync_kit(kit: Kit, move: dict[str, Any]) -> None:
    """Make a session's Kit object show what ``write_issued`` wrote, without reading it."""
    set_committed_value(kit, "cmd_seq", move["k_seq"])
    if not move["k_keep"]:
        set_committed_value(kit, "commanded_action", move["k_action"])
        set_committed_value(kit, "commanded_credit_until", move["k_until"])
        set_committed_value(kit, "lock_due_at", move["k_due"])


def rotation_pending(s: Session, kit: Kit) -> bool:
    """A ``rotate`` command of this kit is still queued or sent."""
    return s.scalar(select(Command.id).where(
        Command.kit_id == kit.id, Command.action == "rotate",
        Command.status.in_(PENDING)).limit(1)) is not None


def plan_protocol(kit: KitSeq, *, version: int, origin: str, now: float, ttl_s: int
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ``protocol`` command row (move the kit to contract ``version``) and its kit move.
    The version travels in the row's ``nonce`` column (the action's argument); what is
    commanded stays, as for a rotate."""
    if version not in protocol.VERSIONS:
        raise ValueError(f"unknown kit contract version {version}")
    row = new_command_row(kit_id=kit.kit_id, seq=kit.cmd_seq + 1, action="protocol",
                          credit_until=None, origin=origin, now=now, ttl_s=ttl_s,
                          nonce=str(version))
    return row, kit_move(kit.kit_id, kit.cmd_seq, row["seq"], None, kit.lock_due_at)


def command_payload(row: Mapping[str, Any], secret_hex: str, version: int) -> bytes:
    """The signed bytes of a command given as columns (a ``commands`` row or its dict), in
    the contract ``version`` the kit speaks."""
    argument = row.get("nonce")
    is_protocol = row["action"] == "protocol"
    return protocol.encode(protocol.build_command(
        kit_id=row["kit_id"], command_id=row["id"], seq=row["seq"], action=row["action"],
        credit_until=row["credit_until"], issued_at=row["issued_at"],
        expires_at=row["expires_at"], secret_hex=secret_hex,
        nonce=None if is_protocol else argument,
        protocol=int(argument) if is_protocol and argument else None, version=version))


def due_for_lock(s: Session, now: float, limit: int = 10_000) -> list[str]:
    """Kits commanded unlocked whose credit has ended: one range scan of an index."""
    rows = s.scalars(
        select(Kit.id).where(Kit.lock_due_at <= int(now)).order_by(Kit.lock_due_at).limit(limit)
    )
    return list(rows)


def sweep_due(s: Session, *, now: float, ttl_s: int, origin: str = "sweep",
              limit: int = 50_000) -> list[str]:
    """Issue the commands of every kit whose ``lock_due_at`` has passed, in a few statements.

    One indexed range scan (joined to the account) finds them and locks their kit rows,
    then ``write_issued`` moves the kits, supersedes their pending commands and queues the
    new ones: no per-kit round trip, whatever the number due. Returns the new commands' ids.
    """
    q = (
        select(K.c.id, K.c.cmd_seq, K.c.commanded_action, K.c.commanded_credit_until,
               A.c.owned, A.c.credit_until, A.c.closed_at)
        .join(A, A.c.kit_id == K.c.id)
        .where(K.c.lock_due_at <= int(now), K.c.decommissioned_at.is_(None))
        .order_by(K.c.lock_due_at)
        .limit(limit)
    )
    if dialect(s) == "postgresql":
        q = q.with_for_update(of=K, skip_locked=True)
    new_cmds: list[dict[str, Any]] = []
    moves: list[dict[str, Any]] = []
    for r in s.execute(q).all():
        kit = KitSeq(r.id, r.cmd_seq, commanded(r.commanded_action, r.commanded_credit_until),
                     None, None)
        want = desired_from(r.owned, r.credit_until, now, r.closed_at is not None)
        if kit.commanded == want:
            # the commanded unlock still holds (credit was extended in place): only the
            # sweep's index moves
            due = want.lock_due_at if (want.credit_until or 0) > now else None
            moves.append(kit_move(kit.kit_id, kit.cmd_seq, kit.cmd_seq, want, due))
            continue
        row, move = plan_state_command(kit, want, origin=origin, now=now, ttl_s=ttl_s)
        new_cmds.append(row)
        moves.append(move)
    write_issued(s, new_cmds, moves, now)
    return [c["id"] for c in new_cmds]


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
