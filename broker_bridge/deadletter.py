"""The dead-letter store: every message the bridge refused, kept for support to inspect.

One SQLite file (``deadletter.sqlite3`` in ``bridge_deadletter_dir``), shared by every
bridge process on the machine (WAL mode, busy timeout). The bridge adds a batch's
refused messages in one transaction (``synchronous=FULL``) *before* it acknowledges
them, so a refused message is never acknowledged without a trace. The store is bounded:
beyond ``max_rows`` the oldest rows are deleted (checked every few hundred inserts).
Payloads are kept up to ``payload_bytes`` bytes (oversized messages are truncated).

Read with ``cizo deadletter list [--kit K] [--reason R]`` and ``cizo deadletter stats``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

FILENAME = "deadletter.sqlite3"
_PRUNE_EVERY = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deadletter (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    kit_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    payload_size INTEGER NOT NULL,
    bridge TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS deadletter_kit ON deadletter (kit_id, id);
CREATE INDEX IF NOT EXISTS deadletter_reason ON deadletter (reason, id);
"""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One refused message, as received."""

    received_at: float
    kit_id: str
    reason: str
    detail: str
    topic: str
    payload: bytes
    id: int | None = None
    payload_size: int | None = None
    bridge: str = ""


class DeadLetterStore:
    """Append and query dead letters; thread-safe (one connection behind a lock)."""

    def __init__(self, directory: Path, *, max_rows: int = 1_000_000,
                 payload_bytes: int = 4096, bridge: str = "") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / FILENAME
        self.max_rows = max_rows
        self.payload_bytes = payload_bytes
        self.bridge = bridge
        self._lock = threading.Lock()
        self._since_prune = 0
        self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def add_many(self, letters: Iterable[DeadLetter]) -> int:
        """Store letters in one durable transaction; returns how many."""
        rows = [
            (d.received_at, d.kit_id, d.reason, d.detail[:1000], d.topic[:300],
             d.payload[:self.payload_bytes], len(d.payload), d.bridge or self.bridge)
            for d in letters
        ]
        if not rows:
            return 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO deadletter (received_at, kit_id, reason, detail, topic, "
                    "payload, payload_size, bridge) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                self._since_prune += len(rows)
                if self._since_prune >= _PRUNE_EVERY:
                    self._since_prune = 0
                    self._db.execute(
                        "DELETE FROM deadletter WHERE id <= "
                        "(SELECT max(id) FROM deadletter) - ?", (self.max_rows,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(rows)

    def list(self, *, kit_id: str | None = None, reason: str | None = None,
             since: float | None = None, limit: int = 50) -> list[DeadLetter]:
        """Newest first, filtered by kit, reason and receipt time."""
        where: list[str] = []
        args: list[object] = []
        if kit_id is not None:
            where.append("kit_id = ?")
            args.append(kit_id)
        if reason is not None:
            where.append("reason = ?")
            args.append(reason)
        if since is not None:
            where.append("received_at >= ?")
            args.append(since)
        sql = ("SELECT id, received_at, kit_id, reason, detail, topic, payload, payload_size, "
               "bridge FROM deadletter")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [DeadLetter(id=r[0], received_at=r[1], kit_id=r[2], reason=r[3], detail=r[4],
                           topic=r[5], payload=bytes(r[6]), payload_size=r[7], bridge=r[8])
                for r in rows]

    def counts(self, *, kit_id: str | None = None) -> dict[str, int]:
        """Rows per reason (optionally for one kit)."""
        sql = "SELECT reason, count(*) FROM deadletter"
        args: list[object] = []
        if kit_id is not None:
            sql += " WHERE kit_id = ?"
            args.append(kit_id)
        with self._lock:
            rows = self._db.execute(sql + " GROUP BY reason", args).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def total(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM deadletter").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
