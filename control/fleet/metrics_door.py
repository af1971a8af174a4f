"""The OpenPAYGO Metrics door: one device request in, its readings stored, its answer out.

A Metrics device (a kit of kind ``openpaygo_metrics``) posts its data to ``/dd`` and gets
back its active-until time and the OpenPAYGO tokens issued since it last heard from us
(docs/protocol.md, "OpenPAYGO Metrics"): a payment reaches it on its next request. Its
tokens come from the one token path (``control.commands.tokens``): the payment's receipt
issues them (the device is ``keypad_only``), and each request issues whatever the chain
still lacks (an activation after a deposit, say). Checking and answering go through the
``openpaygo`` library's ``MetricsResponseHandler``: its signature check (SipHash-2-4 under
the kit's OpenPAYGO key, every auth mode of the spec), its replay rule (the request count
or timestamp must exceed the last one taken), its decoding of condensed payloads and its
signed answer. Readings are mapped and checked by ``cizo.openpaygo_metrics`` and written to
the same ``kit_telemetry`` measurement as MQTT kits.

One transaction per request, with the kit's row locked from the first read: two requests
of one device queue up, so a replay racing its original is refused too, and nothing is
kept (no reading, no replay counter, no token marked delivered) unless the whole request
is: readings are written to InfluxDB inside it, and a failed write rolls it back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from openpaygo import MetricsResponseHandler
from sqlalchemy import select
from sqlalchemy.orm import Session

from cizo import openpaygo_metrics as contract
from cizo.protocol import MAX_FUTURE_SKEW_S, ContractError
from control.commands.tokens import issue_token, openpaygo_key
from control.ledger.accounts import account_for_kit
from control.ledger.db import SQLITE_WRITE_LOCK
from control.ledger.models import KIT_METRICS, Kit, KitToken
from control.runtime import Runtime
from telemetry.errors import InfluxError
from telemetry.influx import InfluxClient
from telemetry.schema import LineProtocolError, encode_lines

log = logging.getLogger(__name__)

# What the library raises on a payload it cannot read (a list where a dict goes, an
# unknown historical variable index, a data format without the order it needs...).
_LIBRARY_ERRORS = (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError)

INFLUX_TIMEOUT_S = 5.0  # the device waits on the line: a slow InfluxDB is a refusal (503)


class MetricsRefused(Exception):
    """A request refused before anything was kept: HTTP ``status``, a stable ``code``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Answer:
    kit_id: str
    body: dict[str, Any]  # the library's condensed, signed answer
    readings: int
    tokens: int


def handle(rt: Runtime, request: Mapping[str, Any]) -> Answer:
    """Check, store and answer one decoded request (a JSON object, from JSON or CBOR)."""
    try:
        handler = MetricsResponseHandler(json.dumps(request))
    except _LIBRARY_ERRORS as exc:
        raise MetricsRefused(400, "malformed_body", f"not a Metrics request: {exc}") from exc
    serial = handler.get_device_serial()
    if not isinstance(serial, str) or not serial:
        raise MetricsRefused(400, "malformed_body", "serial_number (sn) is required")
    _choose_data_format(handler)
    now = rt.clock.now()
    rc, ts = _request_count_and_time(handler, now)
    with rt.db.session() as s:
        kit = _lock_device(rt, s, serial)
        key = openpaygo_key(rt.box.decrypt(kit.secret_enc))
        _check_auth(handler, key, kit)
        acct = account_for_kit(s, kit.id)
        credit_until = acct.credit_until if acct is not None else None
        owned = bool(acct is not None and acct.owned)
        if ts is None:
            handler.timestamp = int(now)  # the library would use the host's clock
        try:
            simple = handler.get_simple_metrics()
            readings = contract.readings(kit.id, simple, seq=rc or 0, now=now,
                                         credit_until=credit_until, owned=owned)
            body = encode_lines(readings)
        except ContractError as exc:
            raise MetricsRefused(422, f"bad_reading.{exc.reason}", str(exc)) from exc
        except LineProtocolError as exc:
            raise MetricsRefused(422, "bad_reading.unencodable", str(exc)) from exc
        except _LIBRARY_ERRORS as exc:
            raise MetricsRefused(400, "bad_data_format", str(exc)) from exc
        if body:
            try:
                with InfluxClient.from_settings(rt.settings, timeout_s=INFLUX_TIMEOUT_S) as c:
                    c.write(body)
            except InfluxError as exc:
                log.warning("metrics readings not stored: InfluxDB %s", type(exc).__name__,
                            extra={"kit_id": kit.id})
                raise MetricsRefused(503, "storage_unavailable",
                                     "readings could not be stored; send them again") from exc
        if acct is not None:
            # the device's token chain brought to the ledger's end (a payment's receipt
            # has usually done it; None when nothing is due): the one token path
            issue_token(s, kit=kit, box=rt.box, credit_until=credit_until, owned=owned,
                        now=now, created_by="openpaygo_metrics")
        tokens = _deliver_tokens(s, handler, kit.id, now)
        _add_time(handler, simple, credit_until, now)
        if rc is not None:
            kit.metrics_request_count = rc
        if ts is not None:
            kit.metrics_request_ts = ts
        kit.last_seen = now
        answer = handler.get_answer_dict()
    log.info("metrics request taken", extra={"kit_id": kit.id, "readings": len(readings),
                                             "tokens": len(tokens), "request_count": rc})
    return Answer(kit.id, answer, len(readings), len(tokens))


def _choose_data_format(handler: MetricsResponseHandler) -> None:
    """A format named by id must be one we registered; an inline one is the request's."""
    format_id = handler.get_data_format_id()
    if format_id is None:
        return
    if handler.request_dict.get("data_format") is not None:
        raise MetricsRefused(400, "bad_data_format",
                             "data_format (dfo) and data_format_id (df) cannot both be given")
    fmt = contract.data_format(format_id)
    if fmt is None:
        raise MetricsRefused(400, "unknown_data_format", f"no data format {format_id!r}")
    handler.set_device_parameters(data_format=fmt)


def _request_count_and_time(handler: MetricsResponseHandler,
                            now: float) -> tuple[int | None, int | None]:
    """The request count and timestamp, of which at least one is needed: the replay guard.
    A timestamp far ahead is refused, or one forged request would lock its device out."""
    rc, ts = handler.get_request_count(), handler.get_request_timestamp()
    for name, value in (("request_count (rc)", rc), ("timestamp (ts)", ts)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 0):
            raise MetricsRefused(400, "malformed_body", f"{name} must be a whole number")
    if not rc and not ts:
        raise MetricsRefused(400, "missing_request_count",
                             "a request_count (rc) or a timestamp (ts) is required")
    if ts is not None and ts > now + MAX_FUTURE_SKEW_S:
        raise MetricsRefused(400, "ts_in_future", f"timestamp {ts} is ahead of the server")
    return rc or None, ts or None


def _lock_device(rt: Runtime, s: Session, serial: str) -> Kit:
    """The device's kit row, locked (SQLite: its one writer lock, taken first)."""
    if not rt.db.is_postgres:
        s.execute(SQLITE_WRITE_LOCK)
    kit = s.scalars(select(Kit).where(Kit.id == serial).with_for_update()).one_or_none()
    if kit is None or kit.kind != KIT_METRICS or kit.decommissioned_at is not None:
        raise MetricsRefused(404, "unknown_serial",
                             f"no OpenPAYGO Metrics device {serial[:64]!r} in service")
    return kit


def _check_auth(handler: MetricsResponseHandler, key: str, kit: Kit) -> None:
    """The library's check twice: the signature alone, then with the device's last
    request count and timestamp, so a replay is told apart from a forgery."""
    auth = handler.request_dict.get("auth")
    if not isinstance(auth, str) or not auth:
        raise MetricsRefused(401, "missing_signature", "the request has no auth (a)")
    if auth[:2] not in contract.AUTH_METHODS:
        raise MetricsRefused(401, "bad_signature", f"unknown auth method {auth[:2]!r}")
    handler.set_device_parameters(secret_key=key)
    try:
        signed = handler.is_auth_valid()
    except _LIBRARY_ERRORS:
        signed = False  # e.g. timestamp auth on a request without a timestamp
    if not signed:
        raise MetricsRefused(401, "bad_signature", "the signature does not match")
    handler.set_device_parameters(last_request_count=kit.metrics_request_count,
                                  last_request_timestamp=kit.metrics_request_ts)
    if not handler.is_auth_valid():
        raise MetricsRefused(409, "replay", "request count or timestamp not above the last "
                             f"taken ({kit.metrics_request_count}, {kit.metrics_request_ts})")


def _deliver_tokens(s: Session, handler: MetricsResponseHandler, kit_id: str,
                    now: float) -> list[KitToken]:
    """The kit's OpenPAYGO tokens the device has not entered yet, oldest first, marked
    delivered. A device that reports its token count (``tc``) gets every token above it,
    again if an answer was lost; one that does not gets those never sent."""
    q = select(KitToken).where(KitToken.kit_id == kit_id).order_by(KitToken.count)
    count = handler.get_token_count()
    if isinstance(count, int) and not isinstance(count, bool):
        q = q.where(KitToken.count > count)
    else:
        q = q.where(KitToken.delivered_at.is_(None))
    pending = list(s.scalars(q))
    for tok in pending:
        if tok.delivered_at is None:
            tok.delivered_at = now
    if pending or handler.expects_token_answer():
        # strings: a token may start with 0, which a number would lose
        handler.add_tokens_to_answer([tok.token for tok in pending])
    return pending


def _add_time(handler: MetricsResponseHandler, simple: Mapping[str, Any],
              credit_until: int | None, now: float) -> None:
    """The device's active-until time from the ledger, in every answer (seconds left
    instead when it asks for them). Set on the answer directly, not through
    ``add_time_to_answer``: that one writes floats, reads the host's local clock for the
    seconds left (with the sign reversed) and refuses when the device asked nothing."""
    until = int(credit_until or 0)
    data = simple.get("data") or {}
    if isinstance(data, Mapping) and data.get("active_seconds_left_requested"):
        handler.response_dict["active_seconds_left"] = max(0, until - int(now))
    else:
        handler.response_dict["active_until_timestamp"] = until
