"""Helpers for the API and payment tests: the API keys per role, provisioning a kit through
the API, a recording command publisher, a real uvicorn server in a thread.

The fixtures built on them (``rt``, ``keys``, ``client``, the simulators) are in
tests/fixtures/runtime.py; no tests live in this module.
"""

from __future__ import annotations

import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    # starlette 1.x prefers the httpx2 package for its TestClient; httpx still works
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient as TestClient

ADMIN_KEY = "cizo_test_admin_key_0123456789abcdef"
PAYGATE_TOKEN = "test-paygate-token"
PLAN = {"deposit_fcfa": 2000, "daily_rate_fcfa": 100, "total_price_fcfa": 50_000}
DAY = 86_400


@dataclass
class RecordingPublisher:
    """Stands in for the MQTT link: records what would be published."""

    sent: list[tuple[str, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish_command(self, kit_id: str, payload: bytes, version: int = 1) -> bool:
        with self.lock:
            self.sent.append((kit_id, payload))
        return True


@dataclass
class Keys:
    admin: str
    operator: str
    support: str
    finance: str
    north_admin: str
    north_operator: str

    @staticmethod
    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


def provision(client: TestClient, key: str, kit_id: str, **extra: Any) -> dict[str, Any]:
    body = {"kit_id": kit_id, "phone": "90 12 34 56", "plan": PLAN, **extra}
    resp = client.post("/v1/kits", json=body, headers=Keys.auth(key))
    assert resp.status_code == 201, resp.text
    data: dict[str, Any] = resp.json()
    return data


@dataclass
class ServerHandle:
    server: uvicorn.Server
    thread: threading.Thread
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def serve_in_thread(app: FastAPI) -> ServerHandle:
    """A real uvicorn server on a free port, for tests that need true concurrency."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, ws="none",
                                           log_level="warning", access_log=False,
                                           lifespan="off"))

    def run() -> None:
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    return ServerHandle(server, thread, port)
