"""Which kits exist, and since when: the ledger's ``kits`` table, read by the bridge.

Used by the writer thread (never the MQTT network thread) once per batch: the batch's
kit ids not yet known are looked up in one ``WHERE id IN (...)`` query, so a newly
provisioned kit is known at its first reading and a flood of made-up kit ids costs one
query per batch. Unknown ids are remembered for ``negative_ttl_s`` (bounded), so the
same made-up id is not looked up again and again.

If the database cannot be read the registry cannot tell, and says so (``None``): the
bridge then stores the reading rather than lose it, and logs the failure.

The registry only reads, from one thread at a time: its engine needs no more than the
URL's driver and, for SQLite, a busy timeout (the ledger's writers hold the lock now
and then) and use from the writer thread as well as the starting one.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable

from sqlalchemy import Engine, bindparam, create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from cizo.settings import sqlalchemy_url

log = logging.getLogger(__name__)

_LOOKUP = text("SELECT id, created_at FROM kits WHERE id IN :ids").bindparams(
    bindparam("ids", expanding=True))
_CHUNK = 500


class KitRegistry:
    """kit id -> provisioning time (unix s), from the ledger database; bounded caches."""

    def __init__(self, engine: Engine, *, negative_ttl_s: float = 60.0,
                 max_unknown: int = 100_000) -> None:
        self.engine = engine
        self.negative_ttl_s = negative_ttl_s
        self.max_unknown = max_unknown
        self._known: dict[str, float] = {}
        self._unknown: OrderedDict[str, float] = OrderedDict()  # id -> monotonic expiry

    @classmethod
    def from_url(cls, url: str) -> KitRegistry:
        url = sqlalchemy_url(url)
        if url.startswith("sqlite"):
            return cls(create_engine(url, connect_args={"check_same_thread": False,
                                                        "timeout": 30}))
        return cls(create_engine(url))

    def load_all(self) -> int:
        """Read every kit once (at start); returns how many."""
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT id, created_at FROM kits")).all()
        self._known.update({str(r[0]): float(r[1] or 0.0) for r in rows})
        return len(rows)

    def created_at(self, kit_ids: Iterable[str]) -> dict[str, float | None] | None:
        """Provisioning time per kit id (None: no such kit); None if the DB is unreadable."""
        now = time.monotonic()
        result: dict[str, float | None] = {}
        missing: list[str] = []
        for kit in set(kit_ids):
            if kit in self._known:
                result[kit] = self._known[kit]
            elif self._unknown.get(kit, 0.0) > now:
                result[kit] = None
            else:
                missing.append(kit)
        if missing:
            try:
                with self.engine.connect() as conn:
                    for i in range(0, len(missing), _CHUNK):
                        chunk = missing[i:i + _CHUNK]
                        for kit_id, created in conn.execute(_LOOKUP, {"ids": chunk}).all():
                            self._known[str(kit_id)] = float(created or 0.0)
            except SQLAlchemyError as exc:
                log.warning("cannot read the kits table (%s): kit ids not checked",
                            type(exc).__name__)
                return None
            for kit in missing:
                if kit in self._known:
                    result[kit] = self._known[kit]
                    self._unknown.pop(kit, None)
                else:
                    result[kit] = None
                    self._unknown[kit] = now + self.negative_ttl_s
                    self._unknown.move_to_end(kit)
                    if len(self._unknown) > self.max_unknown:
                        self._unknown.popitem(last=False)
        return result

    def close(self) -> None:
        self.engine.dispose()
