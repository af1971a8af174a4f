"""The PayGate Global simulator over real HTTP, with a real callback receiver."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from payment_sim import PayGateHandle, PayGateSimConfig, run_in_thread

TOKEN = "merchant-token"


class Receiver:
    """A merchant callback endpoint: records bodies, can fail the first N requests."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail_first = 0
        self.requests = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver.lock:
                    receiver.requests += 1
                    fail = receiver.requests <= receiver.fail_first
                    if not fail:
                        receiver.bodies.append(json.loads(raw))
                self.send_response(500 if fail else 200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/callbacks/paygate"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.bodies) >= count:
                    return list(self.bodies)
            time.sleep(0.02)
        raise AssertionError(f"expected {count} callbacks, got {len(self.bodies)}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def paygate(receiver: Receiver) -> Iterator[PayGateHandle]:
    handle = run_in_thread(PayGateSimConfig(
        auth_token=TOKEN, callback_url=receiver.url, approve_after_s=0.3, retry_backoff_s=0.05,
    ))
    yield handle
    handle.stop()


def pay(base: str, ident: str, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "auth_token": TOKEN, "phone_number": "92104312", "amount": 500,
        "description": "CIZO kit credit", "identifier": ident, "network": "TMONEY",
    }
    body.update(over)
    resp = httpx.post(f"{base}/api/v1/pay", json=body)
    assert resp.status_code == 200
    result: dict[str, Any] = resp.json()
    return result


def status_v1(base: str, tx_reference: Any, token: str = TOKEN) -> httpx.Response:
    return httpx.post(f"{base}/api/v1/status",
                      json={"auth_token": token, "tx_reference": tx_reference})


def status_v2(base: str, identifier: str, token: str = TOKEN) -> httpx.Response:
    return httpx.post(f"{base}/api/v2/status", json={"auth_token": token, "identifier": identifier})


def wait_status(base: str, identifier: str, wanted: int, timeout_s: float = 5.0
                ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        data: dict[str, Any] = status_v2(base, identifier).json()
        if data["status"] == wanted:
            return data
        time.sleep(0.05)
    raise AssertionError(f"{identifier} never reached status {wanted}")


def test_payment_goes_pending_then_paid_and_calls_back(
    paygate: PayGateHandle, receiver: Receiver
) -> None:
    created = pay(paygate.url, "CIZO-1")
    assert created["status"] == 0 and isinstance(created["tx_reference"], int)
    ref = created["tx_reference"]

    pending = status_v1(paygate.url, ref).json()
    assert pending["status"] == 2 and pending["payment_reference"] == ""

    paid = wait_status(paygate.url, "CIZO-1", 0)
    assert paid["tx_reference"] == ref and paid["amount"] == 500
    assert paid["payment_method"] == "T-Money" and paid["phone_number"] == "22892104312"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", paid["datetime"])
    assert paid["payment_reference"].isdigit()

    (callback,) = receiver.wait_for(1)
    assert callback == {k: paid[k] for k in (
        "tx_reference", "identifier", "payment_reference", "amount", "datetime",
        "payment_method", "phone_number")}
    assert status_v1(paygate.url, ref).json() == status_v2(paygate.url, "CIZO-1").json()
    assert status_v1(paygate.url, str(ref)).json() == paid  # form-style string reference


def test_duplicate_identifier_bad_token_and_bad_params(paygate: PayGateHandle) -> None:
    assert pay(paygate.url, "CIZO-2")["status"] == 0
    assert pay(paygate.url, "CIZO-2") == {"status": 6}
    assert pay(paygate.url, "CIZO-3", auth_token="wrong") == {"status": 2}
    for bad in ({"amount": 0}, {"amount": 12.5}, {"amount": True}, {"network": "MTN"},
                {"phone_number": "123"}, {"identifier": ""}, {"description": None}):
        assert pay(paygate.url, "CIZO-4", **bad) == {"status": 4}, bad
    resp = httpx.post(f"{paygate.url}/api/v1/pay", content=b"not json")
    assert resp.json() == {"status": 4}


def test_form_encoded_pay_is_accepted(paygate: PayGateHandle) -> None:
    resp = httpx.post(f"{paygate.url}/api/v1/pay", data={
        "auth_token": TOKEN, "phone_number": "+22899000000", "amount": "1000",
        "description": "x", "identifier": "CIZO-FORM", "network": "FLOOZ",
    })
    assert resp.json()["status"] == 0
    data = status_v2(paygate.url, "CIZO-FORM").json()
    assert (data["amount"], data["payment_method"], data["phone_number"]) == (
        1000, "FLOOZ", "22899000000")


def test_status_errors_cannot_be_read_as_a_payment_state(paygate: PayGateHandle) -> None:
    ref = pay(paygate.url, "CIZO-5")["tx_reference"]
    for resp in (status_v2(paygate.url, "nope"), status_v1(paygate.url, ref + 10_000)):
        assert resp.status_code == 404 and "status" not in resp.json()
        assert resp.json()["error_code"] == 403
    for resp in (status_v2(paygate.url, "CIZO-5", token="x"), status_v1(paygate.url, ref, "x")):
        assert resp.status_code == 401 and "status" not in resp.json()
    assert status_v1(paygate.url, "abc").status_code == 400


def test_decline_cancels_without_callback_and_never_stays_pending(
    paygate: PayGateHandle, receiver: Receiver
) -> None:
    httpx.post(f"{paygate.url}/_sim/config", json={"outcome": "decline"}).raise_for_status()
    pay(paygate.url, "CIZO-D")
    assert wait_status(paygate.url, "CIZO-D", 6)["payment_reference"] == ""
    httpx.post(f"{paygate.url}/_sim/config", json={"outcome": "never"}).raise_for_status()
    pay(paygate.url, "CIZO-N")
    time.sleep(0.6)
    assert status_v2(paygate.url, "CIZO-N").json()["status"] == 2
    assert receiver.bodies == []
    settled = httpx.post(f"{paygate.url}/_sim/settle",
                         json={"identifier": "CIZO-N", "outcome": "approve"})
    assert settled.json()["state"] == "paid"
    assert receiver.wait_for(1)[0]["identifier"] == "CIZO-N"


def test_callback_is_retried_and_duplicated(
    paygate: PayGateHandle, receiver: Receiver
) -> None:
    receiver.fail_first = 2
    httpx.post(f"{paygate.url}/_sim/config",
               json={"duplicate_callbacks": 2, "approve_after_s": 0.05}).raise_for_status()
    pay(paygate.url, "CIZO-R")
    bodies = receiver.wait_for(3)
    assert len({json.dumps(b, sort_keys=True) for b in bodies}) == 1  # identical copies
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        (tx,) = httpx.get(f"{paygate.url}/_sim/transactions").json()
        if tx["callbacks_delivered"] == 3:
            break
        time.sleep(0.05)
    assert tx["callbacks_delivered"] == 3 and len(tx["callback_attempts"]) == 5
    assert [a["status_code"] for a in tx["callback_attempts"] if not a["ok"]] == [500, 500]


def test_forged_callback_goes_to_the_merchant(paygate: PayGateHandle, receiver: Receiver
                                              ) -> None:
    forged = {"tx_reference": 1, "identifier": "CIZO-FAKE", "amount": 1_000_000}
    resp = httpx.post(f"{paygate.url}/_sim/callback", json=forged)
    assert resp.json()["status_code"] == 200
    assert receiver.wait_for(1) == [forged]


def test_unreachable_callback_url_gives_up_and_records_errors(receiver: Receiver) -> None:
    handle = run_in_thread(PayGateSimConfig(
        auth_token=TOKEN, callback_url="http://127.0.0.1:9/nowhere", approve_after_s=0.0,
        callback_retries=2, retry_backoff_s=0.01,
    ))
    try:
        pay(handle.url, "CIZO-X")
        wait_status(handle.url, "CIZO-X", 0)
        deadline = time.monotonic() + 5
        # an attempt is recorded before it is made: wait for three finished ones
        while sum(1 for a in handle.sim.by_identifier["CIZO-X"].callbacks
                  if a["error"] or a["status_code"]) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        attempts = handle.sim.by_identifier["CIZO-X"].callbacks
        assert all(a["error"] and not a["ok"] for a in attempts)
    finally:
        handle.stop()


def test_pending_payment_expires_when_configured(paygate: PayGateHandle) -> None:
    httpx.post(f"{paygate.url}/_sim/config",
               json={"outcome": "never", "expire_after_s": 0.2}).raise_for_status()
    pay(paygate.url, "CIZO-E")
    assert wait_status(paygate.url, "CIZO-E", 4)["identifier"] == "CIZO-E"


def test_a_restarted_simulator_keeps_its_transactions_from_the_journal(
    receiver: Receiver, tmp_path: Path
) -> None:
    """A provider does not forget a payment when its server dies: with a journal, a new
    simulator knows the paid transaction, its pending one is answered by the customer,
    and its next reference does not collide."""
    journal = tmp_path / "paygate.journal"
    config = PayGateSimConfig(auth_token=TOKEN, callback_url=receiver.url,
                              approve_after_s=0.1, journal=journal)
    first = run_in_thread(config)
    try:
        paid_ref = pay(first.url, "KEEP-1")["tx_reference"]
        paid = wait_status(first.url, "KEEP-1", 0)
        first.sim.config.approve_after_s = 3_600.0  # the next customer is slow to answer
        pending_ref = pay(first.url, "KEEP-2")["tx_reference"]
    finally:
        first.stop()
    second = run_in_thread(config)  # customers answer in 0.1 s again
    try:
        assert status_v2(second.url, "KEEP-1").json() == paid
        assert wait_status(second.url, "KEEP-2", 0)["tx_reference"] == pending_ref
        assert pay(second.url, "KEEP-3")["tx_reference"] > max(paid_ref, pending_ref)
        assert pay(second.url, "KEEP-1")["status"] == 6  # still a duplicate identifier
    finally:
        second.stop()
