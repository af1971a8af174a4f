"""A bounded, fsynced, append-only disk spool for line-protocol batches.

While InfluxDB is down the bridge appends each batch here, fsyncs (one fsync per batch:
the batch is the group of the group commit) and only then acknowledges the batch's
messages to the broker. When InfluxDB answers again the spool is replayed oldest first.

Layout: segment files ``<n>.spool`` in one directory (one directory per bridge process).
A record is ``length (4 bytes, big endian) | crc32 (4 bytes) | body``. A record torn by a
crash (short or with a bad CRC) can only be the tail of a segment: it was never fsynced,
so its messages were never acknowledged and the broker redelivers them; the tail is cut
off when the spool is opened. A segment is deleted once every record in it is written to
InfluxDB; a crash during replay replays the segment again, which rewrites identical
points (idempotent).

Bound: ``max_bytes`` of segment files. When an append would exceed it, ``append`` returns
False and writes nothing: the bridge then stops acknowledging and the backlog waits in
the broker's persistent session instead (backpressure, nothing lost).
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">II")
_SUFFIX = ".spool"


class Spool:
    """Oldest-first queue of byte records on disk; single-threaded (the bridge's writer).

    Other threads read ``records`` and ``size_bytes`` (the bridge's stats): each is one
    counter changed by a single assignment, never a sum over state being changed, so a
    reader never sees a figure that was never true (records 0 with a segment still to
    replay, or below 0).
    """

    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int = 16 << 20) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.segment_bytes = max(1, segment_bytes)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._segments: list[int] = []  # segment numbers, oldest first
        self._sizes: dict[int, int] = {}
        self._records: dict[int, int] = {}
        self._read_seg: int | None = None
        self._read_off = 0
        self._read_index = 0  # records already replayed from the read segment
        self._append_fh: int | None = None  # fd of the newest segment, open for append
        self._pending = 0  # records not yet replayed
        self._bytes = 0  # bytes of the segments on disk
        self._recover()

    # --- opening --------------------------------------------------------------------

    def _path(self, seg: int) -> Path:
        return self.dir / f"{seg:012d}{_SUFFIX}"

    def _recover(self) -> None:
        for path in sorted(self.dir.glob(f"*{_SUFFIX}")):
            seg = int(path.stem)
            data = path.read_bytes()
            good, count = _scan(data)
            if good < len(data):
                log.warning("spool %s: cutting a torn tail of %d bytes (never acknowledged)",
                            path, len(data) - good)
                with path.open("r+b") as fh:
                    fh.truncate(good)
                    os.fsync(fh.fileno())
            if count == 0:
                path.unlink()
                continue
            self._segments.append(seg)
            self._sizes[seg] = good
            self._records[seg] = count
            self._pending += count
            self._bytes += good
        if self._segments:
            log.info("spool %s holds %d records (%d bytes) to replay", self.dir,
                     self.records, self.size_bytes)

    # --- state ------------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def records(self) -> int:
        """Records not yet replayed."""
        return self._pending

    def __bool__(self) -> bool:
        return self.records > 0

    # --- append -----------------------------------------------------------------------

    def append(self, body: bytes) -> bool:
        """Append one record and fsync it; False (nothing written) when the spool is full."""
        record = _HEADER.pack(len(body), zlib.crc32(body)) + body
        if self.size_bytes + len(record) > self.max_bytes:
            return False
        seg = self._segments[-1] if self._segments else None
        if seg is None or self._append_fh is None or self._sizes[seg] >= self.segment_bytes:
            seg = self._new_segment()
        assert self._append_fh is not None
        os.write(self._append_fh, record)
        os.fsync(self._append_fh)
        self._sizes[seg] += len(record)
        self._records[seg] += 1
        self._bytes += len(record)
        self._pending += 1
        return True

    def _new_segment(self) -> int:
        self._close_append()
        seg = (self._segments[-1] + 1) if self._segments else 1
        self._append_fh = os.open(self._path(seg), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        _fsync_dir(self.dir)
        self._segments.append(seg)
        self._sizes[seg] = 0
        self._records[seg] = 0
        return seg

    def _close_append(self) -> None:
        if self._append_fh is not None:
            os.close(self._append_fh)
            self._append_fh = None

    # --- replay -----------------------------------------------------------------------

    def peek(self) -> bytes | None:
        """The oldest record not yet replayed, or None."""
        while self._segments:
            seg = self._segments[0]
            if self._read_seg != seg:
                self._read_seg, self._read_off, self._read_index = seg, 0, 0
            if self._read_index < self._records[seg]:
                with self._path(seg).open("rb") as fh:
                    fh.seek(self._read_off)
                    length, crc = _HEADER.unpack(fh.read(_HEADER.size))
                    body = fh.read(length)
                if zlib.crc32(body) != crc:
                    raise OSError(f"spool segment {self._path(seg)} is corrupt at "
                                  f"offset {self._read_off}")
                return body
            self._drop_segment(seg)
        return None

    def commit(self) -> None:
        """The record ``peek`` returned is stored for good: move past it."""
        seg = self._segments[0]
        with self._path(seg).open("rb") as fh:
            fh.seek(self._read_off)
            length, _ = _HEADER.unpack(fh.read(_HEADER.size))
        self._read_off += _HEADER.size + length
        self._read_index += 1
        self._pending -= 1
        if self._read_index >= self._records[seg]:
            self._drop_segment(seg)

    def _drop_segment(self, seg: int) -> None:
        if self._segments and self._segments[-1] == seg:
            self._close_append()
        self._path(seg).unlink(missing_ok=True)
        self._segments.remove(seg)
        self._bytes -= self._sizes.pop(seg)
        self._pending -= self._records.pop(seg) - (self._read_index
                                                   if self._read_seg == seg else 0)
        self._read_seg, self._read_off, self._read_index = None, 0, 0

    def close(self) -> None:
        self._close_append()


def _scan(data: bytes) -> tuple[int, int]:
    """(bytes of whole valid records from the start, number of those records)."""
    off = count = 0
    while off + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, off)
        end = off + _HEADER.size + length
        if end > len(data) or zlib.crc32(data[off + _HEADER.size:end]) != crc:
            break
        off, count = end, count + 1
    return off, count


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
