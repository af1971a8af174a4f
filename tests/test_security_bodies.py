"""No body breaks a public endpoint: every route that takes no API key (found by walking
app.routes) refuses hostile bodies with a clear 4xx and a stable code, stores nothing,
and goes on answering. The slow and the 10 MB bodies go through a real uvicorn server.
"""

from __future__ import annotations

import select
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select as sql_select

from control.api import bodies, create_app
from control.ledger.models import Base
from control.runtime import Runtime
from tests.api_support import ServerHandle, TestClient, serve_in_thread
from tests.payments_support import agent_payment, signed, webhook_secret
from tests.security_support import endpoints, fill

pytestmark = pytest.mark.payment_providers


@pytest.fixture(name="database_url")
def sqlite_only(tmp_path: Path) -> str:
    """The door is the same whatever the ledger: one SQLite file keeps this module fast."""
    return f"sqlite:///{tmp_path / 'ledger.db'}"


JSON = "application/json"
DEEP_ARRAY = b'{"identifier":' + b"[" * 5000 + b"]" * 5000 + b"}"
DEEP_OBJECT = b'{"a":' * 5000 + b"1" + b"}" * 5000

# name -> (body, content type or None, the code it is refused with)
BAD: dict[str, tuple[bytes, str | None, str]] = {
    "deep_array": (DEEP_ARRAY, JSON, "body_too_deep"),
    "deep_object": (DEEP_OBJECT, JSON, "body_too_deep"),
    "invalid_utf8": (b'{"identifier":"\xff\xfe"}', JSON, "body_not_utf8"),
    "text_plain": (b'{"identifier":"x"}', "text/plain", "unsupported_media_type"),
    "form": (b"identifier=x", "application/x-www-form-urlencoded", "unsupported_media_type"),
    "no_content_type": (b'{"identifier":"x"}', None, "unsupported_media_type"),
    "nan": (b'{"amount":NaN}', JSON, "body_not_finite"),
    "infinity": (b'{"amount":Infinity}', JSON, "body_not_finite"),
    "minus_infinity": (b'{"amount":-Infinity}', JSON, "body_not_finite"),
    "overflowing_float": (b'{"amount":1e999}', JSON, "body_not_finite"),
    "duplicate_keys": (b'{"identifier":"a","identifier":"b"}', JSON, "body_duplicate_key"),
    "empty": (b"", JSON, "body_empty"),
    "blank": (b" \r\n ", JSON, "body_empty"),
    "not_json": (b"not json", JSON, "body_not_json"),
    "huge_integer": (b'{"amount":' + b"9" * 5000 + b"}", JSON, "body_not_json"),
    "array": (b"[1,2]", JSON, "body_not_object"),
    "ten_megabytes": (b'{"a":"' + b"x" * 10_000_000 + b'"}', JSON, "body_too_large"),
}


def public_body_routes(client: TestClient) -> list[tuple[str, str]]:
    """(method, URL) of every route that takes a body and no API key."""
    found = [(e.method, fill(e.path, {"reference_id": str(uuid.uuid4()),
                                      "desco_id": "default"}))
             for e in endpoints(client.app)  # type: ignore[arg-type]
             if e.roles is None and e.method in ("POST", "PUT", "PATCH")]
    assert len(found) >= 4, found  # PayGate, MoMo (POST and PUT), the agents' webhook
    return found


def ledger_rows(rt: Runtime) -> dict[str, list[tuple[Any, ...]]]:
    with rt.db.session() as s:
        return {t.name: sorted(map(tuple, s.execute(sql_select(t)).all()), key=repr)
                for t in Base.metadata.sorted_tables}


def headers_for(url: str, body: bytes, ctype: str | None, secret: str) -> dict[str, str]:
    """The webhook's bodies are signed, so they reach the parser, not just the signature."""
    headers = signed(secret, body)[1] if "/webhook/" in url else {}
    headers.pop("content-type", None)
    if ctype is not None:
        headers["content-type"] = ctype
    return headers


def assert_answers_normally(http: httpx.Client | TestClient, routes: list[tuple[str, str]],
                            secret: str) -> None:
    """Each public route still takes a well-formed body (whatever the flow then says)."""
    assert http.get("/healthz").status_code == 200
    for method, url in routes:
        raw, headers = signed(secret, agent_payment(f"TX-{uuid.uuid4().hex[:8]}"))
        if "/webhook/" not in url:
            raw, headers = b'{"identifier": "CIZO-NOBODY-1", "status": "SUCCESSFUL"}', \
                {"content-type": JSON}
        r = http.request(method, url, content=raw, headers=headers)
        assert r.status_code < 500 and r.json().get("code") not in bodies.REFUSALS, (
            method, url, r.text)


@pytest.fixture(name="secret")
def secret_fixture(rt: Runtime) -> str:
    return webhook_secret(rt)


@pytest.mark.parametrize("bad", sorted(BAD))
def test_every_public_route_refuses_a_hostile_body_and_stores_nothing(
    rt: Runtime, client: TestClient, secret: str, bad: str,
) -> None:
    body, ctype, code = BAD[bad]
    routes = public_body_routes(client)
    before = ledger_rows(rt)
    for method, url in routes:
        r = client.request(method, url, content=body, headers=headers_for(url, body, ctype,
                                                                          secret))
        assert 400 <= r.status_code < 500, (bad, method, url, r.status_code, r.text)
        answer = r.json()
        # the refusal's detail and code as before, and its message in the default French
        assert {k: answer[k] for k in ("detail", "code")} == {
            "detail": bodies.REFUSALS[code][1], "code": code}, (bad, url)
        assert set(answer) == {"detail", "code", "message"}, (bad, url)
        assert answer["message"] and r.headers["content-language"] == "fr", (bad, url)
        assert r.status_code == bodies.REFUSALS[code][0]
    assert ledger_rows(rt) == before
    assert_answers_normally(client, routes, secret)


def test_depth_ignores_brackets_inside_strings() -> None:
    assert bodies.depth(b'{"a": "[[[[{{{{", "b": [{"c": "\\"]]"}]}') == 3
    assert bodies.json_object(b'{"a": "' + b"[" * 100 + b'"}') == {"a": "[" * 100}


# --- through a real server: the slow body and the 10 MB body ---------------------------


def _request_head(method: str, url: str, secret: str, extra: str) -> bytes:
    headers = headers_for(url, b"{}", JSON, secret)
    lines = [f"{method} {url} HTTP/1.1", "Host: 127.0.0.1", extra,
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _status_or_closed(sock: socket.socket, wait_s: float) -> int | None:
    """The HTTP status the server answered, or None if it closed without answering."""
    sock.settimeout(wait_s)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    return int(data.split(b" ")[1]) if data.startswith(b"HTTP/1.1 ") else None


def _closed(sock: socket.socket, wait_s: float) -> bool:
    sock.settimeout(wait_s)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


@pytest.fixture(name="server")
def server_fixture(rt: Runtime) -> Iterator[ServerHandle]:
    rt.settings = rt.settings.model_copy(update={"api_body_timeout_s": 2.0})
    handle = serve_in_thread(create_app(rt))
    yield handle
    handle.stop()


def test_slow_bodies_are_cut_by_the_timeout_while_others_are_served(
    rt: Runtime, client: TestClient, secret: str, server: ServerHandle,
) -> None:
    routes, port, before = public_body_routes(client), server.port, ledger_rows(rt)
    slow = []
    for method, url in routes:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(_request_head(method, url, secret, "Content-Length: 1000"))
        slow.append(sock)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        # one byte a second on every slow connection, and the service answers meanwhile
        answered: dict[int, int | None] = {}
        for _ in range(30):
            for i, sock in enumerate(slow):
                if i in answered:
                    continue
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    answered[i] = _status_or_closed(sock, 5)
                    continue
                try:
                    sock.sendall(b" ")
                except OSError:
                    answered[i] = None
            assert http.get("/healthz").status_code == 200
            if len(answered) == len(slow):
                break
            time.sleep(1)
        assert sorted(answered) == list(range(len(slow))), "a slow body was never cut"
        assert all(code in (408, None) for code in answered.values()), answered
        assert all(_closed(sock, 5) for sock in slow)
        assert ledger_rows(rt) == before
        assert_answers_normally(http, routes, secret)
    for sock in slow:
        sock.close()


def test_ten_megabyte_bodies_are_refused_unread(
    rt: Runtime, client: TestClient, secret: str, server: ServerHandle,
) -> None:
    routes, port, before = public_body_routes(client), server.port, ledger_rows(rt)
    ten_mb = 10 * 1024 * 1024
    for method, url in routes:
        # declared: refused by its Content-Length, before the body is read
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(_request_head(method, url, secret, f"Content-Length: {ten_mb}")
                         + b'{"a":"' + b"x" * 1000)
            assert _status_or_closed(sock, 10) == 413, (method, url)
            assert _closed(sock, 10)
        # chunked: refused once more than the limit has arrived, far before 10 MB
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(_request_head(method, url, secret, "Transfer-Encoding: chunked"))
            piece = b"x" * 65536
            sent, status = 0, None
            while sent < ten_mb:
                readable, _, _ = select.select([sock], [], [], 0.01)
                if readable:
                    status = _status_or_closed(sock, 10)
                    break
                try:
                    sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                except OSError:
                    break  # the server closed the connection: refused
                sent += len(piece)
            assert sent < ten_mb and status in (413, None), (method, url, sent, status)
    assert ledger_rows(rt) == before
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert_answers_normally(http, routes, secret)
