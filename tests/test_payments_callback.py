"""Payments end to end against the PayGate simulator: intents, callbacks confirmed before
credit, exactly-once crediting (also under ten concurrent identical callbacks)."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select

from control.api import create_app
from control.ledger.models import Account, AuditEntry, LedgerEntry, Payment
from control.runtime import Runtime
from payment_sim.paygate import PayGateHandle
from tests.api_support import DAY, Keys, TestClient, provision, serve_in_thread
from tests.payments_support import (
    account,
    callback_body,
    count,
    post_at_once,
    settle,
    start_intent,
)


def credited_entries(rt: Runtime) -> int:
    return count(rt, LedgerEntry, LedgerEntry.kind == "payment")


def test_intent_starts_a_paygate_payment(
    client: TestClient, rt: Runtime, keys: Keys, paygate_sim: PayGateHandle
) -> None:
    provision(client, keys.admin, "KIT-P1")
    identifier = start_intent(client, keys, "KIT-P1")
    tx = paygate_sim.sim.by_identifier[identifier]
    assert (tx.amount, tx.network, tx.phone_number) == (700, "TMONEY", "22890123456")
    got = client.get(f"/v1/payments/{identifier}", headers=Keys.auth(keys.operator)).json()
    assert got["status"] == "pending" and got["requested_fcfa"] == 700
    assert got["kit_id"] == "KIT-P1" and got["phone"] == "+22890123456"
    # roles, scope, validation
    body = {"kit_id": "KIT-P1", "amount_fcfa": 700, "phone": "90123456", "network": "FLOOZ"}
    assert client.post("/v1/payments/intents", json=body,
                       headers=Keys.auth(keys.operator)).status_code == 403
    assert client.post("/v1/payments/intents", json=body,
                       headers=Keys.auth(keys.north_admin)).status_code == 404
    assert client.get(f"/v1/payments/{identifier}",
                      headers=Keys.auth(keys.north_operator)).status_code == 404
    for bad in ({"amount_fcfa": 0}, {"network": "MTN"}, {"phone": "+33 6 12 34 56 78"}):
        resp = client.post("/v1/payments/intents", json={**body, **bad},
                           headers=Keys.auth(keys.finance))
        assert resp.status_code == 422, bad


def test_paid_callback_confirmed_by_status_api_credits_once(
    client: TestClient, rt: Runtime, keys: Keys, paygate_sim: PayGateHandle
) -> None:
    provision(client, keys.admin, "KIT-P2")
    identifier = start_intent(client, keys, "KIT-P2")
    # a callback before the customer approved is only a hint: nothing is credited
    early = client.post("/v1/payments/paygate", json={"identifier": identifier})
    assert early.status_code == 200 and early.json()["outcome"] == "pending"
    assert credited_entries(rt) == 0

    now = int(rt.clock.now())
    view = settle(paygate_sim, identifier)
    resp = client.post("/v1/payments/paygate", json=callback_body(view))
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"outcome": "credited", "identifier": identifier, "credited": True}
    acct = account(rt, "KIT-P2")
    assert acct.paid_total_fcfa == 2700
    assert acct.credit_until is not None and abs(acct.credit_until - (now + 7 * DAY)) <= 2

    dup = client.post("/v1/payments/paygate", json=callback_body(view))
    assert dup.status_code == 200
    assert dup.json()["outcome"] == "already_credited" and dup.json()["credited"] is False
    assert credited_entries(rt) == 1
    assert account(rt, "KIT-P2").paid_total_fcfa == 2700

    pay = client.get(f"/v1/payments/{identifier}", headers=Keys.auth(keys.finance)).json()
    assert pay["status"] == "credited" and pay["amount_fcfa"] == 700
    assert pay["payment_reference"] == view["payment_reference"]
    assert pay["tx_reference"] == str(view["tx_reference"])
    kit = client.get("/v1/kits/KIT-P2", headers=Keys.auth(keys.operator)).json()
    assert kit["commanded_action"] == "unlock" and kit["credit_until"] == acct.credit_until
    cmd = kit["latest_commands"][0]
    assert cmd["origin"] == "payment" and cmd["status"] == "sent"
    assert rt.service.publisher.sent[-1][0] == "KIT-P2"  # type: ignore[union-attr]


def test_forged_callbacks_credit_nothing(
    client: TestClient, rt: Runtime, keys: Keys, paygate_sim: PayGateHandle
) -> None:
    provision(client, keys.admin, "KIT-P3")
    forged = {"identifier": "CIZO-KIT-P3-000000000000", "tx_reference": 1, "amount": 50_000,
              "payment_reference": "1", "payment_method": "T-Money",
              "phone_number": "22890123456", "datetime": "2026-01-01T00:00:00Z"}
    resp = client.post("/v1/payments/paygate", json=forged)
    assert resp.status_code == 200 and resp.json()["outcome"] == "unknown"
    # an intent of ours that PayGate does not know (never registered there)
    now = rt.clock.now()
    with rt.db.session() as s:
        acct = s.scalars(select(Account).where(Account.kit_id == "KIT-P3")).one()
        s.add(Payment(desco_id="default", provider="paygate", provider_ref="CIZO-KIT-P3-ours",
                      account_id=acct.id, requested_fcfa=700, status="pending",
                      created_at=now, updated_at=now))
    resp = client.post("/v1/payments/paygate", json={**forged, "identifier": "CIZO-KIT-P3-ours"})
    assert resp.status_code == 200 and resp.json()["outcome"] == "unknown"
    assert credited_entries(rt) == 0
    assert account(rt, "KIT-P3").paid_total_fcfa == 2000
    with rt.db.session() as s:
        logged = s.scalar(select(func.count()).select_from(AuditEntry).where(
            AuditEntry.action == "payment.callback_unconfirmed"))
        statuses = set(s.scalars(select(Payment.status)))
    assert logged == 2
    assert "credited" not in statuses


def test_amount_differing_from_the_intent_goes_to_suspense(
    client: TestClient, rt: Runtime, keys: Keys, paygate_sim: PayGateHandle
) -> None:
    provision(client, keys.admin, "KIT-P4")
    identifier = start_intent(client, keys, "KIT-P4", amount=700)
    paygate_sim.sim.by_identifier[identifier].amount = 500  # what PayGate says was paid
    view = settle(paygate_sim, identifier)
    resp = client.post("/v1/payments/paygate", json={**callback_body(view), "amount": 700})
    assert resp.status_code == 200 and resp.json()["outcome"] == "suspense"
    assert credited_entries(rt) == 0
    assert account(rt, "KIT-P4").paid_total_fcfa == 2000
    pay = client.get(f"/v1/payments/{identifier}", headers=Keys.auth(keys.finance)).json()
    assert pay["status"] == "suspense" and pay["amount_fcfa"] == 500
    assert "500" in pay["reason"] and "700" in pay["reason"]
    again = client.post("/v1/payments/paygate", json=callback_body(view))
    assert again.json()["outcome"] == "suspense" and credited_entries(rt) == 0


def test_paygate_status_api_down_answers_503_and_credits_nothing(
    client: TestClient, rt: Runtime, keys: Keys, paygate_sim: PayGateHandle
) -> None:
    provision(client, keys.admin, "KIT-P5")
    identifier = start_intent(client, keys, "KIT-P5")
    view = settle(paygate_sim, identifier)
    paygate_sim.stop()
    resp = client.post("/v1/payments/paygate", json=callback_body(view))
    assert resp.status_code == 503 and "detail" in resp.json()
    assert credited_entries(rt) == 0
    pay = client.get(f"/v1/payments/{identifier}", headers=Keys.auth(keys.finance)).json()
    assert pay["status"] == "pending"
    # and a new intent cannot start: clear 503, the payment is marked failed
    resp = client.post("/v1/payments/intents", headers=Keys.auth(keys.finance), json={
        "kit_id": "KIT-P5", "amount_fcfa": 700, "phone": "90123456", "network": "FLOOZ"})
    assert resp.status_code == 503
    with rt.db.session() as s:
        failed = s.scalars(select(Payment).where(Payment.status == "failed")).one()
        assert failed.reason and "unavailable" in failed.reason


def test_bad_callback_bodies_get_clear_errors(client: TestClient, rt: Runtime) -> None:
    resp = client.post("/v1/payments/paygate", content=b"not json",
                       headers={"content-type": "application/json"})
    assert resp.status_code == 400 and "JSON" in resp.json()["detail"]
    assert client.post("/v1/payments/paygate", json=[1, 2]).status_code == 422
    resp = client.post("/v1/payments/paygate", json={"amount": 700})
    assert resp.status_code == 422 and "identifier" in resp.json()["detail"]


@pytest.mark.timeout(120)
def test_ten_concurrent_identical_callbacks_credit_once(
    database_url: str, rt: Runtime, keys: Keys, paygate_sim: PayGateHandle
) -> None:
    app = create_app(rt)
    server = serve_in_thread(app)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            resp = http.post("/v1/kits", headers=Keys.auth(keys.admin), json={
                "kit_id": "KIT-C", "phone": "90123456", "plan": {
                    "deposit_fcfa": 2000, "daily_rate_fcfa": 100, "total_price_fcfa": 50_000}})
            assert resp.status_code == 201
            resp = http.post("/v1/payments/intents", headers=Keys.auth(keys.finance), json={
                "kit_id": "KIT-C", "amount_fcfa": 700, "phone": "90123456", "network": "FLOOZ"})
            identifier = resp.json()["identifier"]
        body = callback_body(settle(paygate_sim, identifier))
        results = post_at_once(server.url, "/v1/payments/paygate", 10, json=body)
    finally:
        server.stop()
    assert [code for code, _ in results] == [200] * 10, results
    assert sum(1 for _, r in results if r["credited"]) == 1
    assert {r["outcome"] for _, r in results} <= {"credited", "already_credited"}
    assert credited_entries(rt) == 1
    assert account(rt, "KIT-C").paid_total_fcfa == 2700
