"""The kit contract, v1 and v2 (docs/protocol.md): topics, payloads and command signatures.

Pure code: no I/O. The bridge, the control service and the firmware simulator all
parse and build messages through this module, so the contract lives in one place. v2
is v1's rules in fewer bytes (``cizo.compact`` holds its CBOR layout): the same fields,
the same checks, the same signing; only the encoding and the topics differ.

Why one module of about 600 lines: a rule of the contract (a field's bounds, what a
signature covers, a topic) written in two places would one day differ between the kit,
the bridge and the control service; here each is written once, for both versions.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NamedTuple

import cbor2
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from cizo import compact

PROTOCOL_VERSION = 1
V2 = compact.VERSION
VERSIONS = (PROTOCOL_VERSION, V2)
MAX_PAYLOAD_BYTES = 4096
MAX_FUTURE_SKEW_S = 600  # a reading stamped further ahead than this is rejected
EARLIEST_TS = 1_577_836_800  # 2020-01-01: no CIZO kit reports from before this
MAX_JSON_DEPTH = 4  # v1 payloads are flat objects; deeper nesting is refused unparsed

TOPIC_ROOT = "kits"
TELEMETRY = "telemetry"
STATUS = "status"
CMD = "cmd"
CMD_ACK = "cmd/ack"

# rotate: a new command secret (nonce); protocol: move the kit to another contract version
Action = Literal["unlock", "lock", "own", "rotate", "protocol"]
AckResult = Literal["applied", "rejected"]


class ContractError(ValueError):
    """A message that breaks the v1 contract. ``reason`` is a short stable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# --- kit ids --------------------------------------------------------------------------

# A kit id is one MQTT topic level and the kit's broker username: only these characters,
# on every way in (API, import, topics). The one definition; everything else refers to it.
KIT_ID_MAX_LEN = 64
KIT_ID_PATTERN = rf"^[A-Za-z0-9_-]{{1,{KIT_ID_MAX_LEN}}}$"
_KIT_ID = re.compile(KIT_ID_PATTERN)
KitId = Annotated[str, Field(pattern=KIT_ID_PATTERN)]


def is_kit_id(value: str) -> bool:
    """True for a kit id the contract allows (1-64 of ``A-Z a-z 0-9 - _``)."""
    return _KIT_ID.fullmatch(value) is not None


# --- topics -------------------------------------------------------------------------


def _topic(kit_id: str, kind: str, version: int) -> str:
    if version == V2:
        return f"{compact.TOPIC_ROOT}/{kit_id}/{compact.SHORT[kind]}"
    return f"{TOPIC_ROOT}/{kit_id}/{kind}"


def telemetry_topic(kit_id: str, version: int = PROTOCOL_VERSION) -> str:
    return _topic(kit_id, TELEMETRY, version)


def status_topic(kit_id: str, version: int = PROTOCOL_VERSION) -> str:
    return _topic(kit_id, STATUS, version)


def cmd_topic(kit_id: str, version: int = PROTOCOL_VERSION) -> str:
    return _topic(kit_id, CMD, version)


def ack_topic(kit_id: str, version: int = PROTOCOL_VERSION) -> str:
    return _topic(kit_id, CMD_ACK, version)


def replay_topic(version: int = PROTOCOL_VERSION) -> str:
    """The fleet-wide topic on which the bridges ask every kit to send again what it
    published since a time (``ReplayRequest``): one topic per version, outside every
    kit's own ``{root}/{kit_id}/...`` levels."""
    if version == V2:
        return f"{compact.TOPIC_ROOT}/r"
    return f"{TOPIC_ROOT}/replay"


def replay_version(topic: str) -> int | None:
    """The contract version of a replay topic; None for every other topic."""
    for version in VERSIONS:
        if topic == replay_topic(version):
            return version
    return None


def topic_filters(kind: str) -> list[str]:
    """Every kit's ``kind`` topic, one MQTT filter per version."""
    return [_topic("+", kind, version) for version in VERSIONS]


@dataclass(frozen=True, slots=True)
class Topic:
    kit_id: str
    kind: Literal["telemetry", "status", "cmd", "cmd/ack"]
    version: int = PROTOCOL_VERSION


def parse_topic(topic: str) -> Topic:
    """Split ``kits/{kit_id}/{kind}`` (v1) or ``k/{kit_id}/{t,s,c,a}`` (v2); raises
    ContractError for anything else."""
    parts = topic.split("/")
    if len(parts) < 3 or not is_kit_id(parts[1]):
        raise ContractError("bad_topic", topic)
    kind = "/".join(parts[2:])
    if parts[0] == compact.TOPIC_ROOT and kind in compact.KINDS:
        return Topic(kit_id=parts[1], kind=compact.KINDS[kind], version=V2)  # type: ignore[arg-type]
    if parts[0] != TOPIC_ROOT or kind not in (TELEMETRY, STATUS, CMD, CMD_ACK):
        raise ContractError("bad_topic", topic)
    return Topic(kit_id=parts[1], kind=kind)  # type: ignore[arg-type]


# --- payloads ------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


def _finite_number(value: Any) -> Any:
    """Ints are fine for float fields (strict mode refuses strings); bools and non-finite
    values are not numbers, and an int beyond a float's range is not finite."""
    if isinstance(value, bool):
        raise ValueError("boolean is not a number")
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            raise ValueError("number is not finite") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("number is not finite")
    return value


# Value ranges of a v1 reading (inclusive), read by both implementations of the check.
VOLTS_RANGE = (0.0, 100.0)
PERCENT_RANGE = (0.0, 100.0)
WATTS_RANGE = (0.0, 10_000.0)
WATT_HOURS_RANGE = (0.0, math.inf)
CELSIUS_RANGE = (-40.0, 120.0)

_Number = BeforeValidator(_finite_number)
Volts = Annotated[float, _Number, Field(ge=VOLTS_RANGE[0], le=VOLTS_RANGE[1])]
Percent = Annotated[float, _Number, Field(ge=PERCENT_RANGE[0], le=PERCENT_RANGE[1])]
Watts = Annotated[float, _Number, Field(ge=WATTS_RANGE[0], le=WATTS_RANGE[1])]
WattHours = Annotated[float, _Number, Field(ge=WATT_HOURS_RANGE[0])]  # no upper bound
Celsius = Annotated[float, _Number, Field(ge=CELSIUS_RANGE[0], le=CELSIUS_RANGE[1])]
Count = Annotated[int, Field(ge=0)]


class Telemetry(NamedTuple):
    """One validated reading (v1, or one of a v2 message's). A NamedTuple, not a model:
    the bridge builds one per reading, and a tuple costs a fraction of a model (see
    ``parse_telemetry``)."""

    v: Literal[1, 2]
    kit_id: KitId
    ts: int
    seq: Count
    boot: Count
    battery_v: Volts
    soc: Percent
    pv_w: Watts
    load_w: Watts
    pv_wh_total: WattHours
    load_wh_total: WattHours
    locked: bool
    credit_until: int | None
    temp_c: Celsius


_TELEMETRY = TypeAdapter(Telemetry, config=ConfigDict(strict=True))
_TELEMETRY_FIELDS = frozenset(Telemetry._fields)


class Status(_Strict):
    v: Literal[1, 2]  # the version a kit speaks: it announces it in every status
    online: bool
    fw: str | None = None


class Command(_Strict):
    v: Literal[1, 2]
    kit_id: str
    id: str
    seq: int = Field(ge=1)
    action: Action
    credit_until: int | None
    issued_at: int
    expires_at: int
    sig: str | bytes  # v1: hex text; v2: the 32 raw bytes
    nonce: str | None = None  # rotate only: 32 hex chars, see derive_rotated_secret
    protocol: int | None = None  # the "protocol" action only: the version to speak next


class Ack(_Strict):
    v: Literal[1, 2]
    id: str
    seq: int
    result: AckResult
    reason: str | None = None
    locked: bool
    credit_until: int | None
    sig: str | bytes | None = None  # optional in v1: HMAC of the ack under the kit's secret


class ReplayRequest(_Strict):
    """"Publish again every telemetry message you published at or after ``since``."

    Sent by a bridge when it is subscribed again after losing the broker: a Mosquitto
    restart forgets ``$share`` subscriptions, so what kits published before the bridges
    were back was acknowledged and dropped (docs/protocol.md, "Replay"). Not signed: it
    changes nothing on the kit, only the broker's ACL lets the bridges publish it, and a
    kit answers from a bounded log, so a forged one costs a few messages at most."""

    v: Literal[1, 2]
    since: int = Field(ge=EARLIEST_TS)


def parse_replay(payload: bytes, version: int = PROTOCOL_VERSION) -> ReplayRequest:
    request: ReplayRequest = _model(ReplayRequest, _load(payload, version), version)
    return request


def replay_request(since: int, version: int = PROTOCOL_VERSION) -> bytes:
    """The request's bytes for kits speaking ``version``."""
    return encode({"v": version, "since": int(since)})


def _loads(payload: bytes) -> Any:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ContractError("oversized", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContractError("invalid_utf8", str(exc)) from exc

    def _no_constants(name: str) -> Any:
        raise ContractError("non_finite", name)

    def _finite_float(literal: str) -> float:
        value = float(literal)  # 1e999 parses as inf: as bad as a literal Infinity
        if not math.isfinite(value):
            raise ContractError("non_finite", literal[:40])
        return value

    # the scan is skipped for the usual flat payload (one "{"): no cost on the hot path
    if (text.count("{") + text.count("[") > MAX_JSON_DEPTH
            and _nesting_depth(text) > MAX_JSON_DEPTH):
        raise ContractError("too_deep", f"JSON nested deeper than {MAX_JSON_DEPTH}")
    try:
        data = json.loads(text, parse_constant=_no_constants, parse_float=_finite_float)
    except ContractError:
        raise
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ContractError("not_json", str(exc)[:200]) from exc
    except ValueError as exc:  # e.g. an integer literal beyond Python's digit limit
        raise ContractError("not_json", str(exc)[:200]) from exc
    if not isinstance(data, dict):
        raise ContractError("not_object", type(data).__name__)
    return data


def _load(payload: bytes, version: int) -> Any:
    """A status, command or ack payload as a dict: JSON for v1, a CBOR map for v2."""
    if version != V2:
        return _loads(payload)
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ContractError("oversized", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        data = compact.loads(payload)
    except compact.LayoutError as exc:
        raise ContractError(exc.reason, exc.detail) from exc
    if not isinstance(data, dict):
        raise ContractError("not_object", type(data).__name__)
    return data


def _nesting_depth(text: str) -> int:
    """Deepest ``[``/``{`` nesting outside strings: checked before parsing, so a deeply
    nested payload is refused without the recursion (and time) it would cost ``json.loads``."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _contract_error(exc: ValidationError) -> ContractError:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "payload"
    reason = "wrong_version" if field == "v" else "invalid_field"
    if first["type"] == "missing":
        reason = "missing_field"
    return ContractError(reason, f"{field}: {first['msg']}")


def _model(cls: type[_Strict], data: Any, version: int = PROTOCOL_VERSION) -> Any:
    try:
        msg = cls.model_validate(data)
    except ValidationError as exc:
        raise _contract_error(exc) from exc
    if msg.v != version:  # type: ignore[attr-defined]
        raise ContractError("wrong_version", f"v={msg.v} on a v{version} topic")  # type: ignore[attr-defined]
    return msg


def parse_telemetry(topic_kit_id: str, payload: bytes, now: float) -> Telemetry:
    """Validate one telemetry payload received on ``kits/{topic_kit_id}/telemetry``.

    The one telemetry validator, with two implementations of the same rules: the plain
    checks of ``_plain_telemetry`` answer for the plainly valid reading (almost every
    message) in about a third of the strict implementation's time (5 against 14 µs, one
    2-core machine); anything else goes to ``_strict_telemetry``,
    which accepts it or raises a ContractError with the precise reason. Both agree on
    every payload (tests/test_protocol_telemetry.py).
    """
    reading = _plain_telemetry(topic_kit_id, payload, now)
    if reading is not None:
        return reading
    return _strict_telemetry(topic_kit_id, payload, now)


def _strict_telemetry(topic_kit_id: str, payload: bytes, now: float) -> Telemetry:
    """The contract checked rule by rule through the ``Telemetry`` type's constraints."""
    return validate_reading(_loads(payload), topic_kit_id, now)


def validate_reading(data: Any, kit_id: str, now: float,
                     version: int = PROTOCOL_VERSION) -> Telemetry:
    """One decoded reading (a dict of reading fields) checked against the contract for
    ``kit_id``: the rules every reading obeys, however it arrived (MQTT v1's JSON object, a
    v2 reading, OpenPAYGO Metrics)."""
    if not isinstance(data, dict):
        raise ContractError("not_object", type(data).__name__)
    try:
        tele = _TELEMETRY.validate_python({k: v for k, v in data.items()
                                           if k in _TELEMETRY_FIELDS})  # extra keys ignored
    except ValidationError as exc:
        raise _contract_error(exc) from exc
    if tele.v != version:
        raise ContractError("wrong_version", f"v={tele.v} on a v{version} topic")
    if tele.kit_id != kit_id:
        raise ContractError("kit_id_mismatch", f"payload {tele.kit_id!r} on topic {kit_id!r}")
    if tele.ts > now + MAX_FUTURE_SKEW_S:
        raise ContractError("ts_in_future", f"ts={tele.ts} now={int(now)}")
    if tele.ts < EARLIEST_TS:
        raise ContractError("ts_too_old", f"ts={tele.ts}")
    return tele


_scan_once = json.decoder.JSONDecoder().scan_once  # type: ignore[attr-defined]
_isfinite = math.isfinite
_int, _float, _bool, _str, _dict = int, float, bool, str, dict
_new_telemetry = tuple.__new__  # Telemetry(*values) without its keyword-handling __new__


def _in_range(value: object, low: float, high: float) -> float:
    """A finite number within [low, high] as a float; ValueError otherwise."""
    kind = type(value)
    if kind is _float:
        v: float = value  # type: ignore[assignment]
    elif kind is _int:
        v = _float(value)  # type: ignore[arg-type]  # OverflowError beyond a float
    else:
        raise ValueError
    if not (low <= v <= high) or not _isfinite(v):
        raise ValueError
    return v


def _plain_telemetry(topic_kit_id: str, payload: bytes, now: float) -> Telemetry | None:
    """The reading if it is plainly valid, else None: never refuses, never accepts
    what ``_strict_telemetry`` refuses.

    One flat JSON object with exact types, checked with plain comparisons (no model, the
    JSON scanner called directly). Anything unusual (whitespace around the object,
    nesting, a missing key, a bool where a number goes, NaN, out of range, another kit
    id...) is left to the strict implementation, which gives the reason.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None
    try:
        text = payload.decode()
        if text.count("{") != 1 or "[" in text:
            return None  # nesting (and its depth limit) is the strict parser's to judge
        d, end = _scan_once(text, 0)
        if type(d) is not _dict or end != len(text):
            return None
        v, kid, ts, seq, boot = d["v"], d["kit_id"], d["ts"], d["seq"], d["boot"]
        locked, credit = d["locked"], d["credit_until"]
        if (type(v) is not _int or v != 1 or type(kid) is not _str or kid != topic_kit_id
                or not is_kit_id(kid) or type(ts) is not _int
                or type(seq) is not _int or type(boot) is not _int or seq < 0 or boot < 0
                or type(locked) is not _bool
                or (credit is not None and type(credit) is not _int)
                or not (EARLIEST_TS <= ts <= now + MAX_FUTURE_SKEW_S)):
            return None
        return _new_telemetry(Telemetry, (
            1, kid, ts, seq, boot,
            _in_range(d["battery_v"], *VOLTS_RANGE), _in_range(d["soc"], *PERCENT_RANGE),
            _in_range(d["pv_w"], *WATTS_RANGE), _in_range(d["load_w"], *WATTS_RANGE),
            _in_range(d["pv_wh_total"], *WATT_HOURS_RANGE),
            _in_range(d["load_wh_total"], *WATT_HOURS_RANGE),
            locked, credit, _in_range(d["temp_c"], *CELSIUS_RANGE),
        ))
    except (ValueError, KeyError, TypeError, OverflowError, StopIteration):
        return None


def parse_readings(topic_kit_id: str, payload: bytes, now: float
                   ) -> list[Telemetry | ContractError]:
    """Validate one v2 telemetry message received on ``k/{topic_kit_id}/t``: each of its
    readings, or the ContractError that reading alone breaks (the others stand). A message
    whose envelope is broken (not CBOR, wrong version, bad header) raises ContractError:
    none of its readings can be trusted then.

    Two implementations of the same rules, as for v1: ``_plain_readings`` answers for a
    plainly valid message (a fifth of the time), anything else goes to
    ``_strict_readings``, which gives each reason (tests/test_protocol_v2.py: they agree).
    """
    readings = _plain_readings(topic_kit_id, payload, now)
    if readings is not None:
        return readings
    return _strict_readings(topic_kit_id, payload, now)


_SCALED = tuple(compact.SCALES.values())
_V2_RANGES = (VOLTS_RANGE, PERCENT_RANGE, WATTS_RANGE, WATTS_RANGE, WATT_HOURS_RANGE,
              WATT_HOURS_RANGE, CELSIUS_RANGE)  # in compact.SCALES's order
_cbor_loads = cbor2.loads
_list = list


def _plain_readings(topic_kit_id: str, payload: bytes, now: float
                    ) -> list[Telemetry | ContractError] | None:
    """The readings if the whole message is plainly valid, else None: never refuses,
    never accepts what ``_strict_readings`` refuses. Exact types, plain comparisons."""
    if len(payload) > MAX_PAYLOAD_BYTES or not is_kit_id(topic_kit_id):
        return None
    try:
        v, boot, seq0, ts0, credit, rows = _cbor_loads(payload)
        if (type(v) is not _int or v != V2 or type(boot) is not _int or boot < 0
                or type(seq0) is not _int or seq0 < 0 or type(ts0) is not _int
                or (credit is not None and type(credit) is not _int)
                or type(rows) is not _list or not 0 < len(rows) <= compact.MAX_READINGS):
            return None
        latest = now + MAX_FUTURE_SKEW_S
        out: list[Telemetry | ContractError] = []
        for i, row in enumerate(rows):
            dts, bat, soc, pv, load, pv_wh, load_wh, temp, locked = row
            ts = ts0 + dts
            values = []
            for x, scale, (low, high) in zip((bat, soc, pv, load, pv_wh, load_wh, temp),
                                             _SCALED, _V2_RANGES, strict=True):
                if type(x) is not _int:
                    return None
                f = x / scale
                if not low <= f <= high or not _isfinite(f):
                    return None
                values.append(f)
            if (type(dts) is not _int or type(locked) is not _bool
                    or not EARLIEST_TS <= ts <= latest):
                return None
            out.append(_new_telemetry(Telemetry, (
                V2, topic_kit_id, ts, seq0 + i, boot, values[0], values[1], values[2],
                values[3], values[4], values[5], locked, credit, values[6])))
        return out
    except (ValueError, TypeError, OverflowError, KeyError, RecursionError, MemoryError,
            cbor2.CBORDecodeError):
        return None


def _strict_readings(topic_kit_id: str, payload: bytes, now: float
                     ) -> list[Telemetry | ContractError]:
    """Each reading checked rule by rule (``validate_reading``), with its reason."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ContractError("oversized", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        _header, readings = compact.decode_readings(payload)
    except compact.LayoutError as exc:
        raise ContractError(exc.reason, exc.detail) from exc
    out: list[Telemetry | ContractError] = []
    for reading in readings:
        if isinstance(reading, compact.LayoutError):
            out.append(ContractError(reading.reason, reading.detail))
            continue
        try:
            out.append(validate_reading({**reading, "kit_id": topic_kit_id}, topic_kit_id, now,
                                        V2))
        except ContractError as exc:
            out.append(ContractError(exc.reason, f"reading seq={reading['seq']}: {exc.detail}"))
    return out


def parse_status(payload: bytes, version: int = PROTOCOL_VERSION) -> Status:
    status: Status = _model(Status, _load(payload, version), version)
    return status


def parse_ack(payload: bytes, version: int = PROTOCOL_VERSION) -> Ack:
    ack: Ack = _model(Ack, _load(payload, version), version)
    return ack


def parse_command(payload: bytes, version: int = PROTOCOL_VERSION) -> Command:
    cmd: Command = _model(Command, _load(payload, version), version)
    return cmd


def fields_of(payload: bytes, version: int = PROTOCOL_VERSION) -> dict[str, Any]:
    """A parsed message's fields exactly as sent (what its signature covers, unknown
    fields included); call after ``parse_command`` or ``parse_ack`` accepted it."""
    data: dict[str, Any] = _load(payload, version)
    return data


# --- command signatures --------------------------------------------------------------


def new_command_secret() -> str:
    """32 random bytes as 64 hex characters."""
    import secrets

    return secrets.token_hex(32)


def canonical_bytes(fields: dict[str, Any]) -> bytes:
    """The exact bytes that are signed: the message without ``sig``, in its version's
    canonical form: canonical JSON for v1, deterministic CBOR (RFC 8949 4.2) for v2."""
    body = {k: v for k, v in fields.items() if k != "sig"}
    if body.get("v") == V2:
        return compact.dumps(body)
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def mac(fields: dict[str, Any], secret_hex: str) -> bytes:
    """HMAC-SHA256 of the canonical bytes under the secret's 32 raw bytes."""
    return hmac.new(bytes.fromhex(secret_hex), canonical_bytes(fields), hashlib.sha256).digest()


def sign(fields: dict[str, Any], secret_hex: str) -> str | bytes:
    """The ``sig`` value: hex text in v1, the raw 32 bytes in v2."""
    digest = mac(fields, secret_hex)
    return digest if fields.get("v") == V2 else digest.hex()


def verify(fields: dict[str, Any], secret_hex: str) -> bool:
    """Constant-time check of ``fields['sig']`` against the kit's secret."""
    sig = fields.get("sig")
    if not isinstance(sig, str | bytes) or isinstance(sig, str) == (fields.get("v") == V2):
        return False
    expected = sign(fields, secret_hex)
    return hmac.compare_digest(expected, sig)  # type: ignore[arg-type]


def build_command(
    *,
    kit_id: str,
    command_id: str,
    seq: int,
    action: Action,
    credit_until: int | None,
    issued_at: int,
    expires_at: int,
    secret_hex: str,
    nonce: str | None = None,
    protocol: int | None = None,
    version: int = PROTOCOL_VERSION,
) -> dict[str, Any]:
    """A signed command in ``version``, ready for ``encode`` (``nonce``: rotate only;
    ``protocol``: the "protocol" action only)."""
    fields: dict[str, Any] = {
        "v": version,
        "kit_id": kit_id,
        "id": command_id,
        "seq": seq,
        "action": action,
        "credit_until": credit_until,
        "issued_at": issued_at,
        "expires_at": expires_at,
    }
    if nonce is not None:
        fields["nonce"] = nonce
    if protocol is not None:
        fields["protocol"] = protocol
    fields["sig"] = sign(fields, secret_hex)
    return fields


def derive_rotated_secret(secret_hex: str, nonce: str) -> str:
    """The new secret after a ``rotate``: HMAC-SHA256(old secret, "rotate" + nonce).

    The key is the old secret's 32 raw bytes, the message the ASCII bytes of ``rotate``
    followed by the nonce as sent (hex text); the result, as 64 hex chars, is the new
    secret. Both sides compute it, so the secret itself never travels.
    """
    msg = b"rotate" + nonce.encode("ascii")
    return hmac.new(bytes.fromhex(secret_hex), msg, hashlib.sha256).hexdigest()


def sign_ack(fields: dict[str, Any], secret_hex: str) -> dict[str, Any]:
    """An ack with its optional ``sig`` (same canonical form as commands), so control can
    tell a kit's ack from a forged one."""
    out = {k: v for k, v in fields.items() if k != "sig"}
    out["sig"] = sign(out, secret_hex)
    return out


def encode(message: dict[str, Any] | BaseModel) -> bytes:
    """A status, command or ack for the wire, in its ``v``: compact JSON for v1,
    deterministic CBOR for v2."""
    if isinstance(message, BaseModel):
        message = message.model_dump()
    if message.get("v") == V2:
        return compact.dumps(message)
    return json.dumps(message, separators=(",", ":")).encode()
