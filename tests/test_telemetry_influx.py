"""InfluxClient against a real influxd (v1 wire API), plus auth headers on a mock transport."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from cizo import services
from cizo.protocol import Telemetry
from cizo.settings import Settings
from telemetry import (
    InfluxClient,
    InfluxQueryError,
    InfluxUnavailable,
    InfluxWriteRejected,
    encode_lines,
    quote_string,
)

pytestmark = pytest.mark.integration

NOW = 1_790_000_000


def reading(kit_id: str, **over: Any) -> Telemetry:
    data: dict[str, Any] = {
        "v": 1, "kit_id": kit_id, "ts": NOW, "seq": 1, "boot": 1, "battery_v": 12.7,
        "soc": 55.5, "pv_w": 12.25, "load_w": 3.0, "pv_wh_total": 10.5, "load_wh_total": 4.0,
        "locked": True, "credit_until": None, "temp_c": 28.0,
    }
    data.update(over)
    return Telemetry(**data)


@pytest.fixture
def client(influxd: services.InfluxProcess, influx_db: str) -> Any:
    with InfluxClient(f"http://127.0.0.1:{influxd.port}", influx_db) as c:
        yield c


def test_written_points_read_back_with_exact_values(client: InfluxClient) -> None:
    client.write(encode_lines([reading("K1", ts=NOW, seq=1),
                               reading("K1", ts=NOW + 10, seq=2, credit_until=NOW + 99)]))
    row = client.last_telemetry("K1")
    assert row == {
        "time": NOW + 10, "kit_id": "K1", "battery_v": 12.7, "soc": 55.5, "pv_w": 12.25,
        "load_w": 3.0, "pv_wh_total": 10.5, "load_wh_total": 4.0, "temp_c": 28.0,
        "seq": 2, "boot": 1, "locked": True, "credit_until": NOW + 99,
    }
    assert client.last_telemetry("K2") is None


@pytest.mark.parametrize("kit_id", ["a b,c=d", "it's", 'dq"x', "kité ☀", "x' OR '1'='1"])
def test_awkward_kit_ids_round_trip(client: InfluxClient, kit_id: str) -> None:
    client.write(encode_lines([reading(kit_id, seq=5)]))
    row = client.last_telemetry(kit_id)
    assert row is not None and row["kit_id"] == kit_id and row["seq"] == 5


def test_kit_id_cannot_inject_influxql(client: InfluxClient) -> None:
    client.write(encode_lines([reading("victim", seq=9)]))
    for attack in ["x' OR kit_id =~ /.*/ OR kit_id='", "x\\' OR 1=1 --", "x'; DROP DATABASE x",
                   "x\n' OR kit_id='victim"]:
        assert client.last_telemetry(attack) is None
    assert client.last_telemetry("victim") is not None


def test_query_rows_merge_group_by_tags(client: InfluxClient) -> None:
    client.write(encode_lines([reading("A", seq=1), reading("A", seq=2, ts=NOW + 1),
                               reading("B", seq=3)]))
    rows = client.query("SELECT count(seq) FROM kit_telemetry GROUP BY kit_id")
    assert sorted((r["kit_id"], r["count"]) for r in rows) == [("A", 2), ("B", 1)]


def test_bind_parameters_are_passed_through(client: InfluxClient) -> None:
    client.write(encode_lines([reading("bound kit", seq=4)]))
    q = "SELECT seq FROM kit_telemetry WHERE kit_id = $k"
    rows = client.query(q, params={"k": "bound kit"})
    assert [r["seq"] for r in rows] == [4]


def test_gzip_bodies_are_accepted(influxd: services.InfluxProcess, influx_db: str) -> None:
    with InfluxClient(f"http://127.0.0.1:{influxd.port}", influx_db, gzip=True) as c:
        c.write(encode_lines([reading("Z", seq=11)]))
        row = c.last_telemetry("Z")
    assert row is not None and row["seq"] == 11


def test_bad_line_is_rejected_with_the_server_text(client: InfluxClient) -> None:
    with pytest.raises(InfluxWriteRejected) as err:
        client.write(b"kit_telemetry,kit_id=x soc= 1")
    assert err.value.status_code == 400
    assert "unable to parse" in err.value.error


def test_field_type_conflict_is_a_rejection(client: InfluxClient) -> None:
    client.write(b"kit_telemetry,kit_id=x seq=1.5 1790000000")
    with pytest.raises(InfluxWriteRejected) as err:
        client.write(encode_lines([reading("x")]))
    assert err.value.status_code == 400 and "conflict" in err.value.error


def test_missing_database_is_404_then_create_database_fixes_it(
    influxd: services.InfluxProcess,
) -> None:
    with InfluxClient(f"http://127.0.0.1:{influxd.port}", "t_created_by_client") as c:
        with pytest.raises(InfluxWriteRejected) as err:
            c.write(encode_lines([reading("x")]))
        assert err.value.status_code == 404
        c.create_database()
        c.create_database()  # idempotent
        c.write(encode_lines([reading("x")]))
        assert c.last_telemetry("x") is not None
        c.query('DROP DATABASE "t_created_by_client"', db="")


def test_query_errors_raise(client: InfluxClient) -> None:
    with pytest.raises(InfluxQueryError) as err:
        client.query("SELEC nothing")
    assert err.value.status_code == 400 and "error parsing query" in err.value.error


def test_unreachable_server_is_retryable_and_ping_is_false() -> None:
    with InfluxClient(f"http://127.0.0.1:{services.free_port()}", "db", timeout_s=1.0) as c:
        with pytest.raises(InfluxUnavailable):
            c.write(b"m v=1 1")
        with pytest.raises(InfluxUnavailable):
            c.query("SHOW DATABASES")
        assert c.ping() is False


def test_ping_true_on_running_server(client: InfluxClient) -> None:
    assert client.ping() is True


def _recording_transport(status: int, seen: list[httpx.Request]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json={"error": "boom"} if status >= 400 else None)

    return httpx.MockTransport(handler)


def test_token_auth_header_and_rp_parameter() -> None:
    seen: list[httpx.Request] = []
    settings = Settings(influx_url="http://influx.invalid:8086/", influx_db="cizo",
                        influx_rp="raw", influx_token="s3cret", influx_username="ignored")
    with InfluxClient.from_settings(settings, transport=_recording_transport(204, seen)) as c:
        c.write(b"m v=1 1")
    req = seen[0]
    assert req.headers["Authorization"] == "Token s3cret"
    assert dict(req.url.params) == {"db": "cizo", "rp": "raw", "precision": "s"}


def test_username_password_parameters_without_token() -> None:
    seen: list[httpx.Request] = []
    settings = Settings(influx_username="cizo", influx_password="pw")
    with InfluxClient.from_settings(settings, transport=_recording_transport(204, seen)) as c:
        c.write(b"m v=1 1")
    assert "Authorization" not in seen[0].headers
    assert seen[0].url.params["u"] == "cizo" and seen[0].url.params["p"] == "pw"


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_errors_and_throttling_are_retryable(status: int) -> None:
    transport = _recording_transport(status, [])
    with (
        InfluxClient("http://x.invalid", "db", transport=transport) as c,
        pytest.raises(InfluxUnavailable) as err,
    ):
        c.write(b"m v=1 1")
    assert err.value.status_code == status


def test_quote_string_escapes_quotes_backslashes_and_newlines() -> None:
    assert quote_string("a'b\\c\nd") == "'a\\'b\\\\c\\nd'"
