"""The optional InfluxDB 2.x native write API (influxdb-client), checked against a local
HTTP endpoint that records each request (no 2.x server can run here)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from cizo.settings import Settings
from telemetry import InfluxClient, InfluxUnavailable, InfluxWriteRejected


class Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, list[str]], dict[str, str], bytes]] = []
        self.status = 204
        self.body = b""


@pytest.fixture
def endpoint() -> Iterator[tuple[str, Recorder]]:
    rec = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            url = urlsplit(self.path)
            rec.requests.append(("POST", url.path, parse_qs(url.query),
                                 {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(rec.status)
            self.send_header("Content-Length", str(len(rec.body)))
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(rec.body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the test asserts on the recorded requests instead

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", rec
    server.shutdown()
    server.server_close()


def test_v2_write_request_is_what_influxdb_2_expects(endpoint: tuple[str, Recorder]) -> None:
    url, rec = endpoint
    settings = Settings(influx_url=url, influx_write_api="v2", influx_org="cizo-org",
                        influx_bucket="telemetry", influx_token="s3cret-token")
    body = (b"kit_telemetry,kit_id=K1 soc=50.0 1700000000\n"
            b"kit_status,kit_id=K1 online=true 1700000001")
    with InfluxClient.from_settings(settings) as client:
        client.write(body)
    assert len(rec.requests) == 1
    method, path, query, headers, sent = rec.requests[0]
    assert (method, path) == ("POST", "/api/v2/write")
    assert query["org"] == ["cizo-org"] and query["bucket"] == ["telemetry"]
    assert query["precision"] == ["s"]
    assert headers["authorization"] == "Token s3cret-token"
    assert sent == body


def test_v2_bucket_defaults_to_db_and_rp(endpoint: tuple[str, Recorder]) -> None:
    url, rec = endpoint
    settings = Settings(influx_url=url, influx_write_api="v2", influx_org="o", influx_db="cizo",
                        influx_rp="raw", influx_token="t")
    with InfluxClient.from_settings(settings) as client:
        client.write(b"m,kit_id=K v=1 1")
    assert rec.requests[0][2]["bucket"] == ["cizo/raw"]


def test_v2_errors_map_to_retry_or_reject(endpoint: tuple[str, Recorder]) -> None:
    url, rec = endpoint
    settings = Settings(influx_url=url, influx_write_api="v2", influx_org="o",
                        influx_bucket="b", influx_token="t")
    with InfluxClient.from_settings(settings) as client:
        rec.status, rec.body = 400, b'{"code":"invalid","message":"unable to parse line 1"}'
        with pytest.raises(InfluxWriteRejected) as rejected:
            client.write(b"bad line")
        assert rejected.value.status_code == 400
        assert rejected.value.error == "unable to parse line 1"
        rec.status, rec.body = 503, b'{"message":"unavailable"}'
        with pytest.raises(InfluxUnavailable):
            client.write(b"m v=1 1")
    down = Settings(influx_url="http://127.0.0.1:9", influx_write_api="v2", influx_org="o",
                    influx_bucket="b", influx_token="t")
    with InfluxClient.from_settings(down) as client, pytest.raises(InfluxUnavailable):
        client.write(b"m v=1 1")
