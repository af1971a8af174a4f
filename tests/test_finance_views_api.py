"""What the finance page and the kit timeline read: payments with filters in keyset pages,
suspense proposals showing who proposed and who decided, one kit's events in one time
order; each role- and DESCO-checked like the rest of the API."""

from __future__ import annotations

import pytest

from control.runtime import Runtime
from tests.api_support import Keys, TestClient
from tests.payments_support import agent_payment, make_kit, post_webhook, webhook_secret

pytestmark = pytest.mark.payment_providers


def _pay(client: TestClient, secret: str, tx: str, amount: int, reference: str) -> int:
    r = post_webhook(client, secret, agent_payment(tx, amount, reference=reference))
    assert r.status_code == 200, r.text
    pid: int = r.json()["payment_id"]
    return pid


def test_payments_list_filters_pages_and_tenancy(client: TestClient, rt: Runtime,
                                                 keys: Keys) -> None:
    make_kit(rt, "KIT-L1", phone="+22890000601")
    make_kit(rt, "KIT-L2", phone="+22890000602")
    make_kit(rt, "KIT-LN", phone="+22890000603", desco_id="north")
    secret = webhook_secret(rt)
    ids = [_pay(client, secret, f"L{i}", 500 + i, "KIT-L1" if i % 2 else "KIT-L2")
           for i in range(5)]
    parked = _pay(client, secret, "L-S", 900, "nobody")
    fin = Keys.auth(keys.finance)
    page = client.get("/v1/payments?limit=4", headers=fin).json()
    assert [p["payment_id"] for p in page["items"]] == [parked, *ids[::-1][:3]]
    rest = client.get(f"/v1/payments?limit=4&before={page['next_before']}", headers=fin).json()
    assert [p["payment_id"] for p in rest["items"]] == ids[1::-1] and rest["next_before"] is None
    l1 = client.get("/v1/payments?kit_id=KIT-L1", headers=fin).json()["items"]
    assert {p["kit_id"] for p in l1} == {"KIT-L1"} and len(l1) == 2
    susp = client.get("/v1/payments?status=suspense&provider=agent", headers=fin).json()
    assert [(p["payment_id"], p["amount_fcfa"]) for p in susp["items"]] == [(parked, 900)]
    assert client.get("/v1/payments?provider=paygate", headers=fin).json()["items"] == []
    now = rt.clock.now()
    assert client.get(f"/v1/payments?since={now + 1}", headers=fin).json()["items"] == []
    assert len(client.get(f"/v1/payments?until={now + 1}", headers=fin).json()["items"]) == 6
    # every staff role reads payments, as GET /v1/payments/{identifier}; a DESCO sees its own
    for key in (keys.operator, keys.support):
        assert client.get("/v1/payments", headers=Keys.auth(key)).status_code == 200
    north = client.get("/v1/payments?kit_id=KIT-L1", headers=Keys.auth(keys.north_operator))
    assert north.status_code == 200 and north.json()["items"] == []
    r = client.get("/v1/payments?status=x;drop", headers=fin)
    assert r.status_code == 422


def test_suspense_queue_shows_who_proposed_and_who_decided(client: TestClient, rt: Runtime,
                                                           keys: Keys) -> None:
    make_kit(rt, "KIT-Q1", phone="+22890000701")
    secret = webhook_secret(rt)
    pid = _pay(client, secret, "Q1", 800, "typo")
    sup, fin = Keys.auth(keys.support), Keys.auth(keys.finance)
    link = client.post(f"/v1/suspense/{pid}/links", headers=sup,
                       json={"account": "KIT-Q1", "reason": "customer called"}).json()
    queue = client.get("/v1/suspense", headers=fin).json()
    [row] = [q for q in queue if q["payment_id"] == pid]
    assert [(x["link_id"], x["status"], x["proposed_by"], x["decided_by"], x["kit_id"])
            for x in row["links"]] == [(link["link_id"], "proposed", "support-ama", None, "KIT-Q1")]
    assert row["links"][0]["reason"] == "customer called"
    # another DESCO's admin can neither see, propose on nor decide this DESCO's payment
    north = Keys.auth(keys.north_admin)
    assert pid not in {q["payment_id"] for q in client.get("/v1/suspense", headers=north).json()}
    assert client.post(f"/v1/suspense/{pid}/links", headers=north,
                       json={"account": "KIT-Q1", "reason": "seen at the desk"}).status_code == 404
    assert client.post(f"/v1/suspense/links/{link['link_id']}/approve", headers=north,
                       json={}).status_code == 404
    # operators read payments but take no part in the queue, as the page shows them
    for path in (f"/v1/suspense/links/{link['link_id']}/approve",
                 f"/v1/suspense/links/{link['link_id']}/reject"):
        r = client.post(path, headers=Keys.auth(keys.operator), json={})
        assert r.status_code == 403 and r.json()["code"] == "role_forbidden"
    r = client.post(f"/v1/suspense/links/{link['link_id']}/approve", headers=fin, json={})
    assert r.status_code == 200, r.text
    decided = client.get("/v1/suspense/links?status=approved", headers=sup).json()
    assert [(x["link_id"], x["proposed_by"], x["decided_by"]) for x in decided] == [
        (link["link_id"], "support-ama", "finance")]
    assert decided[0]["decided_at"] is not None
    assert client.get("/v1/suspense/links", headers=Keys.auth(keys.operator)).status_code == 403
    assert client.get("/v1/suspense/links",
                      headers=Keys.auth(keys.north_admin)).json() == []


def test_kit_timeline_merges_sources_in_time_order_per_role_and_desco(
    client: TestClient, rt: Runtime, keys: Keys
) -> None:
    make_kit(rt, "KIT-T1", phone="+22890000801")
    secret = webhook_secret(rt)
    _pay(client, secret, "T1", 700, "KIT-T1")
    r = client.post("/v1/kits/KIT-T1/unlock", headers=Keys.auth(keys.support),
                    json={"days": 1, "reason": "promo"})
    assert r.status_code == 200, r.text
    out = client.get("/v1/kits/KIT-T1/timeline", headers=Keys.auth(keys.operator)).json()
    times = [e["at"] for e in out["items"]]
    assert times == sorted(times, reverse=True)
    kinds = {e["kind"] for e in out["items"]}
    assert {"payment", "command_issued", "audit"} <= kinds
    assert "kit.unlock" in {e["summary"] for e in out["items"] if e["kind"] == "audit"}
    assert out["telemetry_checked"] is False  # no InfluxDB here: no false gaps either
    assert client.get("/v1/kits/KIT-T1/timeline",
                      headers=Keys.auth(keys.north_operator)).status_code == 404
    assert client.get("/v1/kits/NOPE/timeline",
                      headers=Keys.auth(keys.finance)).status_code == 404
