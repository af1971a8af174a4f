"""PayGate client: format drift normalised; network errors, timeouts and 5xx are retryable."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cizo.services import free_port
from control.gateways.paygate import (
    PayGateClient,
    PayGateError,
    PayGateUnavailable,
    normalise_network,
    parse_status,
)
from payment_sim.paygate import PayGateHandle, PayGateSimConfig, run_in_thread
from tests.api_support import ServerHandle, serve_in_thread

LOGGED = {"tx_reference": 4671135, "identifier": "TEST2_1757422968_3014", "amount": 10,
          "payment_reference": "13171916025", "payment_method": "T-Money",
          "datetime": "2025-09-09T13:03:31.000Z", "phone_number": "22892104312", "status": 0}
PAID_AT = datetime(2025, 9, 9, 13, 3, 31, tzinfo=UTC).timestamp()


def test_the_logged_real_answer_is_normalised() -> None:
    st = parse_status("TEST2_1757422968_3014", LOGGED)
    assert st is not None and st.paid
    assert st.tx_reference == "4671135"
    assert st.amount == 10
    assert st.payment_method == "TMONEY"
    assert st.phone_e164 == "+22892104312"
    assert st.paid_at == PAID_AT
    assert st.payment_reference == "13171916025"


@pytest.mark.parametrize("drift", [
    {"tx_reference": "4671135", "phone_number": "+22892104312",
     "datetime": "2025-09-09T13:03:31Z", "payment_method": "TMONEY", "amount": "10"},
    {"phone_number": "92104312", "datetime": "2025-09-09T13:03:31",
     "payment_method": "Tmoney", "status": "0"},
    {"datetime": "2025-09-09 13:03:31.000+00:00", "amount": 10.0},
])
def test_format_drift_is_normalised(drift: dict[str, Any]) -> None:
    st = parse_status("TEST2_1757422968_3014", {**LOGGED, **drift})
    assert st is not None
    assert (st.status, st.tx_reference, st.amount) == (0, "4671135", 10)
    assert st.payment_method == "TMONEY" and st.phone_e164 == "+22892104312"
    assert st.paid_at == PAID_AT


def test_networks_and_unknowns() -> None:
    assert {normalise_network(x) for x in ("FLOOZ", "Flooz", "flooz")} == {"FLOOZ"}
    assert {normalise_network(x) for x in ("T-Money", "TMONEY", "Tmoney")} == {"TMONEY"}
    assert parse_status("A", {"error_code": 403, "error_message": "x"}) is None
    assert parse_status("A", {**LOGGED, "identifier": "B"}) is None  # answered for another
    with pytest.raises(PayGateError):
        parse_status("A", {**LOGGED, "identifier": "A", "amount": 10.5})


@pytest.fixture
def sim() -> Iterator[PayGateHandle]:
    handle = run_in_thread(PayGateSimConfig(auth_token="tok", outcome="never"))
    yield handle
    handle.stop()


def test_against_the_simulator(sim: PayGateHandle) -> None:
    client = PayGateClient(sim.url, "tok", timeout_s=3)
    try:
        result = client.pay(phone_local="90123456", amount=700, description="kit",
                            identifier="ID-1", network="FLOOZ")
        assert result.registered and result.tx_reference.isdigit()
        dup = client.pay(phone_local="90123456", amount=700, description="kit",
                         identifier="ID-1", network="FLOOZ")
        assert dup.status == 6 and dup.status_text == "duplicate identifier"
        st = client.status_by_identifier("ID-1")
        assert st is not None and st.status == 2 and st.tx_reference == result.tx_reference
        assert st.payment_method == "FLOOZ" and st.phone_e164 == "+22890123456"
        assert client.status_by_identifier("nobody-knows-me") is None
    finally:
        client.close()
    bad = PayGateClient(sim.url, "wrong-token", timeout_s=3)
    try:
        assert bad.pay(phone_local="90123456", amount=700, description="kit",
                       identifier="ID-2", network="FLOOZ").status == 2
        with pytest.raises(PayGateError):
            bad.status_by_identifier("ID-1")
    finally:
        bad.close()


@pytest.fixture
def flaky() -> Iterator[ServerHandle]:
    """A tiny local PayGate that fails in the ways the network does."""
    app = FastAPI()

    @app.post("/api/v2/status")
    async def status(request: Request) -> JSONResponse:
        body = await request.json()
        if body["identifier"] == "slow":
            time.sleep(1.5)  # blocks this test server's loop on purpose
        if body["identifier"] == "boom":
            return JSONResponse({"message": "bad gateway"}, status_code=502)
        return JSONResponse({**LOGGED, "identifier": body["identifier"]})

    handle = serve_in_thread(app)
    yield handle
    handle.stop()


def test_network_errors_timeouts_and_5xx_are_unavailable(flaky: ServerHandle) -> None:
    client = PayGateClient(flaky.url, "tok", timeout_s=0.5)
    try:
        st = client.status_by_identifier("fine")
        assert st is not None and st.paid
        with pytest.raises(PayGateUnavailable):
            client.status_by_identifier("boom")
        with pytest.raises(PayGateUnavailable):
            client.status_by_identifier("slow")
    finally:
        client.close()
    closed = PayGateClient(f"http://127.0.0.1:{free_port()}", "tok", timeout_s=0.5)
    try:
        with pytest.raises(PayGateUnavailable):
            closed.status_by_identifier("x")
        with pytest.raises(PayGateUnavailable):
            closed.pay(phone_local="90123456", amount=1, description="d", identifier="i",
                       network="FLOOZ")
    finally:
        closed.close()
