"""Leases in the ledger database: a long job runs in one control process at a time.

Every control process schedules the same jobs; a lease row (``job_leases``) says which
process runs one now and until when. Taking it is one conditional UPDATE (or the first
INSERT), so two processes racing for it cannot both win on SQLite or PostgreSQL. A holder
renews it as it goes; a holder that died leaves a lease that simply expires.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

from sqlalchemy import CursorResult, or_, update
from sqlalchemy.exc import IntegrityError

from control.ledger.db import Database
from control.ledger.models import JobLease


def holder_name() -> str:
    """This run, as other processes will see it in ``job_leases.holder``: host, process
    and a token of its own (two runs in one process are two holders too)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    """``with Lease(db, "analytics", ttl_s) as lease: if lease.held: ...``"""

    def __init__(self, db: Database, name: str, ttl_s: float, *, holder: str | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        self.db = db
        self.name = name
        self.ttl_s = ttl_s
        self.holder = holder or holder_name()
        self.wall = wall
        self.held = False

    def acquire(self) -> bool:
        now = self.wall()
        with self.db.session() as s:
            taken = cast(CursorResult[Any], s.execute(
                update(JobLease)
                .where(JobLease.name == self.name,
                       or_(JobLease.expires_at < now, JobLease.holder == self.holder))
                .values(holder=self.holder, expires_at=now + self.ttl_s, progress=None)
            )).rowcount
        if not taken:
            try:
                with self.db.session() as s:
                    s.add(JobLease(name=self.name, holder=self.holder,
                                   expires_at=now + self.ttl_s))
            except IntegrityError:
                taken = 0  # the row exists and another holder's lease is still running
            else:
                taken = 1
        self.held = bool(taken)
        return self.held

    def renew(self, progress: dict[str, Any] | None = None) -> None:
        """Push the expiry on and record how far the job got; fails if the lease was lost."""
        with self.db.session() as s:
            n = cast(CursorResult[Any], s.execute(update(JobLease)
                          .where(JobLease.name == self.name, JobLease.holder == self.holder)
                          .values(expires_at=self.wall() + self.ttl_s, progress=progress)
                          )).rowcount
        if n != 1:
            self.held = False
            raise LeaseLost(f"lease {self.name!r} is no longer held by {self.holder}")

    def release(self) -> None:
        if not self.held:
            return
        with self.db.session() as s:
            s.execute(update(JobLease)
                      .where(JobLease.name == self.name, JobLease.holder == self.holder)
                      .values(expires_at=0.0))
        self.held = False

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class LeaseLost(RuntimeError):
    """Another process took the lease (ours expired): stop before writing anything."""
