"""HTTP API: provisioning, reading kits, roles, DESCO scoping, idempotency, audited unlocks."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select

from control.ledger.models import ApiKey, AuditEntry, Kit, LedgerEntry
from control.ledger.secrets import verify_mqtt_password
from control.runtime import Runtime
from tests.api_support import DAY, Keys, TestClient, provision


def test_health_ready_dashboard_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    for path in ("/", "/dashboard"):
        page = client.get(path)
        assert page.status_code == 200
        assert "text/html" in page.headers["content-type"]
        # the kit list's script is inline; the dashboard's are served from /static (its key
        # and API calls in api.js, shared with the other pages)
        script = ("".join(client.get(f"/static/{js}").text for js in ("api.js", "dashboard.js"))
                  if path == "/dashboard" else page.text)
        assert "localStorage" in script and "/v1/kits" in script
    spec = client.get("/openapi.json").json()
    for path in ("/v1/kits", "/v1/kits/{kit_id}", "/v1/kits/{kit_id}/unlock",
                 "/v1/kits/{kit_id}/audit", "/v1/commands/{command_id}",
                 "/v1/payments/intents", "/v1/payments/{identifier}", "/v1/payments/paygate"):
        assert path in spec["paths"], path
    assert "requestBody" in spec["paths"]["/v1/payments/paygate"]["post"]


def test_provisioning_returns_credentials_once_and_stores_none_in_clear(
    client: TestClient, rt: Runtime, keys: Keys
) -> None:
    creds = provision(client, keys.admin, "KIT-0001")
    assert creds["kit_id"] == creds["mqtt_username"] == creds["account_number"] == "KIT-0001"
    assert creds["desco_id"] == "default"
    assert len(creds["command_secret"]) == 64
    with rt.db.session() as s:
        kit = s.get(Kit, "KIT-0001")
        assert kit is not None
        row = {c.name: getattr(kit, c.name) for c in Kit.__table__.columns}
        assert creds["command_secret"] not in repr(row)
        assert creds["mqtt_password"] not in repr(row)
        assert verify_mqtt_password(creds["mqtt_password"], kit.mqtt_password_hash)
        assert rt.box.decrypt(kit.secret_enc) == creds["command_secret"]
    detail = client.get("/v1/kits/KIT-0001", headers=Keys.auth(keys.admin))
    assert detail.status_code == 200
    assert creds["command_secret"] not in detail.text
    assert creds["mqtt_password"] not in detail.text

    again = client.post("/v1/kits", json={"kit_id": "KIT-0001", "phone": "90123456",
                                          "plan": {"deposit_fcfa": 0, "daily_rate_fcfa": 100,
                                                   "total_price_fcfa": 1000}},
                        headers=Keys.auth(keys.admin))
    assert again.status_code == 409
    assert "already exists" in again.json()["detail"]


def test_provisioning_validates_its_input(client: TestClient, keys: Keys) -> None:
    base = {"kit_id": "KIT-X", "phone": "90123456", "plan": {
        "deposit_fcfa": 5000, "daily_rate_fcfa": 100, "total_price_fcfa": 1000}}
    resp = client.post("/v1/kits", json=base, headers=Keys.auth(keys.admin))
    assert resp.status_code == 422 and "deposit" in resp.json()["detail"]
    resp = client.post("/v1/kits", json={**base, "phone": "12", "plan": {
        "deposit_fcfa": 0, "daily_rate_fcfa": 100, "total_price_fcfa": 1000}},
        headers=Keys.auth(keys.admin))
    assert resp.status_code == 422
    resp = client.post("/v1/kits", json={**base, "desco_id": "nowhere", "plan": {
        "deposit_fcfa": 0, "daily_rate_fcfa": 100, "total_price_fcfa": 1000}},
        headers=Keys.auth(keys.admin))
    assert resp.status_code == 422 and "DESCO" in resp.json()["detail"]


def test_kit_detail_shows_ledger_and_reported_state(
    client: TestClient, rt: Runtime, keys: Keys
) -> None:
    provision(client, keys.admin, "KIT-0002")
    resp = client.get("/v1/kits/KIT-0002", headers=Keys.auth(keys.operator))
    assert resp.status_code == 200
    kit = resp.json()
    assert kit["paid_total_fcfa"] == 2000 and kit["balance_fcfa"] == 48_000
    assert kit["owned"] is False and kit["credit_until"] is None
    assert kit["plan"] == {"deposit_fcfa": 2000, "daily_rate_fcfa": 100,
                           "total_price_fcfa": 50_000}
    assert kit["desired_action"] == "lock"
    assert kit["locked"] is None and kit["online"] is False
    assert kit["last_telemetry"] is None  # InfluxDB unreachable: a clear null
    assert kit["latest_commands"] == []
    listing = client.get("/v1/kits?limit=10", headers=Keys.auth(keys.operator)).json()
    assert [k["kit_id"] for k in listing["items"]] == ["KIT-0002"]
    assert listing["next_cursor"] is None
    assert client.get("/v1/kits/NOPE", headers=Keys.auth(keys.operator)).status_code == 404


def test_authentication_and_roles(client: TestClient, rt: Runtime, keys: Keys) -> None:
    provision(client, keys.admin, "KIT-0003")
    assert client.get("/v1/kits").status_code == 401
    assert client.get("/v1/kits", headers=Keys.auth("cizo_wrong")).status_code == 401
    unlock = {"days": 2, "reason": "customer travelling"}
    # operators are read-only
    resp = client.post("/v1/kits/KIT-0003/unlock", json=unlock, headers=Keys.auth(keys.operator))
    assert resp.status_code == 403
    assert client.post("/v1/kits", json={}, headers=Keys.auth(keys.operator)).status_code == 403
    assert client.post("/v1/kits/KIT-0003/unlock", json=unlock,
                       headers=Keys.auth(keys.finance)).status_code == 403
    # support: up to 7 days; more needs admin
    resp = client.post("/v1/kits/KIT-0003/unlock", json={"days": 8, "reason": "outage"},
                       headers=Keys.auth(keys.support))
    assert resp.status_code == 403 and "admin" in resp.json()["detail"]
    resp = client.post("/v1/kits/KIT-0003/unlock", json={"days": 7, "reason": "outage"},
                       headers=Keys.auth(keys.support))
    assert resp.status_code == 200, resp.text
    resp = client.post("/v1/kits/KIT-0003/unlock", json={"days": 30, "reason": "warranty"},
                       headers=Keys.auth(keys.admin))
    assert resp.status_code == 200, resp.text
    # bad bodies
    for bad in ({"days": 0, "reason": "x"}, {"days": 2, "reason": "  "}, {"days": 2}):
        resp = client.post("/v1/kits/KIT-0003/unlock", json=bad,
                           headers=Keys.auth(keys.support))
        assert resp.status_code == 422, bad
    # a revoked key stops working at once
    with rt.db.session() as s:
        key = s.scalars(select(ApiKey).where(ApiKey.name == "support-ama")).one()
        key.revoked_at = rt.clock.now()
    resp = client.get("/v1/kits", headers=Keys.auth(keys.support))
    assert resp.status_code == 401 and "revoked" in resp.json()["detail"]


def test_unlock_is_audited_issues_a_command_and_moves_no_money(
    client: TestClient, rt: Runtime, keys: Keys
) -> None:
    provision(client, keys.admin, "KIT-0004")
    now = int(rt.clock.now())
    resp = client.post("/v1/kits/KIT-0004/unlock", json={"days": 3, "reason": "pump repair"},
                       headers=Keys.auth(keys.support))
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["command_id"]
    assert abs(out["credit_until"] - (now + 3 * DAY)) <= 2
    assert out["before"]["credit_until"] is None and out["days"] == 3
    assert out["after"]["paid_total_fcfa"] == out["before"]["paid_total_fcfa"] == 2000

    cmd = client.get(f"/v1/commands/{out['command_id']}", headers=Keys.auth(keys.operator))
    assert cmd.status_code == 200
    assert cmd.json()["action"] == "unlock" and cmd.json()["status"] == "sent"
    assert cmd.json()["credit_until"] == out["credit_until"]
    assert cmd.json()["origin"] == "support"
    assert rt.service.publisher.sent[-1][0] == "KIT-0004"  # type: ignore[union-attr]

    audit = client.get("/v1/kits/KIT-0004/audit", headers=Keys.auth(keys.operator)).json()
    entry = audit["items"][0]
    assert entry["action"] == "kit.unlock"
    assert entry["actor"] == "support-ama" and entry["role"] == "support"
    assert entry["reason"] == "pump repair"
    assert entry["before"]["credit_until"] is None and entry["before"]["days"] == 3
    assert entry["after"]["credit_until"] == out["credit_until"]
    assert [e["action"] for e in audit["items"]] == ["kit.unlock", "kit.provision"]

    kit = client.get("/v1/kits/KIT-0004", headers=Keys.auth(keys.operator)).json()
    assert kit["credit_until"] == out["credit_until"] and kit["paid_total_fcfa"] == 2000
    assert kit["commanded_action"] == "unlock"
    assert kit["latest_commands"][0]["id"] == out["command_id"]


def test_desco_keys_see_only_their_own_kits(client: TestClient, rt: Runtime, keys: Keys) -> None:
    provision(client, keys.admin, "KIT-SOUTH")
    north = provision(client, keys.north_admin, "KIT-NORTH")
    assert north["desco_id"] == "north"
    resp = client.post("/v1/kits", json={"kit_id": "KIT-N2", "desco_id": "default",
                                         "phone": "90123456", "plan": {
                                             "deposit_fcfa": 0, "daily_rate_fcfa": 100,
                                             "total_price_fcfa": 1000}},
                       headers=Keys.auth(keys.north_admin))
    assert resp.status_code == 403

    nops = Keys.auth(keys.north_operator)
    assert client.get("/v1/kits/KIT-SOUTH", headers=nops).status_code == 404
    assert client.get("/v1/kits/KIT-SOUTH/audit", headers=nops).status_code == 404
    assert client.get("/v1/kits/KIT-NORTH", headers=nops).status_code == 200
    listing = client.get("/v1/kits", headers=nops).json()
    assert [k["kit_id"] for k in listing["items"]] == ["KIT-NORTH"]
    resp = client.post("/v1/kits/KIT-SOUTH/unlock", json={"days": 1, "reason": "x"},
                       headers=Keys.auth(keys.north_admin))
    assert resp.status_code == 404
    # a command of another DESCO's kit is as invisible as the kit
    out = client.post("/v1/kits/KIT-SOUTH/unlock", json={"days": 1, "reason": "x"},
                      headers=Keys.auth(keys.admin)).json()
    assert client.get(f"/v1/commands/{out['command_id']}", headers=nops).status_code == 404
    national = client.get("/v1/kits", headers=Keys.auth(keys.operator)).json()
    assert {k["kit_id"] for k in national["items"]} == {"KIT-SOUTH", "KIT-NORTH"}


def test_idempotency_key_replays_and_refuses_a_different_body(
    client: TestClient, rt: Runtime, keys: Keys
) -> None:
    headers = {**Keys.auth(keys.admin), "Idempotency-Key": "prov-1"}
    body = {"kit_id": "KIT-IDEM", "phone": "90123456", "plan": {
        "deposit_fcfa": 0, "daily_rate_fcfa": 100, "total_price_fcfa": 1000}}
    first = client.post("/v1/kits", json=body, headers=headers)
    second = client.post("/v1/kits", json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()  # same credentials, not a 409, not new ones
    assert second.headers.get("Idempotent-Replayed") == "true"
    other = client.post("/v1/kits", json={**body, "kit_id": "KIT-OTHER"}, headers=headers)
    assert other.status_code == 422
    # the same key held by another key holder is another request
    support_headers = {**Keys.auth(keys.support), "Idempotency-Key": "prov-1"}
    unlock = {"days": 2, "reason": "storm"}
    a = client.post("/v1/kits/KIT-IDEM/unlock", json=unlock, headers=support_headers)
    b = client.post("/v1/kits/KIT-IDEM/unlock", json=unlock, headers=support_headers)
    assert a.status_code == b.status_code == 200
    assert a.json() == b.json()
    with rt.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Kit)) == 1
        free = s.scalar(select(func.count()).select_from(LedgerEntry)
                        .where(LedgerEntry.kind == "free_days"))
        unlocks = s.scalar(select(func.count()).select_from(AuditEntry)
                           .where(AuditEntry.action == "kit.unlock"))
    assert free == 1 and unlocks == 1
    # a failed request releases its key: the retry acts
    h = {**Keys.auth(keys.support), "Idempotency-Key": "u-2"}
    assert client.post("/v1/kits/NOPE/unlock", json=unlock, headers=h).status_code == 404
    assert client.post("/v1/kits/KIT-IDEM/unlock", json=unlock, headers=h).status_code == 200


def test_kit_detail_reads_last_telemetry_from_influxdb(
    client: TestClient, rt: Runtime, keys: Keys, influxd: Any, influx_db: str
) -> None:
    from cizo.protocol import Telemetry
    from telemetry.influx import InfluxClient
    from telemetry.schema import encode_lines

    provision(client, keys.admin, "KIT-TELE")
    rt.settings.influx_url = f"http://127.0.0.1:{influxd.port}"
    rt.settings.influx_db = influx_db
    reading = Telemetry(v=1, kit_id="KIT-TELE", ts=int(time.time()), seq=7, boot=1,
                        battery_v=12.8, soc=81, pv_w=40, load_w=12, pv_wh_total=1000,
                        load_wh_total=500, locked=True, credit_until=None, temp_c=31)
    influx = InfluxClient.from_settings(rt.settings)
    try:
        influx.write(encode_lines([reading]))
    finally:
        influx.close()
    kit = client.get("/v1/kits/KIT-TELE", headers=Keys.auth(keys.operator)).json()
    assert kit["last_telemetry"] is not None
    assert kit["last_telemetry"]["soc"] == 81
