"""A day's ``DayStats`` as bytes, so the nightly job reads each day of telemetry once.

The 30-day figures come from each day's ``DayStats`` alone (``analytics.WindowBuilder``),
so a day that will not change any more is kept in the ledger database and the next nights
take it from there instead of reading its hours from InfluxDB again. A stored day carries
its kits' ids: kits added since have no row in it (they reported nothing that day), and
decommissioned kits' rows are dropped when it is laid on tonight's kit list.

Bytes are an ``.npz`` (numpy's own format, no pickle) compressed with zlib: floats keep
every bit, so a window built from stored days is the window built from the hours.
Pure: no I/O.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

import numpy as np
import numpy.typing as npt

from telemetry.analytics import DayStats, blank_day, day_stats

FORMAT = 1  # a stored day of another format is read again from InfluxDB
_STATS = tuple(f.name for f in fields(DayStats))
_AS_BOOL = ("profile_n",)  # 0.0/1.0 floats: stored as one byte, given back as floats


class UnknownFormat(ValueError):
    """A stored day written by another version of this module."""


def pack(kit_ids: Sequence[str], stats: DayStats) -> bytes:
    """One day of every kit, as bytes (``kit_ids[i]`` is row i of every array)."""
    arrays: dict[str, npt.NDArray[Any]] = {
        "format": np.array(FORMAT), "kit_ids": np.array(kit_ids, dtype=np.str_)}
    for name in _STATS:
        value = getattr(stats, name)
        arrays[name] = value.astype(bool) if name in _AS_BOOL else value
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    return zlib.compress(buffer.getbuffer(), 1)


def unpack(blob: bytes) -> tuple[npt.NDArray[np.str_], DayStats]:
    """The kit ids and the day's stats; ``UnknownFormat`` for another format."""
    with np.load(io.BytesIO(zlib.decompress(blob)), allow_pickle=False) as z:
        if "format" not in z.files or int(z["format"]) != FORMAT:
            raise UnknownFormat("stored analytics day of another format")
        stats = {name: (z[name].astype(np.float64) if name in _AS_BOOL else z[name])
                 for name in _STATS}
        return z["kit_ids"], DayStats(**stats)


def _empty_row() -> DayStats:
    """What a kit that reported nothing that day contributes (one row)."""
    return day_stats(blank_day(1))


def aligned(kit_ids: npt.NDArray[np.str_], stats: DayStats, index: Mapping[str, int]
            ) -> DayStats:
    """The stored day laid on tonight's kits (``index``: kit id -> row): kits absent from
    it get the empty day, kits no longer listed are left out."""
    kits = len(index)
    if len(kit_ids) == kits and all(index.get(str(k)) == i for i, k in enumerate(kit_ids)):
        return stats  # the same kits in the same order: nearly every night
    at = np.fromiter((index.get(str(k), -1) for k in kit_ids), dtype=np.int64,
                     count=len(kit_ids))
    keep = at >= 0
    empty = _empty_row()
    out = {}
    for name in _STATS:
        value = getattr(stats, name)
        fill = getattr(empty, name)
        grid = np.empty((kits, *value.shape[1:]), dtype=value.dtype)
        grid[:] = fill[0]
        grid[at[keep]] = value[keep]
        out[name] = grid
    return DayStats(**out)
