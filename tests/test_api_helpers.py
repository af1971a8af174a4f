"""Shared fixtures for the API and payment tests: a Runtime on a real ledger database,
the PayGate simulator on a free port, API keys per role, a recording command publisher.

Test modules import the ``*_fixture`` functions they use from here (pytest finds them
by their ``name=``); no tests live in this module.
"""

from __future__ import annotations

import socket
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    # starlette 1.x prefers the httpx2 package for its TestClient; httpx still works
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient as TestClient

from cizo.clock import ManualClock
from cizo.settings import Settings
from control.api import create_app
from control.ledger.db import migrate
from control.ledger.models import Desco
from control.ledger.secrets import generate_secret_key
from control.runtime import Runtime
from control.security.api_keys import create_api_key, ensure_admin_key
from payment_sim.paygate import PayGateHandle, PayGateSimConfig, run_in_thread

ADMIN_KEY = "cizo_test_admin_key_0123456789abcdef"
PAYGATE_TOKEN = "test-paygate-token"
PLAN = {"deposit_fcfa": 2000, "daily_rate_fcfa": 100, "total_price_fcfa": 50_000}
DAY = 86_400


@dataclass
class RecordingPublisher:
    """Stands in for the MQTT link: records what would be published."""

    sent: list[tuple[str, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish_command(self, kit_id: str, payload: bytes) -> bool:
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


@pytest.fixture(name="paygate_sim")
def paygate_sim_fixture() -> Iterator[PayGateHandle]:
    """The PayGate simulator; its customers never answer: tests settle by hand."""
    handle = run_in_thread(PayGateSimConfig(auth_token=PAYGATE_TOKEN, outcome="never",
                                            callback_url=None))
    yield handle
    if handle.thread.is_alive():
        handle.stop()


@pytest.fixture(name="rt")
def rt_fixture(database_url: str, paygate_sim: PayGateHandle) -> Iterator[Runtime]:
    migrate(database_url)
    settings = Settings(
        database_url=database_url, secret_key=generate_secret_key(),
        admin_api_key=ADMIN_KEY, paygate_url=paygate_sim.url,
        paygate_auth_token=PAYGATE_TOKEN, paygate_timeout_s=3.0,
        influx_url="http://127.0.0.1:9",  # nothing listens: last telemetry must be null
    )
    runtime = Runtime.build(settings, clock=ManualClock())
    runtime.service.publisher = RecordingPublisher()
    with runtime.db.session() as s:
        s.add(Desco(id="north", name="North DESCO", created_at=0.0))
    yield runtime
    runtime.paygate.close()
    runtime.db.dispose()


@pytest.fixture(name="keys")
def keys_fixture(rt: Runtime) -> Keys:
    assert ensure_admin_key(rt) is not None
    assert ensure_admin_key(rt) == ensure_admin_key(rt)  # kept, not duplicated
    return Keys(
        admin=ADMIN_KEY,
        operator=create_api_key(rt, name="ops", role="operator")[1],
        support=create_api_key(rt, name="support-ama", role="support")[1],
        finance=create_api_key(rt, name="finance", role="finance")[1],
        north_admin=create_api_key(rt, name="north-admin", role="admin", desco_id="north")[1],
        north_operator=create_api_key(rt, name="north-ops", role="operator",
                                      desco_id="north")[1],
    )


@pytest.fixture(name="client")
def client_fixture(rt: Runtime) -> Iterator[TestClient]:
    with TestClient(create_app(rt)) as c:
        yield c


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
