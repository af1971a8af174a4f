"""The fleet summary, filters, scoping, alerts lifecycle and open data over the real API."""

from __future__ import annotations

import csv
import io

from control.api.dashboard import PAGE_ACTIONS
from control.fleet import summary
from control.ledger.models import Account, Alert, Kit, KitMetrics, LedgerEntry
from control.runtime import Runtime
from control.security.api_keys import create_api_key
from telemetry import opendata
from tests.api_support import DAY, Keys, TestClient, provision
from tests.security_support import endpoints


def _setup(client: TestClient, rt: Runtime, keys: Keys) -> float:
    now = rt.clock.now()
    regions = ["Maritime", "Maritime", "Kara", "Savanes"]
    for i in range(len(regions)):
        provision(client, keys.admin, f"KIT-{i}")
    provision(client, keys.north_admin, "KIT-N", desco_id="north")
    with rt.db.session() as s:
        for i, region in enumerate(regions):
            kit = s.get(Kit, f"KIT-{i}")
            assert kit is not None and kit.region == "Maritime"  # the column's default
            kit.region = region
            kit.online = i % 2 == 0
            kit.reported_locked = i == 1
        acct = s.query(Account).filter_by(kit_id="KIT-0").one()
        s.add(LedgerEntry(account_id=acct.id, kind="payment", amount_fcfa=700, days=7,
                          remainder_after_fcfa=0, credit_until_before=None,
                          credit_until_after=None, created_at=now - 60))
        acct.paid_total_fcfa += 700
        old = s.query(Account).filter_by(kit_id="KIT-2").one()
        old.created_at = now - 60 * DAY  # 60 days old, credit ran out 40 days ago: PAR30
        old.credit_until = int(now - 40 * DAY)
        s.add(KitMetrics(kit_id="KIT-0", computed_at=now, energy_wh_30d=5000.0,
                         battery_health_pct=95.0))
        s.add(KitMetrics(kit_id="KIT-1", computed_at=now, energy_wh_30d=1000.0,
                         battery_health_pct=75.0))
        s.add(Alert(kit_id="KIT-1", desco_id="default", kind="silent", state="open",
                    detail="x", opened_at=now, last_seen_at=now))
    summary.refresh_fleet_summary(rt.db, now)
    return now


def test_fleet_summary_figures_filters_and_scope(client: TestClient, rt: Runtime,
                                                 keys: Keys) -> None:
    now = _setup(client, rt, keys)
    f = client.get("/v1/dashboard/fleet", headers=Keys.auth(keys.operator)).json()
    assert f["kits"] == 5 and f["online"] == 2 and f["offline"] == 3
    assert f["locked"] == 1 and f["owned"] == 0
    assert f["payments_today_fcfa"] == 700 and f["payments_month_fcfa"] == 700
    assert f["energy_wh_30d"] == 6000.0
    # every kit in one bin: the three without analytics figures are "unknown"
    assert f["battery_health"] == {"90-100": 1, "80-90": 0, "70-80": 1, "<70": 0,
                                   "unknown": 3}
    assert f["open_alerts"] == {"silent": 1}
    assert 0 < f["par30"] < 1
    paid = 5 * 2000 + 700
    assert f["paid_fcfa"] == paid
    # KIT-0 paid 700 beyond its deposit, on its first day: ahead, which does not count
    # towards what is due (the rate stays a share of what was due)
    assert f["paid_due_fcfa"] == paid - 700
    assert f["repayment_rate"] == round(f["paid_due_fcfa"] / f["expected_fcfa"], 4)
    assert 0 <= f["repayment_rate"] <= 1
    assert f["age_s"] is not None and f["age_s"] < 60 and f["computed_at"] == now
    assert set(f["descos"]) == {"default", "north"}
    kara = client.get("/v1/dashboard/fleet?region=Kara", headers=Keys.auth(keys.operator)).json()
    assert kara["kits"] == 1 and kara["par30"] == 1.0
    north = client.get("/v1/dashboard/fleet?desco_id=north",
                       headers=Keys.auth(keys.operator)).json()
    assert north["kits"] == 1
    # a DESCO-scoped key sees only its DESCO, whatever it asks for
    scoped = client.get("/v1/dashboard/fleet?desco_id=default",
                        headers=Keys.auth(keys.north_operator)).json()
    assert scoped["kits"] == 1 and scoped["descos"] == ["north"]
    # the regulator reads national aggregates, but nothing about one kit
    reg = create_api_key(rt, name="arse", role="regulator")[1]
    assert client.get("/v1/dashboard/fleet", headers=Keys.auth(reg)).json()["kits"] == 5
    assert client.get("/v1/dashboard/kits/KIT-0", headers=Keys.auth(reg)).status_code == 403
    assert client.get("/v1/alerts", headers=Keys.auth(reg)).status_code == 403


def test_alert_lifecycle_is_audited_and_kit_page_lists_it(client: TestClient, rt: Runtime,
                                                          keys: Keys) -> None:
    _setup(client, rt, keys)
    alerts = client.get("/v1/alerts?state=open", headers=Keys.auth(keys.operator)).json()
    (alert,) = alerts["items"]
    aid = alert["id"]
    assert client.post(f"/v1/alerts/{aid}/acknowledge",
                       headers=Keys.auth(keys.finance)).status_code == 403
    r = client.post(f"/v1/alerts/{aid}/acknowledge", headers=Keys.auth(keys.support))
    assert r.status_code == 200 and r.json()["state"] == "acknowledged"
    assert client.post(f"/v1/alerts/{aid}/acknowledge",
                       headers=Keys.auth(keys.support)).status_code == 409
    r = client.post(f"/v1/alerts/{aid}/close", headers=Keys.auth(keys.operator))
    assert r.json()["state"] == "closed" and r.json()["closed_by"] == "ops"
    assert client.post(f"/v1/alerts/{aid}/close",
                       headers=Keys.auth(keys.north_operator)).status_code == 404
    audit = client.get("/v1/kits/KIT-1/audit", headers=Keys.auth(keys.operator)).json()
    assert [e["action"] for e in audit["items"][:2]] == ["alert.close", "alert.acknowledge"]
    page = client.get("/v1/dashboard/kits/KIT-1", headers=Keys.auth(keys.operator)).json()
    assert page["alerts"][0]["state"] == "closed" and page["metrics"]["battery_health_pct"] == 75
    assert page["ledger"][0]["kind"] == "deposit"
    me = client.get("/v1/dashboard/me", headers=Keys.auth(keys.support)).json()
    assert me["can_unlock"] is True
    assert client.get("/v1/dashboard/me",
                      headers=Keys.auth(keys.operator)).json()["can_unlock"] is False


def test_me_says_what_the_pages_may_offer_as_each_endpoint_admits(
    client: TestClient, rt: Runtime, keys: Keys
) -> None:
    roles = {e.key: e.roles for e in endpoints(client.app)}  # type: ignore[arg-type]
    by_role = {"admin": keys.admin, "operator": keys.operator, "support": keys.support,
               "finance": keys.finance,
               "regulator": create_api_key(rt, name="arse", role="regulator")[1]}
    may = {role: client.get("/v1/dashboard/me", headers=Keys.auth(key)).json()["may"]
           for role, key in by_role.items()}
    for role, offered in may.items():
        assert set(offered) == set(PAGE_ACTIONS)
        for name, (method, path) in PAGE_ACTIONS.items():
            assert offered[name] == (role in (roles[f"{method} {path}"] or ())), (role, name)
    assert may["support"]["unlock"] and may["support"]["propose"] and not may["support"]["decide"]
    assert may["finance"]["decide"] and may["finance"]["export_payments"]
    assert may["operator"]["export_kits"] and not may["operator"]["export_payments"]
    assert not any(may["regulator"].values())
    # the page shows Approve and Reject together: the same keys decide both ways
    assert (roles["POST /v1/suspense/links/{link_id}/approve"]
            == roles["POST /v1/suspense/links/{link_id}/reject"])


def test_open_data_suppresses_cells_from_fewer_than_ten_households() -> None:
    hs = [opendata.HouseholdMonth("Kara", "2026-01", 30, 28, 3000.0, 3000 if i < 9 else 0)
          for i in range(12)]
    hs += [opendata.HouseholdMonth("Savanes", "2026-01", 30, 30, 100.0, 100) for _ in range(9)]
    hs += [opendata.HouseholdMonth("Maritime", "2026-01", 30, 15, 1000.0, 700)
           for _ in range(20)]
    text = opendata.to_csv(opendata.build_rows(hs, 10))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(opendata.COLUMNS)
    kara, maritime, savanes, togo = rows
    assert togo["region"] == opendata.NATIONAL and togo["kits_active"] == "41"
    assert maritime["kits_active"] == "20" and maritime["energy_delivered_kwh"] == "20.0"
    assert maritime["share_days_with_power"] == f"{15 / 30:.3f}"
    # Savanes (9) is suppressed, and Kara with it: Togo minus Maritime gives only their sum
    assert all(savanes[c] == "" for c in opendata.COLUMNS[2:])
    assert kara["kits_active"] == "" and kara["payments_fcfa"] == ""  # 9 paying households
    assert togo["payments_fcfa"] == str(9 * 3000 + 9 * 100 + 20 * 700)
    assert "KIT" not in text and "+228" not in text


def test_open_data_on_a_fresh_deployment_and_with_influxdb_down(
    client: TestClient, rt: Runtime, keys: Keys, influxd, influx_db: str
) -> None:
    """Before the first rollup the daily tier does not exist: an empty export, not a 500;
    with InfluxDB unreachable the answer is a clear 503 the caller can retry."""
    headers = {"Authorization": f"Bearer {keys.admin}"}
    down = client.get("/v1/opendata/2026-01.csv", headers=headers)
    assert down.status_code == 503 and "InfluxDB" in down.json()["detail"]
    rt.settings = rt.settings.model_copy(update={
        "influx_url": f"http://127.0.0.1:{influxd.port}", "influx_db": influx_db})
    for i in range(3):
        provision(client, keys.admin, f"FRESH-{i}")
    fresh = client.get("/v1/opendata/2026-01.csv", headers=headers)
    assert fresh.status_code == 200, fresh.text
    rows = list(csv.DictReader(io.StringIO(fresh.text)))
    assert rows and all(r[c] == "" for r in rows for c in opendata.COLUMNS[2:])
