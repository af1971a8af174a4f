"""Support staff over HTTP: lock, set-credit-until, repossess, swap, rotate; each
audited (who, when, why, before, after); operators refused; 7-day rule; lifecycle visible."""

from __future__ import annotations

import json

from control.ledger.models import Account, Kit
from control.runtime import Runtime
from tests.api_support import DAY, Keys, TestClient, provision


def _audit(client: TestClient, keys: Keys, kit_id: str) -> list[dict[str, object]]:
    r = client.get(f"/v1/kits/{kit_id}/audit", headers=Keys.auth(keys.operator))
    assert r.status_code == 200
    items: list[dict[str, object]] = r.json()["items"]
    return items


def test_lock_and_set_credit_until_are_audited_and_issue_commands(
    client: TestClient, rt: Runtime, keys: Keys
) -> None:
    provision(client, keys.admin, "SUP-1")
    sup = Keys.auth(keys.support)
    now = int(rt.clock.now())
    r = client.post("/v1/kits/SUP-1/set-credit-until",
                    json={"credit_until": now + 5 * DAY, "reason": "goodwill after outage"},
                    headers=sup)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["after"]["credit_until"] == now + 5 * DAY and body["command_id"]
    r = client.post("/v1/kits/SUP-1/lock", json={"reason": "customer asked: travelling"},
                    headers=sup)
    assert r.status_code == 200, r.text
    lock_id = r.json()["command_id"]
    cmds = client.get("/v1/kits/SUP-1/commands", headers=Keys.auth(keys.operator)).json()
    assert [c["action"] for c in cmds["items"]] == ["lock", "unlock"]
    assert cmds["items"][0]["id"] == lock_id and cmds["items"][1]["status"] == "superseded"
    assert cmds["anomaly_count"] == 0
    audit = _audit(client, keys, "SUP-1")
    lock, setc = audit[0], audit[1]
    assert lock["action"] == "kit.lock" and lock["actor"] == "support-ama"
    assert lock["reason"] == "customer asked: travelling"
    assert lock["before"]["credit_until"] == now + 5 * DAY  # type: ignore[index]
    assert lock["after"]["credit_until"] <= now + 5  # type: ignore[index]
    assert setc["action"] == "kit.set_credit_until" and setc["at"]
    # operators read, never act; more than 7 days needs admin; owned kits have no credit
    op = Keys.auth(keys.operator)
    assert client.post("/v1/kits/SUP-1/lock", json={"reason": "x"}, headers=op).status_code \
        == 403
    far = {"credit_until": now + 30 * DAY, "reason": "long"}
    assert client.post("/v1/kits/SUP-1/set-credit-until", json=far, headers=sup).status_code \
        == 403
    assert client.post("/v1/kits/SUP-1/set-credit-until", json=far,
                       headers=Keys.auth(keys.admin)).status_code == 200
    with rt.db.session() as s:
        acct = s.query(Account).filter(Account.kit_id == "SUP-1").one()
        acct.owned = True
    r = client.post("/v1/kits/SUP-1/lock", json={"reason": "x"}, headers=sup)
    assert r.status_code == 409 and "owned" in r.json()["detail"]


def test_repossess_locks_for_good_and_swap_moves_the_account(
    client: TestClient, rt: Runtime, keys: Keys
) -> None:
    provision(client, keys.admin, "SUP-2")
    provision(client, keys.admin, "SUP-3")
    sup = Keys.auth(keys.support)
    client.post("/v1/kits/SUP-2/unlock", json={"days": 5, "reason": "promo"}, headers=sup)
    r = client.post("/v1/kits/SUP-2/repossess", json={"reason": "stopped paying 90 days"},
                    headers=sup)
    assert r.status_code == 200, r.text
    assert r.json()["after"]["closed"] is True
    with rt.db.session() as s:
        kit = s.get(Kit, "SUP-2")
        assert kit is not None and kit.commanded_action == "lock"
    # closed for good: a later unlock changes no command
    r = client.post("/v1/kits/SUP-2/lock", json={"reason": "again"}, headers=sup)
    assert r.status_code == 409
    assert rt.service.sweep().issued == 0

    client.post("/v1/kits/SUP-3/unlock", json={"days": 4, "reason": "install"}, headers=sup)
    with rt.db.session() as s:
        until = s.query(Account).filter(Account.kit_id == "SUP-3").one().credit_until
    r = client.post("/v1/kits/SUP-3/swap", json={"new_kit_id": "SUP-3B", "reason": "faulty"},
                    headers=sup)
    assert r.status_code == 200, r.text
    creds = r.json()["credentials"]
    assert creds["kit_id"] == "SUP-3B" and len(creds["command_secret"]) == 64
    assert creds["account_number"] == "SUP-3"
    with rt.db.session() as s:
        acct = s.query(Account).filter(Account.account_number == "SUP-3").one()
        assert acct.kit_id == "SUP-3B" and acct.credit_until == until
        old = s.get(Kit, "SUP-3")
        assert old is not None and old.decommissioned_at is not None
        assert creds["command_secret"] not in json.dumps(
            {c.name: str(getattr(s.get(Kit, "SUP-3B"), c.name)) for c in Kit.__table__.columns})
    detail = client.get("/v1/kits/SUP-3B", headers=sup).json()
    assert detail["commanded_action"] == "unlock" and detail["credit_until"] == until
    for kid in ("SUP-3", "SUP-3B"):
        assert _audit(client, keys, kid)[0]["action"] == "kit.swap"
    assert client.post("/v1/kits/SUP-3/lock", json={"reason": "x"}, headers=sup).status_code \
        == 409  # decommissioned
    # rotation is for admins; one at a time
    assert client.post("/v1/kits/SUP-3B/rotate-secret", headers=sup).status_code == 403
    r = client.post("/v1/kits/SUP-3B/rotate-secret", headers=Keys.auth(keys.admin))
    assert r.status_code == 200 and r.json()["action"] == "rotate"
    assert client.post("/v1/kits/SUP-3B/rotate-secret",
                       headers=Keys.auth(keys.admin)).status_code == 409
    status = client.get("/v1/control/status", headers=Keys.auth(keys.operator)).json()
    assert status["commands_by_status"]["superseded"] >= 1
