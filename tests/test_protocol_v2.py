"""Kit contract v2 (docs/protocol.md, "Version 2"): the compact layout, its one validator
(two implementations that agree), commands and acks signed through v1's one signing path
and refused exactly as v1's, the move from v1 to v2, and the doc's worked example."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cizo import compact, protocol
from cizo.clock import FrozenClock
from firmware_sim.firmware import V2_BATCH, KitFirmware

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
SECRET = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
KIT = "TG-LOME-000123"
NOW = 1_767_229_200  # 2026-01-01T01:00Z


def readings(count: int = 4, **over: Any) -> list[dict[str, Any]]:
    """The doc's example hour: four 15-minute readings."""
    return [{"v": 1, "kit_id": KIT, "ts": 1_767_225_600 + 900 * i, "seq": 4_211 + i,
             "boot": 3, "battery_v": 12.85 - 0.01 * i, "soc": 74.5 + i, "pv_w": 118.4 + i,
             "load_w": 6.5, "pv_wh_total": 35_210.75 + 29.6 * i,
             "load_wh_total": 9_871.25 + 1.6 * i, "locked": False,
             "credit_until": 1_769_817_600, "temp_c": 31.5, **over} for i in range(count)]


def unlock(version: int, **over: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "kit_id": KIT, "command_id": "01JGZ5Q8W3R2K7M4N6P9T1V3XB", "seq": 42,
        "action": "unlock", "credit_until": 1_769_817_600, "issued_at": 1_767_225_600,
        "expires_at": 1_767_830_400, "secret_hex": SECRET, "version": version, **over}
    return protocol.build_command(**fields)


# --- telemetry --------------------------------------------------------------------------


def test_a_v2_message_carries_the_same_readings_as_v1() -> None:
    hour = readings()
    got = protocol.parse_readings(KIT, compact.encode_readings(hour), NOW)
    v1 = [protocol.parse_telemetry(KIT, json.dumps(r).encode(), NOW) for r in hour]
    assert [g._replace(v=1) for g in got if isinstance(g, protocol.Telemetry)] == v1


def test_one_bad_reading_is_refused_alone_with_its_reason() -> None:
    msg = cbor2.loads(compact.encode_readings(readings()))
    msg[5][1][7] = 9_999  # 999.9 degrees C
    msg[5][3][0] = 10 ** 6  # stamped 11 days ahead
    got = protocol.parse_readings(KIT, cbor2.dumps(msg), NOW)
    kinds = [g.reason if isinstance(g, protocol.ContractError) else "ok" for g in got]
    assert kinds == ["ok", "invalid_field", "ok", "ts_in_future"]


def check_agreement(kit_id: str, payload: bytes) -> None:
    strict: list[Any] | str
    try:
        strict = protocol._strict_readings(kit_id, payload, NOW)
    except protocol.ContractError as exc:
        strict = exc.reason
    plain = protocol._plain_readings(kit_id, payload, NOW)
    if plain is not None:
        assert plain == strict, (plain, strict)


def mutated() -> st.SearchStrategy[bytes]:
    """A valid message with one value replaced by anything CBOR can say."""
    anything = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.booleans(),
                         st.none(), st.text(max_size=3), st.binary(max_size=3),
                         st.lists(st.integers(), max_size=2))

    def build(data: tuple[int, int, Any]) -> bytes:
        row, col, value = data
        msg = cbor2.loads(compact.encode_readings(readings()))
        if row < 0:
            msg[col % 5] = value
        else:
            msg[5][row % 4][col % 9] = value
        return cbor2.dumps(msg)

    return st.tuples(st.integers(-1, 3), st.integers(0, 8), anything).map(build)


@settings(max_examples=600, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated(), mutated(), st.binary(max_size=200)))
@example(compact.encode_readings(readings()))
@example(cbor2.dumps([2, 3, 1, NOW, None, [[0, 1, 1, 1, 1, 1, 1, 1, False]] * 97]))
def test_the_two_implementations_agree(payload: bytes) -> None:
    check_agreement(KIT, payload)


def test_the_plain_implementation_answers_for_a_valid_message() -> None:
    assert protocol._plain_readings(KIT, compact.encode_readings(readings()), NOW) is not None


# --- commands and acks: one signing path, refused exactly as v1 ---------------------------


def test_v2_commands_sign_the_deterministic_cbor_through_the_one_path() -> None:
    cmd = unlock(2)
    body = {k: v for k, v in cmd.items() if k != "sig"}
    assert protocol.canonical_bytes(cmd) == cbor2.dumps(body, canonical=True)
    assert isinstance(cmd["sig"], bytes) and len(cmd["sig"]) == 32
    wire = protocol.encode(cmd)
    assert protocol.verify(protocol.fields_of(wire, 2), SECRET)
    # the same command in v1 keeps its documented signature
    assert unlock(1)["sig"] == "08d3e3d5b8cc03e113510ac4bf6be2bc9a1c0c70504decf19914d17c7f7b79da"
    # a v2 body with a hex signature (or v1 with raw bytes) is no signature at all
    assert not protocol.verify({**cmd, "sig": cmd["sig"].hex()}, SECRET)


def kit(version: int, **over: Any) -> KitFirmware:
    return KitFirmware(KIT, SECRET, FrozenClock(1_767_300_000), protocol_version=version,
                       **over)


def forged(version: int) -> bytes:
    cmd = unlock(version)
    cmd["credit_until"] += 86_400 * 365  # a year for free
    return protocol.encode(cmd)


@pytest.mark.parametrize("version", protocol.VERSIONS)
@pytest.mark.parametrize(("case", "reason"), [
    ("forged", "bad_signature"), ("other_kit", "wrong_kit"), ("replayed", "replayed_seq"),
    ("expired", "expired"), ("garbage", "malformed"),
])
def test_the_kit_refuses_v2_commands_exactly_as_v1(version: int, case: str,
                                                   reason: str) -> None:
    fw = kit(version)
    first = fw.handle_command(protocol.encode(unlock(version, seq=50, command_id="A")), version)
    assert first["result"] == "applied" and first["v"] == version
    payload = {
        "forged": forged(version),
        "other_kit": protocol.encode(unlock(version, kit_id="TG-LOME-000999")),
        "replayed": protocol.encode(unlock(version)),  # seq 42 < 50
        "expired": protocol.encode(unlock(version, seq=60, expires_at=1_767_299_999)),
        "garbage": b"\xa1\x61v\x02" if version == 2 else b'{"v":1}',
    }[case]
    ack = fw.handle_command(payload, version)
    assert (ack["result"], ack["reason"]) == ("rejected", reason)
    assert fw.credit_until == 1_769_817_600 and fw.last_seq == 50  # nothing changed
    assert protocol.verify(ack, SECRET)  # acks signed too, in the command's version
    assert protocol.parse_ack(protocol.encode(ack), version).reason == reason


def test_a_v1_command_on_a_v2_topic_is_malformed() -> None:
    ack = kit(2).handle_command(protocol.encode(unlock(1)), 2)
    assert ack["reason"] == "malformed"


def test_a_kit_moves_from_v1_to_v2_by_a_signed_command() -> None:
    fw = kit(1)
    move = protocol.build_command(
        kit_id=KIT, command_id="P", seq=7, action="protocol", credit_until=None,
        issued_at=1_767_225_600, expires_at=1_767_830_400, secret_hex=SECRET, protocol=2)
    ack = fw.handle_command(protocol.encode(move), 1)
    assert ack["result"] == "applied" and ack["v"] == 1 and fw.protocol == 2
    # from now on: readings held and sent four to a message, in v2
    sent = [m for _ in range(V2_BATCH) for m in fw.report()]
    assert len(sent) == 1
    assert len(protocol.parse_readings(KIT, sent[0], 1_767_400_000)) == V2_BATCH
    # an unknown version is refused, signed or not
    bad = protocol.build_command(
        kit_id=KIT, command_id="Q", seq=8, action="protocol", credit_until=None,
        issued_at=1_767_225_600, expires_at=1_767_830_400, secret_hex=SECRET, protocol=9)
    assert fw.handle_command(protocol.encode(bad), 2)["reason"] == "malformed"


# --- the doc's worked example is the code's ---------------------------------------------


def doc_example() -> dict[str, str]:
    """Every byte string docs/protocol.md shows for v2, computed here."""
    hour = readings()
    telemetry = compact.encode_readings(hour)
    cmd = unlock(2)
    ack = protocol.sign_ack({"v": 2, "id": cmd["id"], "seq": 42, "result": "applied",
                             "reason": None, "locked": False,
                             "credit_until": 1_769_817_600}, SECRET)
    return {
        "telemetry": telemetry.hex(" "),
        "telemetry_len": f"{len(telemetry)} bytes",
        "v1_len": f"{sum(len(protocol.encode(r)) for r in hour)} bytes",
        "canonical": protocol.canonical_bytes(cmd).hex(" "),
        "sig": cmd["sig"].hex(),
        "command": protocol.encode(cmd).hex(" "),
        "command_len": f"{len(protocol.encode(cmd))} bytes",
        "ack": protocol.encode(ack).hex(" "),
    }


def _wrapped(text: str) -> str:
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize("name", list(doc_example()))
def test_the_doc_shows_the_bytes_the_code_makes(name: str) -> None:
    assert _wrapped(doc_example()[name]) in _wrapped(DOC.read_text()), name


@pytest.mark.parametrize("version", protocol.VERSIONS)
def test_a_replay_request_round_trips_on_its_own_topic_in_each_version(version: int) -> None:
    topic = protocol.replay_topic(version)
    assert protocol.replay_version(topic) == version
    assert protocol.replay_version(protocol.cmd_topic("KIT1", version)) is None
    with pytest.raises(protocol.ContractError):  # outside every kit's own topics
        protocol.parse_topic(topic)
    payload = protocol.replay_request(1_800_000_000, version)
    assert protocol.parse_replay(payload, version).since == 1_800_000_000
    other = protocol.VERSIONS[1 - protocol.VERSIONS.index(version)]
    with pytest.raises(protocol.ContractError):
        protocol.parse_replay(payload, other)
