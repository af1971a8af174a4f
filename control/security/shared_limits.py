"""Rate limits every control process shares: the counters live in the ledger database.

A hit is one atomic upsert of the key's row (``INSERT ... ON CONFLICT DO UPDATE ...
RETURNING``, the same statement on PostgreSQL and SQLite) that rolls the window and counts
in one step, so concurrent hits from any number of processes are all counted; a check is
one primary-key read. The window arithmetic is pure (control/security/ratelimit.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select, text

from control.ledger.db import Database
from control.ledger.models import RateLimit
from control.runtime import Runtime
from control.security.ratelimit import Counts, Rule, estimate, retry_after

_HIT = text("""
INSERT INTO rate_limits (bucket, window_start, hits, prev_hits)
VALUES (:bucket, :start, 1, 0)
ON CONFLICT (bucket) DO UPDATE SET
    prev_hits = CASE WHEN rate_limits.window_start = :start THEN rate_limits.prev_hits
                     WHEN rate_limits.window_start = :before THEN rate_limits.hits
                     ELSE 0 END,
    hits = CASE WHEN rate_limits.window_start = :start THEN rate_limits.hits + 1
                ELSE 1 END,
    window_start = :start
RETURNING window_start, hits, prev_hits
""")


class SharedLimit:
    """One named limit (``rule``) over keys such as a client address or an API key."""

    def __init__(self, db: Database, name: str, rule: Rule) -> None:
        self.db = db
        self.name = name
        self.rule = rule

    def _bucket(self, key: str) -> str:
        return f"{self.name}:{key}"[:200]

    def prune(self, now: float) -> int:
        """Forget keys with no hit in the current or the previous window (they count for
        nothing any more); the number of rows removed."""
        cutoff = self.rule.window_start(now) - self.rule.window_s
        with self.db.engine.begin() as conn:
            result = conn.execute(delete(RateLimit).where(
                RateLimit.bucket.startswith(f"{self.name}:", autoescape=True),
                RateLimit.window_start < cutoff))
        return int(result.rowcount or 0)

    def counts(self, key: str) -> Counts:
        with self.db.engine.connect() as conn:
            row = conn.execute(
                select(RateLimit.window_start, RateLimit.hits, RateLimit.prev_hits)
                .where(RateLimit.bucket == self._bucket(key))).one_or_none()
        return Counts(0.0, 0, 0) if row is None else Counts(*row)

    def retry_after(self, key: str, now: float) -> float:
        """0 if ``key`` is under its limit, else seconds to wait; records nothing."""
        return retry_after(self.rule, self.counts(key), now)

    def add(self, key: str, now: float) -> Counts:
        """Count one event for ``key``; the counters after it."""
        start = self.rule.window_start(now)
        with self.db.engine.begin() as conn:
            row = conn.execute(_HIT, {"bucket": self._bucket(key), "start": start,
                                      "before": start - self.rule.window_s}).one()
        return Counts(*row)

    def hit(self, key: str, now: float) -> float:
        """Count one attempt; 0 if it is within the limit, else seconds to wait.

        A refused attempt counts too: hammering does not shorten the wait."""
        counts = self.add(key, now)
        if estimate(self.rule, counts, now) <= self.rule.limit:
            return 0.0
        return retry_after(self.rule, counts, now)


@dataclass(frozen=True)
class Limits:
    """The control service's limits, from the runtime's settings (docs/security.md)."""

    failed_auth: SharedLimit  # per client address
    unlocks: SharedLimit  # per API key

    @classmethod
    def of(cls, rt: Runtime) -> Limits:
        st = rt.settings
        return cls(
            failed_auth=SharedLimit(rt.db, "auth_fail",
                                    Rule(st.auth_fail_limit, st.auth_fail_window_s)),
            unlocks=SharedLimit(rt.db, "unlock", Rule(st.unlock_limit, st.unlock_window_s)),
        )

    def prune(self, now: float) -> int:
        return self.failed_auth.prune(now) + self.unlocks.prune(now)
