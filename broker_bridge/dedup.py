"""Recent readings per kit: tells a redelivery from a conflicting reading. Pure, no I/O.

InfluxDB identifies a point by measurement, ``kit_id`` and time. A redelivered copy of a
reading (same kit, same ``ts``, same values) rewrites the same point: harmless. A
*different* reading with the same kit and ``ts`` would silently overwrite the first, and
a reading reusing a ``(boot, seq)`` pair under another ``ts`` is a kit bug or a replay:
both are refused (dead-lettered) instead.

The record is bounded: ``max_entries`` readings, oldest forgotten first (FIFO). Keys are
64-bit hashes of ``(kit_id, ts)`` and ``(kit_id, boot, seq)`` (the chance of a false
match among 10^6 entries is about 10^-8 and would dead-letter, never drop, a reading).
About 250 bytes per remembered reading: the default 600,000 readings cost ~150 MB and
cover 30 minutes of a 300,000-kit fleet at 15-minute intervals. The record lives in
memory: after a bridge restart it starts empty, so a conflict with a reading received
before the restart is not detected (the redelivered copies are then simply rewritten).
"""

from __future__ import annotations

from collections import deque
from typing import Final

NEW: Final = "new"
REPEAT: Final = "repeat"  # identical redelivery: write again, idempotent
TS_CONFLICT: Final = "ts_conflict"
DUPLICATE_SEQ: Final = "duplicate_seq"


class RecentReadings:
    """Bounded memory of recent readings; not thread-safe (the MQTT network thread owns it)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max(1, max_entries)
        self._by_ts: dict[int, int] = {}
        self._by_seq: dict[int, int] = {}
        self._order: deque[tuple[int, int]] = deque()

    def __len__(self) -> int:
        return len(self._order)

    def check(self, kit_id: str, ts: int, boot: int, seq: int, digest: int) -> str:
        """NEW (and remembered), REPEAT, TS_CONFLICT or DUPLICATE_SEQ."""
        kts = hash((kit_id, ts))
        known = self._by_ts.get(kts)
        if known is not None:
            return REPEAT if known == digest else TS_CONFLICT
        kseq = hash((kit_id, boot, seq))
        if kseq in self._by_seq:
            return DUPLICATE_SEQ  # same (boot, seq) under another ts
        self._by_ts[kts] = digest
        self._by_seq[kseq] = ts
        self._order.append((kts, kseq))
        if len(self._order) > self.max_entries:
            old_ts, old_seq = self._order.popleft()
            self._by_ts.pop(old_ts, None)
            self._by_seq.pop(old_seq, None)
        return NEW
