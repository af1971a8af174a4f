"""The byte layout of kit contract v2 (docs/protocol.md, "Version 2"): CBOR, no rules.

Pure code, no I/O. v2 exists for the 2G data budget: telemetry, the message a kit sends
most, is a CBOR array of small integers carrying several readings (the hour's four), with
fixed-point values instead of floats and the values every reading shares said once.
Commands, acks and status stay CBOR maps with v1's field names (a few a month: their size
does not matter, their likeness to v1 does).

This module only turns bytes into plain Python values and back; whether the values are
acceptable is decided by ``cizo.protocol``, the one validator of both versions.
"""

from __future__ import annotations

from typing import Any

import cbor2

VERSION = 2
TOPIC_ROOT = "k"
# v2 topic kind -> the v1 kind it stands for
KINDS = {"t": "telemetry", "s": "status", "c": "cmd", "a": "cmd/ack"}
SHORT = {long: short for short, long in KINDS.items()}

# Fixed-point scale of each reading value: the wire carries round(value * scale).
SCALES = {"battery_v": 100, "soc": 10, "pv_w": 10, "load_w": 10, "pv_wh_total": 100,
          "load_wh_total": 100, "temp_c": 10}
# One reading on the wire: its ts offset from the message's ts, the scaled values, locked.
READING_FIELDS = ("dts", "battery_v", "soc", "pv_w", "load_w", "pv_wh_total",
                  "load_wh_total", "temp_c", "locked")
# The message: [v, boot, first seq, first ts, credit_until, [reading, ...]]
HEADER_FIELDS = ("v", "boot", "seq", "ts", "credit_until", "readings")
MAX_READINGS = 96  # a day of 15-minute readings: a kit back from an outage flushes in few


class LayoutError(ValueError):
    """Bytes that are not a v2 message's shape. ``reason`` is a ``ContractError`` code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def dumps(value: Any) -> bytes:
    """Deterministic CBOR (RFC 8949 section 4.2: shortest forms, map keys sorted), the
    form signatures are computed over and the form kits send."""
    return cbor2.dumps(value, canonical=True)


def _refuse_tag(_decoder: Any, tag: Any) -> Any:
    raise LayoutError("not_cbor", f"CBOR tag {tag.tag} is not part of the contract")


def loads(payload: bytes) -> Any:
    """One CBOR item; anything else (trailing bytes, unknown tags, broken input) refused."""
    try:
        return cbor2.loads(payload, tag_hook=_refuse_tag)
    except LayoutError:
        raise
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError,
            MemoryError) as exc:
        raise LayoutError("not_cbor", str(exc)[:200]) from exc


def encode_readings(readings: list[dict[str, Any]]) -> bytes:
    """One v2 telemetry message from v1-shaped readings (consecutive ``seq`` of one boot,
    one ``credit_until``: the kit starts a new message when either changes)."""
    if not 0 < len(readings) <= MAX_READINGS:
        raise ValueError(f"a v2 message carries 1 to {MAX_READINGS} readings")
    first = readings[0]
    for i, r in enumerate(readings):
        if (r["boot"] != first["boot"] or r["seq"] != first["seq"] + i
                or r["credit_until"] != first["credit_until"]):
            raise ValueError("readings of one message share boot and credit_until and "
                             "have consecutive seq")
    rows = [[r["ts"] - first["ts"], *(round(r[f] * SCALES[f]) for f in SCALES), r["locked"]]
            for r in readings]
    return dumps([VERSION, first["boot"], first["seq"], first["ts"], first["credit_until"],
                  rows])


def decode_readings(payload: bytes) -> tuple[dict[str, Any], list[dict[str, Any] | LayoutError]]:
    """(header, readings): each reading in v1's shape (``v`` 2), or the ``LayoutError``
    that reading alone breaks. A broken header raises ``LayoutError``: nothing in the
    message can be trusted then."""
    data = loads(payload)
    if not isinstance(data, list) or len(data) != len(HEADER_FIELDS):
        raise LayoutError("not_object", f"a v2 message is an array of {len(HEADER_FIELDS)}")
    v, boot, seq, ts, credit_until, rows = data
    if type(v) is not int or v != VERSION:
        raise LayoutError("wrong_version", f"v={v!r}")
    for name, value in (("boot", boot), ("seq", seq), ("ts", ts)):
        if type(value) is not int:
            raise LayoutError("invalid_field", f"{name}: not an integer")
    if credit_until is not None and type(credit_until) is not int:
        raise LayoutError("invalid_field", "credit_until: not an integer or null")
    if not isinstance(rows, list) or not 0 < len(rows) <= MAX_READINGS:
        raise LayoutError("invalid_field", f"readings: 1 to {MAX_READINGS} expected")
    header = {"v": v, "boot": boot, "seq": seq, "ts": ts, "credit_until": credit_until}
    return header, [_reading(header, i, row) for i, row in enumerate(rows)]


def _reading(header: dict[str, Any], index: int, row: Any) -> dict[str, Any] | LayoutError:
    if not isinstance(row, list) or len(row) != len(READING_FIELDS):
        return LayoutError("invalid_field", f"reading {index}: an array of "
                           f"{len(READING_FIELDS)} expected")
    dts, *scaled, locked = row
    for name, value in zip(READING_FIELDS[:-1], row[:-1], strict=True):
        if type(value) is not int:
            return LayoutError("invalid_field", f"reading {index}: {name} not an integer")
    out: dict[str, Any] = {
        "v": VERSION, "ts": header["ts"] + dts, "seq": header["seq"] + index,
        "boot": header["boot"], "credit_until": header["credit_until"], "locked": locked}
    for name, value in zip(SCALES, scaled, strict=True):
        try:
            out[name] = value / SCALES[name]
        except OverflowError:
            return LayoutError("invalid_field", f"reading {index}: {name} out of range")
    return out
