"""DESCO tenants: a key scoped to one DESCO gets 404 for another DESCO's kit, payment,
command or audit trail on every endpoint (found by walking app.routes), and its lists
never mention another DESCO's objects.
"""

from __future__ import annotations

from typing import Any

from control.ledger.secrets import ROLES
from control.runtime import Runtime
from control.security.api_keys import create_api_key
from tests.api_support import Keys, TestClient, provision
from tests.security_support import auth, endpoints, fill

PHONE_DEFAULT = "+22891111111"


def _seed(client: TestClient, keys: Keys) -> dict[str, str]:
    """One kit with a payment, commands and audit entries in each of two DESCOs."""
    ids: dict[str, str] = {}
    for kit, desco, phone in (("KIT-DEF", "default", PHONE_DEFAULT),
                              ("KIT-NOR", "north", "+22892222222")):
        provision(client, keys.admin, kit, desco_id=desco, phone=phone)
        r = client.post("/v1/kits/" + kit + "/unlock", json={"days": 2, "reason": "test"},
                        headers=auth(keys.support))
        assert r.status_code == 200, r.text
        ids[f"{desco}.command_id"] = r.json()["command_id"]
        r = client.post("/v1/payments/intents", json={
            "kit_id": kit, "amount_fcfa": 500, "phone": phone, "network": "FLOOZ"},
            headers=auth(keys.finance))
        assert r.status_code == 201, r.text
        ids[f"{desco}.identifier"] = r.json()["identifier"]
    return ids


def test_a_desco_key_cannot_reach_another_descos_objects(
    client: TestClient, rt: Runtime, keys: Keys
) -> None:
    ids = _seed(client, keys)
    north = {role: create_api_key(rt, name=f"north {role}", role=role, desco_id="north")[1]
             for role in ROLES if role != "regulator"}
    foreign = {"kit_id": "KIT-DEF", "identifier": ids["default.identifier"],
               "command_id": ids["default.command_id"], "desco_id": "default",
               "account": "KIT-DEF", "account_number": "KIT-DEF"}
    own = {"kit_id": "KIT-NOR", "identifier": ids["north.identifier"],
           "command_id": ids["north.command_id"], "desco_id": "north"}
    secrets_of_default = ("KIT-DEF", ids["default.identifier"], PHONE_DEFAULT,
                          ids["default.command_id"])
    checked_objects = checked_lists = 0
    for e in endpoints(client.app):  # type: ignore[arg-type]
        if e.roles is None:
            continue
        role = "admin" if "admin" in e.roles else sorted(e.roles - {"regulator"})[0]
        key = north[role]
        known = [p for p in e.path_params if p in foreign]
        if known and len(known) == len(e.path_params):
            body: dict[str, Any] = {}
            if e.has_body:
                body = {"json": {"days": 1, "reason": "tenancy test"}}
            url = fill(e.path, foreign)
            r = client.request(e.method, url, headers=auth(key), **body)
            allowed = {404} if e.method == "GET" else {404, 403, 422}
            assert r.status_code in allowed, (e.key, r.status_code, r.text)
            for secret in secrets_of_default:
                assert secret in url or secret not in r.text, (e.key, secret)
            # indistinguishable from an object that does not exist at all
            missing = fill(e.path, {p: f"NOPE{i}" for i, p in enumerate(e.path_params)})
            r2 = client.request(e.method, missing, headers=auth(key), **body)
            assert r2.status_code == r.status_code, (e.key, r.text, r2.text)
            if e.method == "GET":
                # and the same endpoint does find the key's own DESCO's object
                mine = client.get(fill(e.path, own), headers=auth(key))
                assert mine.status_code != 404, (e.key, mine.text)
            checked_objects += 1
        elif not e.path_params and e.method == "GET":
            r = client.get(e.path, headers=auth(key))
            for secret in secrets_of_default:
                assert secret not in r.text, (e.key, secret, r.text[:300])
            checked_lists += 1
    assert checked_objects >= 4 and checked_lists >= 2, (checked_objects, checked_lists)


def test_desco_admin_cannot_provision_or_unlock_into_another_desco(
    client: TestClient, keys: Keys
) -> None:
    provision(client, keys.admin, "KIT-DEF2", desco_id="default")
    r = client.post("/v1/kits", json={"kit_id": "KIT-X", "phone": "90123456", "desco_id":
                                      "default", "plan": {"deposit_fcfa": 0,
                                                          "daily_rate_fcfa": 100,
                                                          "total_price_fcfa": 1000}},
                    headers=auth(keys.north_admin))
    assert r.status_code == 403
    r = client.post("/v1/kits/KIT-DEF2/unlock", json={"days": 1, "reason": "x"},
                    headers=auth(keys.north_admin))
    assert r.status_code == 404
    r = client.get("/v1/kits/KIT-DEF2/audit", headers=auth(keys.north_operator))
    assert r.status_code == 404
