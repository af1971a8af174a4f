"""Property tests: no input makes a payload validator raise anything but its documented error.

Kit payloads (cizo/protocol.py: ``ContractError``), provider callbacks and status answers
(PayGate: ``PayGateError``; MTN MoMo: never raises), amounts (``AmountError``), phones
(``PhoneError``), webhook signatures (``SignatureError``), statements (``StatementError``).
Hypothesis runs derandomized, so CI sees the same cases every run.
"""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cizo import protocol
from control.gateways import momo, paygate
from control.ledger import money
from control.ledger.phone import PhoneError, normalise_phone
from control.payments import matching, statements
from control.payments.providers import webhook_signature

NOW = 1_760_000_000.0
FUZZ = settings(max_examples=250, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

json_scalars = (st.none() | st.booleans() | st.integers() | st.floats()
                | st.text(max_size=30))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
TELEMETRY_KEYS = ["v", "kit_id", "ts", "seq", "boot", "battery_v", "soc", "pv_w", "load_w",
                  "pv_wh_total", "load_wh_total", "locked", "credit_until", "temp_c"]
ACK_KEYS = ["v", "id", "seq", "result", "reason", "locked", "credit_until"]
CMD_KEYS = ["v", "kit_id", "id", "seq", "action", "credit_until", "issued_at", "expires_at",
            "sig"]


def _good_telemetry() -> dict[str, Any]:
    return {"v": 1, "kit_id": "K1", "ts": int(NOW) - 10, "seq": 1, "boot": 1,
            "battery_v": 12.5, "soc": 50.0, "pv_w": 1.0, "load_w": 1.0, "pv_wh_total": 1.0,
            "load_wh_total": 1.0, "locked": True, "credit_until": None, "temp_c": 20.0}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=True).encode()  # NaN/Infinity on purpose


def mutated(keys: list[str]) -> st.SearchStrategy[bytes]:
    """A valid-looking object with some fields replaced by arbitrary JSON values."""
    base = _good_telemetry()
    return st.dictionaries(st.sampled_from(keys), json_values, max_size=len(keys)).map(
        lambda over: _dumps({**base, **over}))


def _only_contract_errors(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except protocol.ContractError as exc:
        assert exc.reason and isinstance(exc.reason, str)


@FUZZ
@given(st.binary(max_size=5000) | mutated(TELEMETRY_KEYS) | json_values.map(_dumps))
@example(b"{" * 3000)
@example(b'{"v":1,"kit_id":"K1","ts":1e999}')
@example(b'{"v":1,"ts":' + b"9" * 4090 + b"}")
@example(b'\xff\xfe{"v":1}')
@example(_dumps({**_good_telemetry(), "soc": float("nan")}))
@example(_dumps({**_good_telemetry(), "ts": 10**30}))
def test_kit_payload_parsers_raise_only_contract_errors(payload: bytes) -> None:
    _only_contract_errors(protocol.parse_telemetry, "K1", payload, NOW)
    _only_contract_errors(protocol.parse_status, payload)
    _only_contract_errors(protocol.parse_ack, payload)
    _only_contract_errors(protocol.parse_command, payload)


@FUZZ
@given(mutated(ACK_KEYS) | mutated(CMD_KEYS) | mutated(TELEMETRY_KEYS))
def test_accepted_payloads_are_finite_and_in_range(payload: bytes) -> None:
    try:
        tele = protocol.parse_telemetry("K1", payload, NOW)
    except protocol.ContractError:
        return
    for name in ("battery_v", "soc", "pv_w", "load_w", "pv_wh_total", "load_wh_total",
                 "temp_c"):
        assert math.isfinite(getattr(tele, name))
    assert protocol.EARLIEST_TS <= tele.ts <= NOW + protocol.MAX_FUTURE_SKEW_S


@pytest.mark.parametrize(("payload", "reason"), [
    (b"x" * (protocol.MAX_PAYLOAD_BYTES + 1), "oversized"),
    (b"[" * 50 + b"]" * 50, "too_deep"),
    (b'{"a":{"b":{"c":{"d":{"e":1}}}}}', "too_deep"),
    (b'{"v":1,"kit_id":"\xc3\x28"}', "invalid_utf8"),
    (_dumps({**_good_telemetry(), "soc": float("nan")}), "non_finite"),
    (_dumps({**_good_telemetry(), "soc": float("inf")}), "non_finite"),
    (b'{"v":1,"soc":1e999}', "non_finite"),
    (_dumps({**_good_telemetry(), "ts": int(NOW) + 86_400 * 365}), "ts_in_future"),
])
def test_bad_input_is_refused_with_its_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(protocol.ContractError) as err:
        protocol.parse_telemetry("K1", payload, NOW)
    assert err.value.reason == reason


def test_strings_that_merely_contain_brackets_are_not_too_deep() -> None:
    tele = _good_telemetry() | {"kit_id": "K1"}
    payload = _dumps(tele)[:-1] + b', "note": "[[[[[{{{{{"}'
    assert protocol.parse_telemetry("K1", payload, NOW).kit_id == "K1"


@FUZZ
@given(st.text(max_size=80))
@example("kits/\x00/telemetry")
def test_topic_parser(topic: str) -> None:
    _only_contract_errors(protocol.parse_topic, topic)


@FUZZ
@given(st.text(max_size=20), st.dictionaries(
    st.sampled_from(["status", "identifier", "tx_reference", "amount", "payment_reference",
                     "payment_method", "phone_number", "datetime", "other"]),
    json_values, max_size=9))
@example("X", {"status": 0, "amount": "1e400", "datetime": float("inf")})
@example("X", {"status": 0, "datetime": float("inf")})
@example("X", {"status": 0, "datetime": 10**400})
@example("X", {"status": "0", "amount": "nan", "datetime": "9999-12-31T23:59:59-23:59"})
def test_paygate_status_parser_raises_only_paygate_errors(identifier: str,
                                                          body: dict[str, Any]) -> None:
    try:
        parsed = paygate.parse_status(identifier, body)
    except paygate.PayGateError:
        return
    if parsed is not None and parsed.paid_at is not None:
        assert math.isfinite(parsed.paid_at)


@FUZZ
@given(st.dictionaries(st.sampled_from(["amount", "currency", "payer", "reason", "status",
                                        "externalId", "financialTransactionId"]),
                       json_values | st.fixed_dictionaries({"partyId": json_values}),
                       max_size=7))
def test_momo_status_parser_never_raises(body: dict[str, Any]) -> None:
    parsed = momo.parse_status(body)
    assert parsed.amount is None or parsed.amount > 0


@FUZZ
@given(json_values | st.text(max_size=30))
@example("1e400")
@example(float("nan"))
def test_amount_and_phone_parsers(raw: Any) -> None:
    try:
        value = money.parse_amount(raw)
        assert 0 < value <= money.MAX_AMOUNT_FCFA
    except money.AmountError:
        pass
    with contextlib.suppress(money.AmountError):
        money.check_currency(raw)
    matching.normalise_reference(raw)
    if isinstance(raw, str | int) and not isinstance(raw, bool):
        with contextlib.suppress(PhoneError):
            assert normalise_phone(raw).startswith("+")


@FUZZ
@given(st.none() | st.text(max_size=120), st.binary(max_size=200))
@example("t=99999999999999999999999999,v1=ab", b"{}")
def test_webhook_signature_parser(header: str | None, body: bytes) -> None:
    try:
        webhook_signature.verify("secret", header, body, now=NOW)
    except webhook_signature.SignatureError:
        return
    raise AssertionError("an arbitrary header verified")


@FUZZ
@given(st.text(max_size=400))
@example("\ufeffdate,amount\n2026-13-45,100\n")
def test_statement_parser(text: str) -> None:
    with contextlib.suppress(statements.StatementError):
        statements.parse_statement(text)
