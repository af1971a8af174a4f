"""PayGate beyond the basics: format drift, duplicate/late/concurrent callbacks from the
simulator to a real server, status API faults with polling, payments we never started
(matched by phone), and the database going away (503, nothing half-written)."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg
import pytest

from cizo.clock import ManualClock
from cizo.settings import Settings
from control.api import create_app
from control.ledger.db import migrate
from control.ledger.models import AuditEntry, Payment
from control.ledger.secrets import generate_secret_key
from control.payments import poll
from control.runtime import Runtime
from payment_sim.paygate import PayGateHandle
from tests.api_support import Keys, TestClient, serve_in_thread
from tests.payments_support import (
    WEBHOOK_URL,
    account,
    agent_payment,
    callback_body,
    count,
    entries,
    make_kit,
    payment_by_ref,
    settle,
    signed,
    start_intent,
    webhook_secret,
)
from tests.support import wait_for

pytestmark = pytest.mark.payment_providers


def test_format_drift_is_accepted_and_credits_once(
    client: TestClient, rt: Runtime, keys: Keys, paygate_sim: PayGateHandle
) -> None:
    make_kit(rt, "KIT-D1")
    ident = start_intent(client, keys, "KIT-D1")
    view = settle(paygate_sim, ident)
    base = callback_body(view)
    variants: list[dict[str, Any]] = [
        {**base, "tx_reference": str(base["tx_reference"])},
        {**base, "payment_method": "TMONEY", "phone_number": base["phone_number"][3:]},
        {**base, "phone_number": "+" + base["phone_number"],
         "datetime": base["datetime"][:19] + "Z"},
        {k: v for k, v in base.items() if k != "identifier"},  # only the tx_reference
        {**{k: v for k, v in base.items() if k != "identifier"},
         "tx_reference": str(base["tx_reference"]), "unknown_new_field": {"x": 1}},
    ]
    outcomes = []
    for v in variants:
        r = client.post("/v1/payments/paygate", json=v)
        assert r.status_code == 200, (v, r.text)
        outcomes.append(r.json()["outcome"])
    assert outcomes == ["credited"] + ["already_credited"] * 4
    p = payment_by_ref(rt, "paygate", ident)
    assert p.network == "TMONEY" and p.tx_reference == str(base["tx_reference"])
    assert p.paid_at is not None and entries(rt) == 1


@pytest.mark.timeout(120)
def test_duplicate_late_and_concurrent_callbacks_from_the_simulator(
    rt: Runtime, keys: Keys, paygate_sim: PayGateHandle
) -> None:
    for i in range(5):
        make_kit(rt, f"KIT-D2-{i}")
    server = serve_in_thread(create_app(rt))
    sim = paygate_sim.sim
    sim.config.callback_url = f"{server.url}/v1/payments/paygate"
    sim.config.duplicate_callbacks = 2
    sim.config.redeliver_fraction = 1.0
    sim.config.redeliver_delay_s = 0.3
    sim.config.format_drift = True
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            idents = [start_intent(http, keys, f"KIT-D2-{i}") for i in range(5)]  # type: ignore[arg-type]
            for ident in idents:
                settle(paygate_sim, ident)
            wait_for(lambda: all(sum(c["ok"] for c in sim.by_identifier[i].callbacks) == 4
                                 for i in idents), what="all callback copies delivered")
    finally:
        server.stop()
    assert entries(rt) == 5
    for i in range(5):
        assert account(rt, f"KIT-D2-{i}").paid_total_fcfa == 2700


def test_status_api_5xx_answers_503_and_the_poller_credits_later(
    client: TestClient, rt: Runtime, keys: Keys, paygate_sim: PayGateHandle
) -> None:
    make_kit(rt, "KIT-D3")
    ident = start_intent(client, keys, "KIT-D3")
    view = settle(paygate_sim, ident)
    paygate_sim.sim.config.status_error_rate = 1.0
    r = client.post("/v1/payments/paygate", json=callback_body(view))
    assert r.status_code == 503 and entries(rt) == 0
    assert payment_by_ref(rt, "paygate", ident).status == "pending"
    rt.clock.advance(3600)  # type: ignore[attr-defined]
    assert poll.poll_pending(rt).unavailable == 1
    paygate_sim.sim.config.status_error_rate = 0.0
    rt.clock.advance(3 * 3600)  # type: ignore[attr-defined]
    assert poll.poll_pending(rt).credited == 1
    assert entries(rt) == 1


def test_a_paygate_payment_we_never_started_is_matched_by_phone(
    client: TestClient, rt: Runtime, paygate_sim: PayGateHandle
) -> None:
    make_kit(rt, "KIT-D4", phone="+22891112233")
    r = httpx.post(f"{paygate_sim.url}/api/v1/pay", json={
        "auth_token": rt.settings.paygate_auth_token.get_secret_value(),
        "phone_number": "91112233", "amount": 500, "description": "from USSD",
        "identifier": "USSD-1", "network": "FLOOZ"})
    assert r.json()["status"] == 0
    view = settle(paygate_sim, "USSD-1")
    r = client.post("/v1/payments/paygate", json=callback_body(view))
    assert r.json()["outcome"] == "credited"
    p = payment_by_ref(rt, "paygate", "USSD-1")
    assert p.matched_by == "phone" and account(rt, "KIT-D4").paid_total_fcfa == 2500
    assert client.post("/v1/payments/paygate", json=callback_body(view)).json()["outcome"] \
        == "already_credited"


def _runtime(url: str) -> Runtime:
    settings = Settings(database_url=url, secret_key=generate_secret_key(),
                        paygate_url="http://127.0.0.1:9", paygate_timeout_s=0.5)
    return Runtime.build(settings, clock=ManualClock())


def test_database_unavailable_answers_503_and_writes_nothing(pg_database: str) -> None:
    url = pg_database
    migrate(url)
    rt = _runtime(url)
    make_kit(rt, "KIT-DB")
    secret = webhook_secret(rt)
    # the server dies in the middle of the transaction (after the payment row is in)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("""
            CREATE FUNCTION die() RETURNS trigger AS $$ BEGIN
            RAISE EXCEPTION 'terminating connection' USING ERRCODE = '57P01';
            END; $$ LANGUAGE plpgsql;
            CREATE TRIGGER die BEFORE INSERT ON ledger_entries
                FOR EACH ROW EXECUTE FUNCTION die();""")
    with TestClient(create_app(rt)) as client:
        raw, headers = signed(secret, agent_payment("DB1", reference="KIT-DB"))
        r = client.post(WEBHOOK_URL, content=raw, headers=headers)
        assert r.status_code == 503 and r.headers["retry-after"], r.text
        assert count(rt, Payment, Payment.provider == "agent") == 0
        assert count(rt, AuditEntry, AuditEntry.action.like("payment.%")) == 0
        assert account(rt, "KIT-DB").paid_total_fcfa == 2000
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP TRIGGER die ON ledger_entries")
        r = client.post(WEBHOOK_URL, content=raw, headers=headers)
        assert r.json()["outcome"] == "credited"  # the provider's retry succeeds
    rt.db.dispose()
    # no database at all
    down = _runtime("postgresql://postgres@127.0.0.1:9/none")
    with TestClient(create_app(down)) as client:
        r = client.post("/v1/payments/paygate", json={"identifier": "X-1"})
        assert r.status_code == 503
        r = client.put(f"/v1/payments/momo/callback/{'0' * 8}-0000-4000-8000-{'0' * 12}",
                       json={})
        assert r.status_code == 503
        r = client.post(WEBHOOK_URL, content=raw, headers=headers)
        assert r.status_code == 503
    down.db.dispose()
