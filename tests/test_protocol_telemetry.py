"""The one telemetry validator (``cizo.protocol.parse_telemetry``): its two
implementations agree on every payload, valid or not.

``_plain_telemetry`` answers for plainly valid readings with plain checks (or defers
with None); ``_strict_telemetry`` judges everything with the reason. Agreement: the plain
implementation never accepts what the strict one refuses, and what it accepts is
exactly (values and types) what the strict one returns; so ``parse_telemetry`` gives the
strict answer on every payload. This file is the one place that checks it: examples
first, then Hypothesis on near-valid and random payloads.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cizo import protocol
from cizo.protocol import _plain_telemetry, _strict_telemetry

NOW = 1_750_000_000.0
KIT = "KIT-1"


def reading(**over: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "v": 1, "kit_id": KIT, "ts": int(NOW) - 60, "seq": 7, "boot": 2,
        "battery_v": 12.75, "soc": 64.5, "pv_w": 41.0, "load_w": 6, "pv_wh_total": 1200.25,
        "load_wh_total": 800.0, "locked": False, "credit_until": None, "temp_c": 31.5,
    }
    msg.update(over)
    return msg


def typed(values: tuple[Any, ...]) -> list[tuple[type, Any]]:
    return [(type(v), v) for v in values]


def check_agreement(topic_kit: str, payload: bytes) -> protocol.Telemetry | None:
    """Assert the implementations agree on ``payload``; returns the plain answer."""
    try:
        strict: protocol.Telemetry | None = _strict_telemetry(topic_kit, payload, NOW)
        reason = None
    except protocol.ContractError as exc:
        strict, reason = None, exc.reason
    plain = _plain_telemetry(topic_kit, payload, NOW)
    if strict is None:
        assert plain is None, f"plain accepted what strict refused ({reason})"
        with pytest.raises(protocol.ContractError) as err:
            protocol.parse_telemetry(topic_kit, payload, NOW)
        assert err.value.reason == reason
    else:
        if plain is not None:  # it may defer, never disagree
            assert typed(plain) == typed(strict)
        assert typed(protocol.parse_telemetry(topic_kit, payload, NOW)) == typed(strict)
    return plain


# --- examples ---------------------------------------------------------------------------

VALID = [reading(), reading(locked=True, credit_until=int(NOW) + 86400),
         reading(soc=100, battery_v=0, temp_c=-40),
         reading(extra_field="ignored"), reading(pv_wh_total=1e12)]
INVALID = [
    reading(v=2), reading(v=True), reading(soc=100.5), reading(battery_v=-0.1),
    reading(soc=True), reading(soc="64"), reading(seq=-1), reading(seq=1.0), reading(ts=1.5),
    reading(ts=int(NOW) + 3600), reading(ts=1_000_000_000), reading(locked=0),
    reading(credit_until=True), reading(credit_until=1.5), reading(kit_id="OTHER"),
    reading(kit_id="A" * 65), reading(kit_id="back\\slash"), reading(temp_c=121),
    reading(kit_id="TG a,b=c"), reading(kit_id="KIT.1"),  # outside the contract's pattern
    reading(pv_w=10_001), reading(boot=-1), reading(pv_wh_total=10**400),
]


def example_payloads() -> list[bytes]:
    out = [json.dumps(m).encode() for m in VALID + INVALID]
    out += [b"not json", b"[1]", b" " + json.dumps(reading()).encode(),
            json.dumps(reading()).replace('"soc": 64.5', '"soc": NaN').encode(),
            json.dumps(reading()).replace('"soc": 64.5', '"soc": 1e999').encode(),
            json.dumps(reading()).encode().replace(b"KIT-1", b"KIT-\xff"),
            json.dumps({k: v for k, v in reading().items() if k != "temp_c"}).encode(),
            json.dumps(reading(pad="x" * 5000)).encode(),
            json.dumps(reading(deep=[[[[[1]]]]])).encode()]
    return out


@pytest.mark.parametrize("payload", example_payloads())
def test_implementations_agree_on_examples(payload: bytes) -> None:
    topic_kit = KIT
    if payload.startswith(b"{") and b"\xff" not in payload:
        kit = json.loads(payload).get("kit_id")
        topic_kit = kit if isinstance(kit, str) and kit != "OTHER" else KIT
    check_agreement(topic_kit, payload)


@pytest.mark.parametrize("msg", VALID)
def test_plain_implementation_answers_for_plainly_valid_readings(msg: dict[str, Any]) -> None:
    payload = json.dumps(msg).encode()
    assert check_agreement(msg["kit_id"], payload) is not None


def test_huge_integer_for_a_number_is_refused_with_a_reason() -> None:
    with pytest.raises(protocol.ContractError) as err:
        protocol.parse_telemetry(KIT, json.dumps(reading(load_wh_total=10**400)).encode(), NOW)
    assert err.value.reason == "invalid_field"


# --- Hypothesis: near-valid and random payloads -------------------------------------------

FIELDS = list(reversed(reading()))  # the version last: Hypothesis favours the first
BOUNDARIES: list[Any] = [
    0, 0.0, -0.0, 100, 100.0, 100.00000000000001, -1e-300, 10_000, 10_000.5, -40, -40.5, 120,
    120.0, 1e308, 5e-324, int(NOW) + protocol.MAX_FUTURE_SKEW_S,
    int(NOW) + protocol.MAX_FUTURE_SKEW_S + 1, protocol.EARLIEST_TS, protocol.EARLIEST_TS - 1,
    2**63, -(2**63), "", "1", [], {}, float("nan"), float("inf"), float("-inf"),
]
field_values = st.one_of(
    st.integers(-50, 10_050), st.floats(-50, 10_050),  # mostly in range, some just out
    st.integers(int(NOW) - 100, int(NOW) + 2 * protocol.MAX_FUTURE_SKEW_S),  # ts, now
    st.integers(protocol.EARLIEST_TS - 100, protocol.EARLIEST_TS + 100),  # ts, earliest
    st.sampled_from(BOUNDARIES), st.none(), st.booleans(), st.integers(), st.floats(),
    st.integers(min_value=10**300, max_value=10**320), st.text(max_size=10),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
RANGES = {"battery_v": protocol.VOLTS_RANGE, "soc": protocol.PERCENT_RANGE,
          "pv_w": protocol.WATTS_RANGE, "load_w": protocol.WATTS_RANGE,
          "pv_wh_total": protocol.WATT_HOURS_RANGE, "load_wh_total": protocol.WATT_HOURS_RANGE,
          "temp_c": protocol.CELSIUS_RANGE}
LATEST_TS = int(NOW) + protocol.MAX_FUTURE_SKEW_S


def _edges(low: float, high: float) -> list[Any]:
    """Values on and just beyond a range's bounds, as floats and as ints."""
    out: list[Any] = []
    for bound, outward in ((low, -math.inf), (high, math.inf)):
        if math.isfinite(bound):
            out += [bound, math.nextafter(bound, outward), bound + (0.5 if outward > 0 else -0.5),
                    int(bound), int(bound) + (1 if outward > 0 else -1)]
    return out


EDGES: dict[str, list[Any]] = {name: _edges(*bounds) for name, bounds in RANGES.items()}
EDGES |= {"ts": [LATEST_TS, LATEST_TS + 1, protocol.EARLIEST_TS, protocol.EARLIEST_TS - 1],
          "seq": [0, -1], "boot": [0, -1], "v": [1, 0, 2, 1.0, True],
          "kit_id": [KIT, "A" * protocol.KIT_ID_MAX_LEN, "A" * (protocol.KIT_ID_MAX_LEN + 1), ""],
          "credit_until": [None, 0, -1, int(NOW)], "locked": [True, False, 0, 1]}


def value_for(name: str, draw: st.DrawFn) -> Any:
    """Half the time one of the field's edge cases, else anything."""
    anything = draw(st.booleans())  # not ``|``: it would flatten to one branch in 14
    return draw(field_values) if anything else draw(st.sampled_from(EDGES[name]))


@pytest.mark.parametrize(("name", "value"),
                         [(name, value) for name, values in EDGES.items() for value in values])
def test_implementations_agree_on_every_field_edge(name: str, value: Any) -> None:
    check_agreement(KIT, json.dumps(reading(**{name: value})).encode())


kit_ids = st.sampled_from([KIT, "K2", "kit-1", "A" * 64, "A" * 65, "TG a,b=c", "back\\slash",
                           "tab\there", "é", ""]) | st.text(max_size=70)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)


def _serialise(data: dict[str, Any], draw: st.DrawFn) -> str:
    separators = draw(st.sampled_from([(",", ":"), (", ", ": ")]))
    indent = draw(st.sampled_from([None, None, 1]))
    text = json.dumps(data, allow_nan=True, separators=separators, indent=indent)
    before = draw(st.sampled_from([""] * 8 + [" ", "\n", "\t", "\ufeff"]))
    after = draw(st.sampled_from([""] * 8 + [" ", "\n", "\r\n"]))
    return before + text + after


def _mangle(raw: bytes, draw: st.DrawFn) -> bytes:
    how = draw(st.sampled_from(["none"] * 6 + ["non_utf8", "truncate", "nest", "huge"]))
    if how == "non_utf8":
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"])) + raw[at:]
    if how == "truncate":
        return raw[:draw(st.integers(0, max(0, len(raw) - 1)))]
    if how == "nest":
        depth = draw(st.integers(1, 60))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        inner = opener * depth + b"1" + closer * depth
        return raw.rstrip()[:-1] + b',"deep":' + inner + b"}" if raw.rstrip().endswith(b"}") \
            else inner
    if how == "huge":
        size = protocol.MAX_PAYLOAD_BYTES - len(raw) + draw(st.integers(-40, 40))
        pad = b',"pad":"' + b"x" * max(0, size - 10) + b'"}'
        return raw.rstrip()[:-1] + pad if raw.rstrip().endswith(b"}") else raw + pad
    return raw


@st.composite
def near_valid(draw: st.DrawFn) -> tuple[str, bytes]:
    """A good reading with a few fields replaced or dropped, extra keys, another kit id,
    other spacing, then perhaps a byte-level mangling (non-UTF-8, cut, nested, huge)."""
    data = reading()
    for key in draw(st.sets(st.sampled_from(FIELDS), max_size=2)):
        data[key] = value_for(key, draw)
    if draw(st.integers(0, 4)) == 4:  # the minimal draw (0) keeps every field
        data.pop(draw(st.sampled_from(FIELDS)))
    data.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
    if draw(st.booleans()):
        data["kit_id"] = draw(kit_ids)
    kit = data.get("kit_id")
    topic_kit = kit if isinstance(kit, str) and kit and draw(st.booleans()) else KIT
    raw = _mangle(_serialise(data, draw).encode("utf-8", "surrogatepass"), draw)
    return topic_kit, raw


def random_payloads() -> st.SearchStrategy[tuple[str, bytes]]:
    as_json = json_values.map(lambda v: json.dumps(v, allow_nan=True).encode())
    return st.tuples(st.just(KIT) | st.text(min_size=1, max_size=10),
                     st.binary(max_size=5000) | as_json)


AGREE = settings(max_examples=1500, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@AGREE
@given(st.one_of(near_valid(), near_valid(), near_valid(), random_payloads()))
@example((KIT, json.dumps(reading()).encode()))
@example((KIT, b"{" * 3000))
@example((KIT, json.dumps(reading(extra={"a": {"b": {"c": {"d": 1}}}})).encode()))
@example((KIT, json.dumps(reading(soc=10**400)).encode()))
def test_implementations_agree_on_generated_payloads(case: tuple[str, bytes]) -> None:
    check_agreement(*case)
