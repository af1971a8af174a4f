"""Line-protocol encoding of kit readings: exact bytes, types and escaping (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from cizo.protocol import Status, Telemetry
from telemetry.schema import (
    LineProtocolError,
    encode_line,
    encode_lines,
    encode_status_line,
    encode_status_lines,
    escape_tag_value,
    quote_string_field,
)

NOW = 1_790_000_000


def reading(**over: Any) -> Telemetry:
    data: dict[str, Any] = {
        "v": 1, "kit_id": "TG-000001", "ts": NOW, "seq": 7, "boot": 2, "battery_v": 12.9,
        "soc": 81.5, "pv_w": 40, "load_w": 6.25, "pv_wh_total": 1200.5, "load_wh_total": 800,
        "locked": False, "credit_until": NOW + 86400, "temp_c": -3.5,
    }
    data.update(over)
    return Telemetry(**data)


def test_line_has_exact_fields_types_and_second_timestamp() -> None:
    assert encode_line(reading()) == (
        "kit_telemetry,kit_id=TG-000001 battery_v=12.9,soc=81.5,pv_w=40.0,load_w=6.25,"
        "pv_wh_total=1200.5,load_wh_total=800.0,temp_c=-3.5,seq=7i,boot=2i,locked=false,"
        f"credit_until={NOW + 86400}i {NOW}"
    )


def test_null_credit_is_omitted_and_locked_is_a_boolean() -> None:
    line = encode_line(reading(credit_until=None, locked=True))
    assert "credit_until" not in line
    assert ",locked=true " in line


def test_floats_round_trip_exactly_including_large_and_tiny_values() -> None:
    line = encode_line(reading(pv_wh_total=1e16, load_wh_total=1e-7, battery_v=0.1 + 0.2))
    fields = dict(f.split("=") for f in line.split(" ")[1].split(","))
    assert float(fields["pv_wh_total"]) == 1e16
    assert float(fields["load_wh_total"]) == 1e-7
    assert float(fields["battery_v"]) == 0.1 + 0.2


@pytest.mark.parametrize(
    ("kit_id", "escaped"),
    [
        ("plain", "plain"),
        ("with space", "with\\ space"),
        ("a,b", "a\\,b"),
        ("k=v", "k\\=v"),
        ("x, y=z", "x\\,\\ y\\=z"),
        ('quote"s', 'quote"s'),
        ("kité-☀", "kité-☀"),
    ],
)
def test_tag_values_escape_comma_equals_and_space(kit_id: str, escaped: str) -> None:
    assert escape_tag_value(kit_id) == escaped
    assert encode_line(reading(kit_id=kit_id)).startswith(f"kit_telemetry,kit_id={escaped} ")


@pytest.mark.parametrize("kit_id", ["end\\", "a\\,b", "new\nline", "cr\r", "tab\t", "nul\x00"])
def test_unwritable_tag_values_are_refused_not_corrupted(kit_id: str) -> None:
    with pytest.raises(LineProtocolError) as err:
        encode_line(reading(kit_id=kit_id))
    assert err.value.reason == "unencodable"


def test_empty_tag_value_is_refused() -> None:
    with pytest.raises(LineProtocolError):
        escape_tag_value("")


def test_non_finite_values_are_refused_even_if_validation_was_bypassed() -> None:
    bad = reading()._replace(soc=float("nan"))
    with pytest.raises(LineProtocolError):
        encode_line(bad)


def test_batch_is_newline_joined_bytes() -> None:
    body = encode_lines([reading(seq=1, ts=NOW), reading(seq=2, ts=NOW + 1)])
    assert isinstance(body, bytes)
    lines = body.decode().split("\n")
    assert len(lines) == 2
    assert lines[0].endswith(f" {NOW}") and ",seq=1i," in lines[0]
    assert lines[1].endswith(f" {NOW + 1}") and ",seq=2i," in lines[1]
    assert encode_lines([]) == b""


def test_status_line_with_quoted_firmware_string() -> None:
    status = Status.model_validate({"v": 1, "online": True, "fw": 'v1.2 "beta" \\x'})
    assert encode_status_line("TG 1", status, NOW) == (
        f'kit_status,kit_id=TG\\ 1 online=true,fw="v1.2 \\"beta\\" \\\\x" {NOW}'
    )


def test_status_line_without_firmware() -> None:
    status = Status.model_validate({"v": 1, "online": False})
    expected = f"kit_status,kit_id=k online=false {NOW}".encode()
    assert encode_status_lines([("k", status, NOW)]) == expected


def test_string_field_with_newline_is_refused() -> None:
    with pytest.raises(LineProtocolError):
        quote_string_field("a\nb")
