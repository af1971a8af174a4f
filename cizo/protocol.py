"""The kit contract, v1 (docs/protocol.md): topics, payloads and command signatures.

Pure code: no I/O. The bridge, the control service and the firmware simulator all
parse and build messages through this module, so the contract lives in one place.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PROTOCOL_VERSION = 1
MAX_PAYLOAD_BYTES = 4096
MAX_FUTURE_SKEW_S = 600  # a reading stamped further ahead than this is rejected
EARLIEST_TS = 1_577_836_800  # 2020-01-01: no CIZO kit reports from before this
MAX_JSON_DEPTH = 4  # v1 payloads are flat objects; deeper nesting is refused unparsed

TOPIC_ROOT = "kits"
TELEMETRY = "telemetry"
STATUS = "status"
CMD = "cmd"
CMD_ACK = "cmd/ack"

Action = Literal["unlock", "lock", "own", "rotate"]  # rotate: a new command secret (nonce)
AckResult = Literal["applied", "rejected"]


class ContractError(ValueError):
    """A message that breaks the v1 contract. ``reason`` is a short stable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# --- topics -------------------------------------------------------------------------


def telemetry_topic(kit_id: str) -> str:
    return f"{TOPIC_ROOT}/{kit_id}/{TELEMETRY}"


def status_topic(kit_id: str) -> str:
    return f"{TOPIC_ROOT}/{kit_id}/{STATUS}"


def cmd_topic(kit_id: str) -> str:
    return f"{TOPIC_ROOT}/{kit_id}/{CMD}"


def ack_topic(kit_id: str) -> str:
    return f"{TOPIC_ROOT}/{kit_id}/{CMD_ACK}"


@dataclass(frozen=True, slots=True)
class Topic:
    kit_id: str
    kind: Literal["telemetry", "status", "cmd", "cmd/ack"]


def parse_topic(topic: str) -> Topic:
    """Split ``kits/{kit_id}/{kind}``; raises ContractError for anything else."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[0] != TOPIC_ROOT or not parts[1]:
        raise ContractError("bad_topic", topic)
    kind = "/".join(parts[2:])
    if kind not in (TELEMETRY, STATUS, CMD, CMD_ACK):
        raise ContractError("bad_topic", topic)
    return Topic(kit_id=parts[1], kind=kind)  # type: ignore[arg-type]


# --- payloads ------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


class Telemetry(_Strict):
    v: Literal[1]
    kit_id: str = Field(min_length=1, max_length=64)
    ts: int
    seq: int = Field(ge=0)
    boot: int = Field(ge=0)
    battery_v: float = Field(ge=0, le=100)
    soc: float = Field(ge=0, le=100)
    pv_w: float = Field(ge=0, le=10_000)
    load_w: float = Field(ge=0, le=10_000)
    pv_wh_total: float = Field(ge=0)
    load_wh_total: float = Field(ge=0)
    locked: bool
    credit_until: int | None
    temp_c: float = Field(ge=-40, le=120)

    @field_validator("battery_v", "soc", "pv_w", "load_w", "pv_wh_total", "load_wh_total",
                     "temp_c", mode="before")
    @classmethod
    def _finite_number(cls, value: Any) -> Any:
        # strict mode refuses strings; ints are fine for float fields
        if isinstance(value, bool):
            raise ValueError("boolean is not a number")
        if isinstance(value, int):
            return float(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("number is not finite")
        return value


class Status(_Strict):
    v: Literal[1]
    online: bool
    fw: str | None = None


class Command(_Strict):
    v: Literal[1]
    kit_id: str
    id: str
    seq: int = Field(ge=1)
    action: Action
    credit_until: int | None
    issued_at: int
    expires_at: int
    sig: str
    nonce: str | None = None  # rotate only: 32 hex chars, see derive_rotated_secret


class Ack(_Strict):
    v: Literal[1]
    id: str
    seq: int
    result: AckResult
    reason: str | None = None
    locked: bool
    credit_until: int | None
    sig: str | None = None  # optional in v1: HMAC of the ack under the kit's secret


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


def _model(cls: type[_Strict], data: Any) -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "payload"
        reason = "wrong_version" if field == "v" else "invalid_field"
        if first["type"] == "missing":
            reason = "missing_field"
        raise ContractError(reason, f"{field}: {first['msg']}") from exc


def parse_telemetry(topic_kit_id: str, payload: bytes, now: float) -> Telemetry:
    """Validate one telemetry payload received on ``kits/{topic_kit_id}/telemetry``."""
    data = _loads(payload)
    tele: Telemetry = _model(Telemetry, data)
    if tele.kit_id != topic_kit_id:
        raise ContractError("kit_id_mismatch", f"payload {tele.kit_id!r} on topic {topic_kit_id!r}")
    if tele.ts > now + MAX_FUTURE_SKEW_S:
        raise ContractError("ts_in_future", f"ts={tele.ts} now={int(now)}")
    if tele.ts < EARLIEST_TS:
        raise ContractError("ts_too_old", f"ts={tele.ts}")
    return tele


def parse_status(payload: bytes) -> Status:
    status: Status = _model(Status, _loads(payload))
    return status


def parse_ack(payload: bytes) -> Ack:
    ack: Ack = _model(Ack, _loads(payload))
    return ack


def parse_command(payload: bytes) -> Command:
    cmd: Command = _model(Command, _loads(payload))
    return cmd


# --- command signatures --------------------------------------------------------------


def new_command_secret() -> str:
    """32 random bytes as 64 hex characters."""
    import secrets

    return secrets.token_hex(32)


def canonical_bytes(fields: dict[str, Any]) -> bytes:
    """The exact bytes that are signed: the command without ``sig``, canonical JSON."""
    body = {k: v for k, v in fields.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign(fields: dict[str, Any], secret_hex: str) -> str:
    return hmac.new(bytes.fromhex(secret_hex), canonical_bytes(fields), hashlib.sha256).hexdigest()


def verify(fields: dict[str, Any], secret_hex: str) -> bool:
    """Constant-time check of ``fields['sig']`` against the kit's secret."""
    sig = fields.get("sig")
    if not isinstance(sig, str):
        return False
    return hmac.compare_digest(sign(fields, secret_hex), sig)


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
) -> dict[str, Any]:
    """A signed v1 command, ready to be published as JSON (``nonce``: rotate only)."""
    fields: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
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
    """Compact JSON for the wire."""
    if isinstance(message, BaseModel):
        message = message.model_dump()
    return json.dumps(message, separators=(",", ":")).encode()
