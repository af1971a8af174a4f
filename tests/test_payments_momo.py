"""MTN MoMo collections end to end against the MoMo simulator: callbacks by PUT or POST
confirmed with GET, FAILED with its reason, PENDING polled, status API faults."""

from __future__ import annotations

import logging
import uuid

import httpx
import pytest

from control.api import create_app
from control.payments import poll
from control.runtime import Runtime
from payment_sim.momo import MoMoHandle
from tests.api_support import Keys, TestClient, serve_in_thread
from tests.payments_support import (
    MOMO_API_KEY,
    MOMO_SUB_KEY,
    account,
    audits,
    entries,
    make_kit,
    payment_by_ref,
    sim_settle,
)
from tests.support import wait_for

pytestmark = pytest.mark.payment_providers


def intent(http: httpx.Client | TestClient, keys: Keys, kit_id: str, amount: int = 700) -> str:
    r = http.post("/v1/payments/momo/intents", headers=Keys.auth(keys.finance),
                  json={"kit_id": kit_id, "amount_fcfa": amount, "phone": "+228 90 12 34 56"})
    assert r.status_code == 201, r.text
    ref: str = r.json()["reference_id"]
    assert r.json()["status"] == "pending"
    return ref


def test_callbacks_by_put_and_post_are_confirmed_and_credit_once(
    rt: Runtime, keys: Keys, momo_sim: MoMoHandle
) -> None:
    make_kit(rt, "KIT-M1")
    server = serve_in_thread(create_app(rt))
    rt.settings.public_base_url = server.url
    sim = momo_sim.sim
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            ref = intent(http, keys, "KIT-M1")
            tx = sim.by_ref[ref]
            assert tx.callback_url == f"{server.url}/v1/payments/momo/callback/{ref}"
            assert (tx.amount, tx.currency, tx.party_id, tx.external_id) == (
                700, "XOF", "22890123456", "KIT-M1")
            sim.config.duplicate_callbacks = 2  # three copies at once, by PUT
            sim_settle(momo_sim, ref)
            wait_for(lambda: payment_by_ref(rt, "momo", ref).status == "credited",
                     what="MoMo PUT callback credited")
            wait_for(lambda: sum(c["ok"] for c in tx.callbacks) == 3, what="3 callbacks")
            sim.config.callback_method = "POST"
            sim.config.amount_as_number = True
            ref2 = intent(http, keys, "KIT-M1", amount=300)
            sim_settle(momo_sim, ref2)
            wait_for(lambda: payment_by_ref(rt, "momo", ref2).status == "credited",
                     what="MoMo POST callback credited")
    finally:
        server.stop()
    assert entries(rt) == 2 and account(rt, "KIT-M1").paid_total_fcfa == 3000
    p = payment_by_ref(rt, "momo", ref)
    assert p.payment_reference == tx.financial_transaction_id and p.matched_by == "intent"


def test_failed_is_recorded_with_its_reason_and_pending_is_polled(
    client: TestClient, rt: Runtime, keys: Keys, momo_sim: MoMoHandle
) -> None:
    make_kit(rt, "KIT-M2")
    ref = intent(client, keys, "KIT-M2")
    sim_settle(momo_sim, ref, "fail", "NOT_ENOUGH_FUNDS")  # its callback finds no server
    r = client.put(f"/v1/payments/momo/callback/{ref}", json={"status": "FAILED"})
    assert r.status_code == 200 and r.json()["outcome"] == "failed"
    p = payment_by_ref(rt, "momo", ref)
    assert p.status == "failed" and "NOT_ENOUGH_FUNDS" in (p.reason or "")

    # a forged "SUCCESSFUL" callback while MoMo says PENDING: only a hint
    ref2 = intent(client, keys, "KIT-M2")
    r = client.put(f"/v1/payments/momo/callback/{ref2}",
                   json={"status": "SUCCESSFUL", "amount": "700", "currency": "XOF"})
    assert r.json()["outcome"] == "pending" and entries(rt) == 0
    # the customer approves; the callback is lost (no server); the poller finds it
    sim_settle(momo_sim, ref2)
    assert poll.poll_pending(rt).checked == 0  # not due yet
    rt.clock.advance(3600)  # type: ignore[attr-defined]
    result = poll.poll_pending(rt)
    assert result.credited == 1, result
    assert payment_by_ref(rt, "momo", ref2).status == "credited"
    assert entries(rt) == 1 and account(rt, "KIT-M2").paid_total_fcfa == 2700


def test_status_api_down_or_timing_out_stays_pending_then_credits(
    client: TestClient, rt: Runtime, keys: Keys, momo_sim: MoMoHandle
) -> None:
    make_kit(rt, "KIT-M3")
    sim = momo_sim.sim
    ref = intent(client, keys, "KIT-M3")
    sim_settle(momo_sim, ref)
    sim.config.status_error_rate = 1.0
    r = client.put(f"/v1/payments/momo/callback/{ref}", json={"status": "SUCCESSFUL"})
    assert r.status_code == 503 and r.headers["retry-after"]
    sim.config.status_error_rate, sim.config.status_timeout_rate = 0.0, 1.0
    sim.config.status_hang_s = 1.3  # longer than our 1 s timeout
    r = client.post(f"/v1/payments/momo/callback/{ref}", json={"status": "SUCCESSFUL"})
    assert r.status_code == 503
    p = payment_by_ref(rt, "momo", ref)
    assert p.status == "pending" and p.check_attempts == 2 and p.next_check_at is not None
    assert entries(rt) == 0
    rt.clock.advance(3600)  # type: ignore[attr-defined]
    assert poll.poll_pending(rt).unavailable == 1  # still down: retried later
    sim.config.status_timeout_rate = 0.0
    rt.clock.advance(3 * 3600)  # type: ignore[attr-defined]
    assert poll.poll_pending(rt).credited == 1
    assert entries(rt) == 1


def test_bad_callbacks_and_doubtful_confirmations(
    client: TestClient, rt: Runtime, keys: Keys, momo_sim: MoMoHandle,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    make_kit(rt, "KIT-M4")
    url = f"/v1/payments/momo/callback/{uuid.uuid4()}"
    assert client.put(url, content=b"", headers={"content-type": "application/json"}
                      ).status_code == 400
    assert client.put(url, content=b"<xml/>").status_code == 415  # not JSON at all
    assert client.put(url, json=["x"]).status_code == 422
    assert client.put("/v1/payments/momo/callback/not-a-uuid", json={}).status_code == 404
    r = client.put(url, json={"status": "SUCCESSFUL", "amount": 5000})  # MoMo never heard
    assert r.status_code == 200 and r.json()["outcome"] == "unknown"
    assert audits(rt, "payment.callback_unconfirmed") == 1
    # MoMo confirms another currency, or 100x the amount: held in suspense, not credited
    sim = momo_sim.sim
    ref = intent(client, keys, "KIT-M4")
    sim.by_ref[ref].currency = "EUR"
    sim_settle(momo_sim, ref)
    assert client.put(f"/v1/payments/momo/callback/{ref}", json={}).json()["outcome"] \
        == "suspense"
    ref2 = intent(client, keys, "KIT-M4")
    sim.by_ref[ref2].amount = 70_000
    sim_settle(momo_sim, ref2)
    assert client.put(f"/v1/payments/momo/callback/{ref2}", json={}).json()["outcome"] \
        == "suspense"
    assert "x100" in (payment_by_ref(rt, "momo", ref2).reason or "")
    assert "EUR" in (payment_by_ref(rt, "momo", ref).reason or "")
    assert entries(rt) == 0
    for secret in (MOMO_API_KEY, MOMO_SUB_KEY):
        assert secret not in caplog.text
