"""Every endpoint, found by walking app.routes, refuses a missing key, a wrong key, a revoked
key and a wrong role; API keys are named, hashed, revocable; failed logins and manual
unlocks are rate-limited.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cizo.clock import ManualClock
from cizo.settings import Settings
from control.api import create_app
from control.api.auth import RequireRole
from control.ledger.db import migrate
from control.ledger.models import ApiKey, Desco
from control.ledger.secrets import ROLES, generate_secret_key, hash_api_key
from control.runtime import Runtime
from control.security.api_keys import create_api_key
from tests.api_support import TestClient
from tests.security_support import ANY_KEY, auth, endpoints, fill

PLAN = {"deposit_fcfa": 0, "daily_rate_fcfa": 100, "total_price_fcfa": 10_000}


@dataclass
class World:
    rt: Runtime
    client: TestClient
    keys: dict[str, str]  # role -> national key
    clock: ManualClock


def make_world(tmp_path: Path, **settings: Any) -> Iterator[World]:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate(url)
    clock = ManualClock()
    rt = Runtime.build(Settings(database_url=url, secret_key=generate_secret_key(),
                                paygate_url="http://127.0.0.1:9", **settings), clock=clock)
    with rt.db.session() as s:
        s.add(Desco(id="north", name="North", created_at=0.0))
    keys = {role: create_api_key(rt, name=f"{role} key", role=role)[1] for role in ROLES}
    with TestClient(create_app(rt)) as client:
        yield World(rt, client, keys, clock)
    rt.paygate.close()
    rt.db.dispose()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from make_world(tmp_path, auth_fail_limit=100_000)


def test_every_endpoint_declares_a_role_or_is_listed_public(world: World) -> None:
    eps = endpoints(world.client.app)  # type: ignore[arg-type]
    assert len(eps) >= 10, "the route walk found too few endpoints"
    undeclared = [e.key for e in eps if e.roles is None and not e.is_declared_public()]
    assert undeclared == [], (
        "endpoints without an API-key role (use a *Key alias from control/api/auth.py, or "
        f"list them in tests/security_support.py PUBLIC with the reason): {undeclared}")
    # the regulator never reaches per-kit data: only endpoints open to it are aggregates
    for e in eps:
        if e.roles is not None and "regulator" in e.roles and e.roles != ANY_KEY:
            assert "kit_id" not in e.path_params and "identifier" not in e.path_params, e.key


def test_every_endpoint_refuses_missing_wrong_revoked_key_and_wrong_role(world: World) -> None:
    c = world.client
    revoked_id, revoked = create_api_key(world.rt, name="gone", role="admin")
    with world.rt.db.session() as s:
        row = s.get(ApiKey, revoked_id)
        assert row is not None
        row.revoked_at = world.clock.now()
    checked = 0
    for e in endpoints(c.app):  # type: ignore[arg-type]
        if e.roles is None:
            continue
        url = fill(e.path, {})
        body: dict[str, Any] = {"json": {}} if e.has_body else {}
        for headers, what in (({}, "missing"), (auth("cizo_not_a_key"), "wrong"),
                              (auth(revoked), "revoked"),
                              ({"Authorization": "Basic YWRtaW46YWRtaW4="}, "basic")):
            r = c.request(e.method, url, headers=headers, **body)
            assert r.status_code == 401, (e.key, what, r.status_code, r.text)
            assert r.headers.get("www-authenticate") == "Bearer", e.key
        for role in sorted(set(ROLES) - e.roles):
            r = c.request(e.method, url, headers=auth(world.keys[role]), **body)
            assert r.status_code == 403, (e.key, role, r.status_code, r.text)
        checked += 1
    assert checked >= 8


def test_role_dependency_rejects_unknown_roles() -> None:
    with pytest.raises(ValueError, match="unknown role"):
        RequireRole("superuser")


def test_keys_are_named_hashed_scoped_and_revocable(world: World) -> None:
    c, admin = world.client, world.keys["admin"]
    r = c.post("/v1/keys", json={"name": "Ama (north support)", "role": "support",
                                 "desco_id": "north"}, headers=auth(admin))
    assert r.status_code == 201, r.text
    made = r.json()
    key, key_id = made["key"], made["id"]
    assert made["desco_id"] == "north" and made["role"] == "support"
    with world.rt.db.session() as s:
        row = s.get(ApiKey, key_id)
        assert row is not None and row.key_hash == hash_api_key(key)
        assert key not in repr({col.name: getattr(row, col.name)
                                for col in ApiKey.__table__.columns})
    listed = c.get("/v1/keys", headers=auth(admin))
    assert listed.status_code == 200 and key not in listed.text
    assert "Ama (north support)" in listed.text
    assert c.get("/v1/kits", headers=auth(key)).status_code == 200
    # a DESCO admin manages only its own DESCO's keys
    north_admin = c.post("/v1/keys", json={"name": "north admin", "role": "admin",
                                           "desco_id": "north"}, headers=auth(admin)).json()
    na = north_admin["key"]
    assert c.post("/v1/keys", json={"name": "x", "role": "operator"},
                  headers=auth(na)).json()["desco_id"] == "north"
    assert c.post("/v1/keys", json={"name": "x", "role": "operator", "desco_id": "default"},
                  headers=auth(na)).status_code == 403
    national_ids = {k["id"] for k in c.get("/v1/keys", headers=auth(admin)).json()["items"]
                    if k["desco_id"] is None}
    seen = {k["id"] for k in c.get("/v1/keys", headers=auth(na)).json()["items"]}
    assert not seen & national_ids
    assert c.post(f"/v1/keys/{min(national_ids)}/revoke", headers=auth(na)).status_code == 404
    # the regulator is national only
    r = c.post("/v1/keys", json={"name": "ARSE", "role": "regulator", "desco_id": "north"},
               headers=auth(admin))
    assert r.status_code == 422
    # revocation takes effect on the next request, and is idempotent
    assert c.post(f"/v1/keys/{key_id}/revoke", headers=auth(na)).status_code == 200
    again = c.post(f"/v1/keys/{key_id}/revoke", headers=auth(admin))
    assert again.status_code == 200 and again.json()["revoked_at"] is not None
    r = c.get("/v1/kits", headers=auth(key))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert key_id not in {k["id"] for k in c.get("/v1/keys", headers=auth(admin)).json()["items"]}
    with world.rt.db.session() as s:
        assert s.scalar(select(ApiKey.name).where(ApiKey.id == key_id)) == "Ama (north support)"


def test_failed_authentication_is_rate_limited_per_address(tmp_path: Path) -> None:
    for w in make_world(tmp_path, auth_fail_limit=5, auth_fail_window_s=60):
        c = w.client
        for _ in range(5):
            assert c.get("/v1/kits", headers=auth("cizo_guess")).status_code == 401
        r = c.get("/v1/kits", headers=auth("cizo_guess"))
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        # while blocked, even a good key gets nowhere: guessing learns nothing
        assert c.get("/v1/kits", headers=auth(w.keys["admin"])).status_code == 429
        w.clock.advance(61)
        assert c.get("/v1/kits", headers=auth(w.keys["admin"])).status_code == 200


def test_manual_unlocks_are_rate_limited_per_key(tmp_path: Path) -> None:
    for w in make_world(tmp_path, unlock_limit=3, unlock_window_s=3600):
        c = w.client
        r = c.post("/v1/kits", json={"kit_id": "KIT-RL", "phone": "90123456", "plan": PLAN},
                   headers=auth(w.keys["admin"]))
        assert r.status_code == 201, r.text
        body = {"days": 1, "reason": "customer travelling"}
        for _ in range(3):
            r = c.post("/v1/kits/KIT-RL/unlock", json=body, headers=auth(w.keys["support"]))
            assert r.status_code == 200, r.text
        r = c.post("/v1/kits/KIT-RL/unlock", json=body, headers=auth(w.keys["support"]))
        assert r.status_code == 429 and "unlock" in r.json()["detail"]
        # another key has its own budget; the window moves on
        other = create_api_key(w.rt, name="support 2", role="support")[1]
        assert c.post("/v1/kits/KIT-RL/unlock", json=body,
                      headers=auth(other)).status_code == 200
        # the window slides: the previous hour still counts in part, two hours later not
        w.clock.advance(2 * 3600 + 1)
        assert c.post("/v1/kits/KIT-RL/unlock", json=body,
                      headers=auth(w.keys["support"])).status_code == 200
