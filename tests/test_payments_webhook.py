"""The signed generic webhook (DESCO agents): matching, suspense, bad input, replays,
reversals, exactly-once under concurrency, and no secret in the logs."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from control.api import create_app
from control.ledger import check
from control.ledger.models import Command, Payment
from control.runtime import Runtime
from tests.api_support import TestClient, serve_in_thread
from tests.payments_support import (
    WEBHOOK_URL,
    account,
    agent_payment,
    audits,
    count,
    entries,
    make_kit,
    payment_by_ref,
    post_at_once,
    post_webhook,
    signed,
    webhook_secret,
)

pytestmark = pytest.mark.payment_providers


def test_matching_by_reference_then_phone_else_suspense(client: TestClient,
                                                        rt: Runtime) -> None:
    a = make_kit(rt, "KIT-W1", phone="+22890000001")
    make_kit(rt, "KIT-W2", phone="+22890000002")
    secret = webhook_secret(rt)
    # reference typed any old way
    r = post_webhook(client, secret, agent_payment("T1", reference=" kit w1 ", phone="90000002"))
    assert r.status_code == 200 and r.json()["outcome"] == "credited", r.text
    assert account(rt, "KIT-W1").paid_total_fcfa == 2700
    assert payment_by_ref(rt, "agent", "default:T1").matched_by == "reference"
    # no reference: the payer's registered phone, in any format
    r = post_webhook(client, secret, agent_payment("T2", amount="300", phone="228 90 00 00 02"))
    assert r.json()["outcome"] == "credited"
    assert account(rt, "KIT-W2").paid_total_fcfa == 2300
    assert payment_by_ref(rt, "agent", "default:T2").matched_by == "phone"
    # nothing matches: held in suspense with a 2xx, never dropped
    r = post_webhook(client, secret, agent_payment("T3", reference="NOPE-1", phone="+22899999999"))
    assert r.status_code == 200 and r.json()["outcome"] == "suspense"
    p = payment_by_ref(rt, "agent", "default:T3")
    assert p.status == "suspense" and p.amount_fcfa == 700 and p.account_id is None
    # a kit command was queued for the credited ones
    assert count(rt, Command, Command.origin == "payment") == 2
    assert a and entries(rt) == 2


def test_ambiguous_reference_x100_and_other_desco_go_to_suspense(client: TestClient,
                                                                 rt: Runtime) -> None:
    make_kit(rt, "KIT-77", phone="+22890000011")
    make_kit(rt, "kit77", phone="+22890000012")
    make_kit(rt, "KIT-N1", phone="+22890000013", desco_id="north")
    secret = webhook_secret(rt)
    r = post_webhook(client, secret, agent_payment("A1", reference="Kit 77"))
    assert r.json()["outcome"] == "suspense"
    assert "2 accounts" in (payment_by_ref(rt, "agent", "default:A1").reason or "")
    # 48,000 owed; 70,000 (700 x 100) is more than owed: held for a human
    r = post_webhook(client, secret, agent_payment("A2", amount=4_800_000, reference="KIT-77-X"))
    assert r.json()["outcome"] == "suspense"
    r = post_webhook(client, secret, agent_payment("A3", amount=70_000, phone="+22890000011"))
    assert r.json()["outcome"] == "suspense"
    assert "x100" in (payment_by_ref(rt, "agent", "default:A3").reason or "")
    # another DESCO's kit is not reachable through this DESCO's webhook
    r = post_webhook(client, secret, agent_payment("A4", reference="KIT-N1"))
    assert r.json()["outcome"] == "suspense"
    assert entries(rt) == 0


BAD: list[tuple[dict[str, Any] | bytes, int]] = [
    (b"", 400), (b"not json", 400), (b"[1,2]", 422),
    (agent_payment("B1", extra_field=1), 422), ({"amount": 700, "currency": "XOF"}, 422),
    ({"transaction_id": "B2", "currency": "XOF"}, 422), (agent_payment("B3", amount=0), 422),
    (agent_payment("B4", amount=-700), 422), (agent_payment("B5", amount=700.5), 422),
    (agent_payment("B6", amount=10**12), 422), (agent_payment("B7", amount="7e2"), 422),
    ({**agent_payment("B8"), "currency": "EUR"}, 422), (agent_payment("B9", phone="hello"), 422),
    (agent_payment("B10", type="reversal"), 422),
]


def test_bad_bodies_get_clear_answers_and_credit_nothing(client: TestClient,
                                                         rt: Runtime) -> None:
    make_kit(rt, "KIT-B", phone="+22890000021")
    secret = webhook_secret(rt)
    for data, code in BAD:
        r = post_webhook(client, secret, data)
        assert r.status_code == code, (data, r.text)
        assert "detail" in r.json()
    assert count(rt, Payment, Payment.provider == "agent") == 0


def test_signature_replay_content_type_and_unknown_desco(client: TestClient,
                                                         rt: Runtime) -> None:
    make_kit(rt, "KIT-S", phone="+22890000031")
    secret = webhook_secret(rt)
    now = int(rt.clock.now())
    raw, headers = signed(secret, agent_payment("S1", reference="KIT-S"), t=now - 301)
    r = client.post(WEBHOOK_URL, content=raw, headers=headers)  # replayed old webhook
    assert r.status_code == 401 and "tolerance" in r.json()["detail"]
    raw, headers = signed("whsec_wrong", agent_payment("S1", reference="KIT-S"), t=now)
    assert client.post(WEBHOOK_URL, content=raw, headers=headers).status_code == 401
    raw, headers = signed(secret, agent_payment("S1", reference="KIT-S"), t=now)
    assert client.post(WEBHOOK_URL, content=raw, headers={}).status_code == 415
    no_sig = {"content-type": "application/json"}
    assert client.post(WEBHOOK_URL, content=raw, headers=no_sig).status_code == 401
    r = client.post(WEBHOOK_URL, content=raw, headers={**headers, "content-type": "text/plain"})
    assert r.status_code == 415
    # north has no webhook secret; a known secret of another DESCO does not sign for it
    r = client.post("/v1/payments/webhook/north", content=raw, headers=headers)
    assert r.status_code == 401
    assert entries(rt) == 0
    r = client.post(WEBHOOK_URL, content=raw, headers=headers)
    assert r.status_code == 200 and r.json()["credited"] is True
    # the exact same request again (within the tolerance): a duplicate, not a second credit
    r = client.post(WEBHOOK_URL, content=raw, headers=headers)
    assert r.json()["outcome"] == "duplicate" and r.json()["credited"] is False
    # same transaction id, another amount: a conflict, nothing changes
    r = post_webhook(client, secret, agent_payment("S1", amount=900, reference="KIT-S"))
    assert r.status_code == 409
    assert entries(rt) == 1 and account(rt, "KIT-S").paid_total_fcfa == 2700


def test_reversals_are_correcting_entries_and_may_lock_the_kit(client: TestClient,
                                                               rt: Runtime) -> None:
    make_kit(rt, "KIT-R", phone="+22890000041")
    secret = webhook_secret(rt)
    r = post_webhook(client, secret, agent_payment("R1", reference="KIT-R"))
    assert r.json()["outcome"] == "credited"
    assert client.get("/v1/kits/KIT-R").status_code in (401, 403)  # sanity: API is keyed
    r = post_webhook(client, secret, agent_payment("R1-REV", type="reversal", reverses="R1",
                                                   note="chargeback"))
    assert r.status_code == 200 and r.json()["outcome"] == "reversed", r.text
    acct = account(rt, "KIT-R")
    assert acct.paid_total_fcfa == 2000 and acct.remainder_fcfa == 0
    assert acct.credit_until is not None and acct.credit_until <= rt.clock.now() + 1
    with rt.db.session() as s:
        cmds = list(s.query(Command).filter(Command.kit_id == "KIT-R").order_by(Command.seq))
    assert [c.action for c in cmds][-2:] == ["unlock", "lock"]
    assert rt.service.publisher.sent[-1][0] == "KIT-R"  # type: ignore[union-attr]
    # the original is untouched; the reversal is its own row and entry
    assert payment_by_ref(rt, "agent", "default:R1").status == "credited"
    assert payment_by_ref(rt, "agent", "default:R1-REV").kind == "reversal"
    # more than is left to reverse: 409, nothing recorded
    r = post_webhook(client, secret, agent_payment("R1-REV2", amount=100, type="reversal",
                                                   reverses="R1"))
    assert r.status_code == 409
    # a reversal for a payment we never had: parked for staff, nothing moves
    r = post_webhook(client, secret, agent_payment("R9-REV", type="reversal", reverses="R9"))
    assert r.status_code == 200 and r.json()["outcome"] == "unknown_original"
    assert audits(rt, "payment.reversal_unknown") == 1
    assert account(rt, "KIT-R").paid_total_fcfa == 2000
    with rt.db.session() as s:
        assert check.check_ledger(s) == []


def test_secrets_never_reach_the_logs(client: TestClient, rt: Runtime,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    make_kit(rt, "KIT-L", phone="+22890000051")
    secret = webhook_secret(rt)
    post_webhook(client, secret, agent_payment("L1", reference="KIT-L"))
    post_webhook(client, "whsec_forged_secret_value", agent_payment("L2", reference="KIT-L"))
    post_webhook(client, secret, agent_payment("L3", reference="NOPE", phone="+22890000099"))
    text = caplog.text + json.dumps([r.__dict__ for r in caplog.records], default=str)
    assert caplog.records, "expected some logging"
    for leaked in (secret, "whsec_forged_secret_value", "+22890000051", "+22890000099",
                   rt.settings.momo_api_key.get_secret_value(),
                   rt.settings.paygate_auth_token.get_secret_value()):
        assert leaked not in text


@pytest.mark.timeout(120)
def test_ten_concurrent_identical_webhooks_credit_once(rt: Runtime) -> None:
    make_kit(rt, "KIT-C10", phone="+22890000061")
    secret = webhook_secret(rt)
    server = serve_in_thread(create_app(rt))
    raw, headers = signed(secret, agent_payment("C1", reference="KIT-C10"))
    try:
        results = post_at_once(server.url, WEBHOOK_URL, 10, content=raw, headers=headers)
    finally:
        server.stop()
    assert [c for c, _ in results] == [200] * 10, results
    assert sum(1 for _, r in results if r["credited"]) == 1
    assert {r["outcome"] for _, r in results} <= {"credited", "duplicate"}
    assert entries(rt) == 1 and account(rt, "KIT-C10").paid_total_fcfa == 2700
