"""The fast path for a plainly valid telemetry message: JSON to line protocol, no model.

Profiling the bridge showed the pydantic model (``cizo.protocol.parse_telemetry``) as
the largest cost per message after paho itself. Almost every message is valid, so this
module checks the v1 contract with plain type and range tests and formats the line
directly. It only ever *accepts*: on anything unusual (a missing key, a bool where a
number goes, NaN, out of range, a kit id to escape...) it returns None and the caller
runs the contract's own parser, which rejects with the precise reason or accepts. A test
(tests/test_bridge_fastpath.py) checks both paths agree on valid and invalid messages.
"""

from __future__ import annotations

import json
import math

from cizo.protocol import EARLIEST_TS, MAX_FUTURE_SKEW_S, MAX_PAYLOAD_BYTES
from telemetry.schema import TELEMETRY_LINE_FORMAT, escape_tag_value

_scan_once = json.decoder.JSONDecoder().scan_once  # type: ignore[attr-defined]
_escaped: dict[str, str] = {}  # kit id -> escaped tag value (bounded below)
_MAX_ESCAPED = 500_000
_isfinite = math.isfinite
_int, _float, _bool, _str, _dict = int, float, bool, str, dict


def _num(value: object, low: float, high: float) -> float:
    """A finite number within [low, high] as a float; ValueError otherwise."""
    kind = type(value)
    if kind is _float:
        v: float = value  # type: ignore[assignment]
    elif kind is _int:
        v = _float(value)  # type: ignore[arg-type]
    else:
        raise ValueError
    if not (low <= v <= high) or not _isfinite(v):
        raise ValueError
    return v


def fast_telemetry(kit_id: str, payload: bytes,
                   now: float) -> tuple[str, int, int, int] | None:
    """``(line, ts, boot, seq)`` for a plainly valid reading, else None (use the parser)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None
    try:
        text = payload.decode()
        d, end = _scan_once(text, 0)
        if type(d) is not _dict or end != len(text):
            return None  # also leading/trailing whitespace: the parser decides
        v, kid, ts, seq, boot = d["v"], d["kit_id"], d["ts"], d["seq"], d["boot"]
        locked, credit = d["locked"], d["credit_until"]
        if (type(v) is not _int or v != 1 or type(kid) is not _str or kid != kit_id
                or len(kid) > 64 or type(ts) is not _int or type(seq) is not _int
                or type(boot) is not _int or seq < 0 or boot < 0 or type(locked) is not _bool
                or not (EARLIEST_TS <= ts <= now + MAX_FUTURE_SKEW_S)):
            return None
        if credit is None:
            credit_part = ""
        elif type(credit) is _int:
            credit_part = f",credit_until={credit}i"
        else:
            return None
        inf = math.inf
        tag = _escaped.get(kid)
        if tag is None:
            if len(_escaped) >= _MAX_ESCAPED:
                _escaped.clear()
            tag = _escaped[kid] = escape_tag_value(kid)
        line = TELEMETRY_LINE_FORMAT % (
            tag,
            _num(d["battery_v"], 0, 100), _num(d["soc"], 0, 100),
            _num(d["pv_w"], 0, 10_000), _num(d["load_w"], 0, 10_000),
            _num(d["pv_wh_total"], 0, inf), _num(d["load_wh_total"], 0, inf),
            _num(d["temp_c"], -40, 120),
            seq, boot, "true" if locked else "false", credit_part, ts,
        )
    except (ValueError, KeyError, TypeError, RecursionError, StopIteration):
        return None
    return line, ts, boot, seq
