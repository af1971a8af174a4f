"""The v1 kit contract: parsing, rejection reasons and command signatures."""

from __future__ import annotations

import json
import re
import time

import pytest

from cizo import protocol as p

NOW = 1_790_000_000


def telemetry(**over: object) -> dict[str, object]:
    msg: dict[str, object] = {
        "v": 1, "kit_id": "KIT1", "ts": NOW, "seq": 3, "boot": 1, "battery_v": 12.9,
        "soc": 81.5, "pv_w": 40.0, "load_w": 6, "pv_wh_total": 1200.5, "load_wh_total": 800,
        "locked": False, "credit_until": NOW + 86400, "temp_c": 31.2,
    }
    msg.update(over)
    return msg


def test_valid_telemetry_parses_with_ints_as_floats() -> None:
    t = p.parse_telemetry("KIT1", json.dumps(telemetry()).encode(), NOW)
    assert t.load_w == 6.0 and t.kit_id == "KIT1" and t.credit_until == NOW + 86400


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "not_json"),
        (b"\xff\xfe", "invalid_utf8"),
        (b"[1,2]", "not_object"),
        (b'{"v":1,"soc":NaN}', "non_finite"),
        (json.dumps(telemetry(soc=101)).encode(), "invalid_field"),
        (json.dumps(telemetry(battery_v=-1)).encode(), "invalid_field"),
        (json.dumps(telemetry(soc="80")).encode(), "invalid_field"),
        (json.dumps(telemetry(locked=1)).encode(), "invalid_field"),
        (json.dumps(telemetry(v=2)).encode(), "wrong_version"),
        (json.dumps({k: v for k, v in telemetry().items() if k != "ts"}).encode(), "missing_field"),
        (json.dumps(telemetry(kit_id="KIT2")).encode(), "kit_id_mismatch"),
        (json.dumps(telemetry(ts=NOW + 86400)).encode(), "ts_in_future"),
        (json.dumps(telemetry(ts=1000)).encode(), "ts_too_old"),
        (b"{" + b" " * p.MAX_PAYLOAD_BYTES + b"}", "oversized"),
        (b"[" * 5000 + b"]" * 5000, "oversized"),
    ],
)
def test_bad_telemetry_is_rejected_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(p.ContractError) as err:
        p.parse_telemetry("KIT1", payload, NOW)
    assert err.value.reason == reason


def test_deep_nesting_under_the_size_limit_is_a_contract_error() -> None:
    with pytest.raises(p.ContractError) as err:
        p.parse_telemetry("KIT1", b"[" * 2000 + b"]" * 2000, NOW)
    assert err.value.reason in {"not_json", "not_object", "too_deep"}


def test_topics_round_trip() -> None:
    assert p.parse_topic(p.telemetry_topic("A1")) == p.Topic("A1", "telemetry")
    assert p.parse_topic(p.ack_topic("A1")) == p.Topic("A1", "cmd/ack")
    for bad in ("kits//telemetry", "other/A1/telemetry", "kits/A1/nope", "kits/A1",
                "kits/KIT.1/telemetry", "kits/K 1/status", "kits/K+1/cmd/ack",
                f"kits/{'A' * 65}/telemetry"):
        with pytest.raises(p.ContractError):
            p.parse_topic(bad)


@pytest.mark.parametrize(("kit_id", "ok"), [
    ("TG-LOME-000123", True), ("kit_1", True), ("A" * 64, True), ("KIT.1", False),
    ("", False), ("A" * 65, False), ("K/1", False), ("K#", False), ("KIT-1\n", False),
    ("é1", False),
])
def test_one_kit_id_pattern_for_every_way_in(kit_id: str, ok: bool) -> None:
    assert p.is_kit_id(kit_id) is ok
    assert (re.fullmatch(p.KIT_ID_PATTERN, kit_id) is not None) is ok


def test_command_signature_matches_the_documented_canonical_form() -> None:
    import hashlib
    import hmac

    secret = "11" * 32
    cmd = p.build_command(kit_id="KIT1", command_id="c-1", seq=7, action="unlock",
                          credit_until=NOW + 7 * 86400, issued_at=NOW, expires_at=NOW + 3600,
                          secret_hex=secret)
    canonical = (
        f'{{"action":"unlock","credit_until":{NOW + 7 * 86400},"expires_at":{NOW + 3600},'
        f'"id":"c-1","issued_at":{NOW},"kit_id":"KIT1","seq":7,"v":1}}'
    ).encode()
    assert cmd["sig"] == hmac.new(bytes.fromhex(secret), canonical, hashlib.sha256).hexdigest()
    assert p.verify(cmd, secret)
    assert p.parse_command(p.encode(cmd)).seq == 7


def test_tampered_or_foreign_commands_fail_verification() -> None:
    secret, other = p.new_command_secret(), p.new_command_secret()
    cmd = p.build_command(kit_id="KIT1", command_id="c-1", seq=1, action="lock",
                          credit_until=None, issued_at=NOW, expires_at=NOW + 60, secret_hex=secret)
    assert not p.verify(cmd, other)
    assert not p.verify({**cmd, "action": "unlock"}, secret)
    assert not p.verify({**cmd, "sig": 5}, secret)
    assert len(secret) == 64 and bytes.fromhex(secret)


def test_ack_and_status_parse() -> None:
    ack = p.parse_ack(b'{"v":1,"id":"c","seq":2,"result":"rejected","reason":"bad_sig",'
                      b'"locked":true,"credit_until":null}')
    assert ack.result == "rejected" and ack.reason == "bad_sig"
    assert p.parse_status(b'{"v":1,"online":false}').online is False
    assert time.time() > 0
