"""How kit readings are stored in InfluxDB: measurements, tags, fields, line protocol.

Pure code, no I/O. ``kit_id`` is the only tag: every other value changes from reading
to reading, so as a tag it would multiply the series count (docs/telemetry.md). Times
are whole seconds (writes use ``precision=s``).

Tag values are escaped for ``,``, ``=`` and space. A backslash or a control character
in a tag value cannot be written so that every InfluxDB version reads it back the same
(1.x has no escape for a backslash before a special character or at the end), so such
values raise :class:`LineProtocolError` instead of producing a corrupt or shifted line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from cizo.protocol import Status, Telemetry

TELEMETRY_MEASUREMENT = "kit_telemetry"
STATUS_MEASUREMENT = "kit_status"
TAG_KIT_ID = "kit_id"
PRECISION = "s"

FLOAT_FIELDS = ("battery_v", "soc", "pv_w", "load_w", "pv_wh_total", "load_wh_total", "temp_c")
INTEGER_FIELDS = ("seq", "boot", "credit_until")  # credit_until omitted when null
BOOLEAN_FIELDS = ("locked",)

_TAG_ESCAPES = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_FIELD_STRING_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"'})
_UNWRITABLE = re.compile(r"[\x00-\x1f\x7f\\]")
_UNWRITABLE_STRING = re.compile(r"[\x00-\x1f\x7f]")

# One format for the whole line: a single %-operation per reading keeps encoding fast.
_TELEMETRY_LINE = (
    TELEMETRY_MEASUREMENT + ",kit_id=%s "
    "battery_v=%r,soc=%r,pv_w=%r,load_w=%r,pv_wh_total=%r,load_wh_total=%r,temp_c=%r,"
    "seq=%di,boot=%di,locked=%s%s %d"
)


class LineProtocolError(ValueError):
    """A value that cannot be written as line protocol without corrupting the line."""

    reason = "unencodable"


def escape_tag_value(value: str) -> str:
    """Escape a tag value; refuse values no InfluxDB version would read back intact."""
    if not value:
        raise LineProtocolError("empty tag value")
    if _UNWRITABLE.search(value):
        raise LineProtocolError(f"tag value {value!r} contains a backslash or control character")
    return value.translate(_TAG_ESCAPES)


_kit_tags: dict[str, str] = {}  # kit id -> escaped tag value: one escape per kit, not per line
_MAX_KIT_TAGS = 500_000


def _kit_tag(kit_id: str) -> str:
    tag = _kit_tags.get(kit_id)
    if tag is None:
        if len(_kit_tags) >= _MAX_KIT_TAGS:
            _kit_tags.clear()  # bounded: a flood of made-up kit ids cannot exhaust memory
        tag = _kit_tags[kit_id] = escape_tag_value(kit_id)
    return tag


def quote_string_field(value: str) -> str:
    """A double-quoted string field value."""
    if _UNWRITABLE_STRING.search(value):
        raise LineProtocolError(f"string field {value!r} contains a control character")
    return '"' + value.translate(_FIELD_STRING_ESCAPES) + '"'


def encode_line(t: Telemetry) -> str:
    """One ``kit_telemetry`` line (no trailing newline) for a validated reading.

    Non-finite values are refused here too, for readings built without validation: a
    ``nan`` would make InfluxDB refuse the whole batch's write.
    """
    (_v, kit_id, ts, seq, boot, battery_v, soc, pv_w, load_w, pv_wh_total, load_wh_total,
     locked, credit_until, temp_c) = t
    if not (_isfinite(battery_v) and _isfinite(soc) and _isfinite(pv_w) and _isfinite(load_w)
            and _isfinite(pv_wh_total) and _isfinite(load_wh_total) and _isfinite(temp_c)):
        raise LineProtocolError(f"kit {kit_id!r}: non-finite field value in {t!r}")
    credit = "" if credit_until is None else f",credit_until={credit_until}i"
    return _TELEMETRY_LINE % (
        _kit_tag(kit_id), _float(battery_v), _float(soc), _float(pv_w), _float(load_w),
        _float(pv_wh_total), _float(load_wh_total), _float(temp_c),
        seq, boot, "true" if locked else "false", credit, ts,
    )


_isfinite, _float = math.isfinite, float


def line_kit_id(line: str) -> str:
    """The ``kit_id`` tag of a line this module wrote (for logs and dead letters)."""
    start = line.find(",kit_id=")
    if start < 0:
        return "?"
    start += len(",kit_id=")
    i = start
    while i < len(line):
        if line[i] == "\\":
            i += 2
            continue
        if line[i] in ", ":
            break
        i += 1
    return line[start:i].replace("\\,", ",").replace("\\=", "=").replace("\\ ", " ")


def encode_lines(readings: Iterable[Telemetry]) -> bytes:
    """A whole batch as one ``/write`` body (``precision=s``), lines joined by newlines."""
    return "\n".join([encode_line(t) for t in readings]).encode()


def encode_status_line(kit_id: str, status: Status, ts: int) -> str:
    """One ``kit_status`` line; ``fw`` is omitted when the kit did not report it.

    Status payloads carry no time of their own, so the caller stamps them (receipt time).
    """
    fw = "" if status.fw is None else ",fw=" + quote_string_field(status.fw)
    online = "true" if status.online else "false"
    return f"{STATUS_MEASUREMENT},kit_id={escape_tag_value(kit_id)} online={online}{fw} {ts}"


def encode_status_lines(statuses: Iterable[tuple[str, Status, int]]) -> bytes:
    """``(kit_id, status, ts)`` triples as one ``/write`` body."""
    return "\n".join([encode_status_line(k, s, ts) for k, s, ts in statuses]).encode()
