"""The pages in a real headless Chromium (Debian's), driven by Playwright.

Loads the kit list, the fleet and kit pages and the finance page over a real uvicorn
server with a simulated fleet's telemetry in the real influxd, checks that the charts plot
the numbers the API returns, and has each role do in the pages one thing it may do (its
effect read back from the API), be offered exactly what the API admits, and be refused, in
French, what it may not. The French pages are the user guide's pictures (docs/guide-fr/).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright

from cizo import services
from cizo.clock import ManualClock
from cizo.settings import Settings
from control.api import create_app
from control.fleet import jobs, summary
from control.ledger.db import migrate
from control.ledger.models import Alert
from control.ledger.secrets import ROLES, generate_secret_key
from control.runtime import Runtime
from control.security.api_keys import create_api_key
from tests.api_support import ADMIN_KEY, PLAN, RecordingPublisher, serve_in_thread
from tests.browser_support import CHROMIUM_ARGS, SHOTS, french_page, guide_shot
from tests.dashboard_support import FleetSpec, simulate, write_readings
from tests.payments_support import WEBHOOK_URL, agent_payment, signed, webhook_secret
from tests.security_support import endpoints

KITS = ["KIT-B0", "KIT-B1", "KIT-B2"]


@pytest.fixture(scope="module")
def site(influxd: services.InfluxProcess, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[dict[str, Any]]:
    url = f"http://127.0.0.1:{influxd.port}"
    db = f"b_{int(time.time() * 1000)}"
    httpx.post(f"{url}/query", params={"q": f'CREATE DATABASE "{db}"'}).raise_for_status()
    now = int(time.time())
    write_readings(url, db, simulate(FleetSpec(KITS), now - 3 * 86400, now, 900))
    dburl = f"sqlite:///{tmp_path_factory.mktemp('browser') / 'ledger.db'}"
    migrate(dburl)
    settings = Settings(database_url=dburl, secret_key=generate_secret_key(),
                        admin_api_key=ADMIN_KEY, influx_url=url, influx_db=db,
                        paygate_url="http://127.0.0.1:9")
    rt = Runtime.build(settings, clock=ManualClock())
    rt.service.publisher = RecordingPublisher()
    app = create_app(rt)
    server = serve_in_thread(app)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    from control.security.api_keys import ensure_admin_key

    ensure_admin_key(rt)
    for i, kit in enumerate(KITS):
        r = httpx.post(f"{server.url}/v1/kits", headers=admin, json={
            "kit_id": kit, "phone": f"90 12 34 5{i}", "plan": PLAN})
        assert r.status_code == 201, r.text
    from telemetry import rollups

    rollups.ensure_tiers(settings)
    rollups.run_rollups(settings, now)
    jobs.run_analytics(settings, rt.db, now)
    summary.refresh_fleet_summary(rt.db, rt.clock.now())
    keys = {"operator": create_api_key(rt, name="ops", role="operator")[1],
            "support": create_api_key(rt, name="support-ama", role="support")[1],
            "finance": create_api_key(rt, name="finance-kofi", role="finance")[1],
            "regulator": create_api_key(rt, name="arse", role="regulator")[1],
            "admin": ADMIN_KEY}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield {"url": server.url, "keys": keys, "browser": browser, "rt": rt, "app": app}
        browser.close()
    server.stop()
    rt.db.dispose()
    for name in (db, f"{db}_hourly", f"{db}_daily"):
        httpx.post(f"{url}/query", params={"q": f'DROP DATABASE "{name}"'})


def _page(site: dict[str, Any], role: str, hash_: str) -> Page:
    ctx = site["browser"].new_context(viewport={"width": 1280, "height": 1100})
    ctx.add_init_script(f"localStorage.setItem('cizo_api_key', {site['keys'][role]!r});")
    page: Page = ctx.new_page()
    page.goto(f"{site['url']}/dashboard{hash_}")
    return page


def _api(site: dict[str, Any], role: str, path: str) -> Any:
    r = httpx.get(site["url"] + path, headers={"Authorization": f"Bearer {site['keys'][role]}"})
    r.raise_for_status()
    return r.json()


def test_fleet_page_charts_plot_the_api_figures(site: dict[str, Any]) -> None:
    page = _page(site, "operator", "#/fleet")
    page.wait_for_function("window.cizoCharts && window.cizoCharts['c-alerts']", timeout=15000)
    f = _api(site, "operator", "/v1/dashboard/fleet")
    charts = page.evaluate("window.cizoCharts")
    assert charts["c-online"]["series"][0]["values"] == [f["online"], f["offline"]]
    assert charts["c-state"]["series"][0]["values"] == [f["locked"], f["unlocked"], f["owned"],
                                                          f["unknown"]]
    assert sum(charts["c-state"]["series"][0]["values"]) == len(KITS)
    bars = page.locator("#c-state rect")
    assert bars.count() == 4
    assert page.inner_text("#t-kits") == str(len(KITS))
    health = charts["c-health"]["series"][0]["values"]
    assert health == [f["battery_health"].get(b, 0) for b in
                      ("90-100", "80-90", "70-80", "<70", "unknown")]
    assert sum(health) == len(KITS) and f["energy_wh_30d"] > 0
    assert "FCFA" in page.inner_text("#t-month")
    assert "s old" in page.inner_text("#age")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "fleet.png"), full_page=True)
    page.context.close()


def test_kit_page_charts_and_support_unlock(site: dict[str, Any]) -> None:
    kit = KITS[0]
    ready = (f"window.cizoKit && window.cizoKit.kit.kit_id === '{kit}' "
             "&& window.cizoCharts['c-power']")
    page = _page(site, "operator", f"#/kit/{kit}")
    page.wait_for_function(ready, timeout=15000)
    assert page.locator("#unlock-box").is_hidden()  # operators cannot unlock
    page.context.close()

    page = _page(site, "support", f"#/kit/{kit}")
    page.wait_for_function(ready, timeout=15000)
    tel = _api(site, "support", f"/v1/dashboard/kits/{kit}/telemetry?hours=72")
    assert len(tel["points"]) > 100
    charts = page.evaluate("window.cizoCharts")
    soc = charts["c-soc"]["series"][0]
    assert soc["values"] == [p["soc"] for p in tel["points"]]
    assert charts["c-soc"]["x"] == [p["t"] for p in tel["points"]]
    assert len(soc["points"]) == len(tel["points"])
    # the highest value is drawn highest (smallest y), the lowest lowest
    hi = max(range(len(soc["values"])), key=lambda i: soc["values"][i])
    lo = min(range(len(soc["values"])), key=lambda i: soc["values"][i])
    assert soc["points"][hi][1] < soc["points"][lo][1]
    power = {s["name"]: s["values"] for s in charts["c-power"]["series"]}
    assert power["pv_w"] == [p["pv_w"] for p in tel["points"]]
    assert power["load_w"] == [p["load_w"] for p in tel["points"]]
    assert max(power["pv_w"]) > 10  # the sun shone on the simulated days
    assert page.locator("#c-soc path[data-series='soc']").count() == 1
    assert "Solvency score" in page.inner_text("#k-metrics")
    before = _api(site, "support", f"/v1/dashboard/kits/{kit}")["credit_until"]
    assert page.locator("#unlock-box").is_visible()
    page.fill("#u-days", "2")
    page.fill("#u-reason", "customer paid cash at the agency")
    page.click("#u-submit")
    page.wait_for_function("document.getElementById('u-result').textContent.includes('unlocked')",
                           timeout=15000)
    after = _api(site, "support", f"/v1/dashboard/kits/{kit}")
    base = before if before is not None and before > time.time() else time.time()
    assert abs(after["credit_until"] - (base + 2 * 86400)) < 120
    assert after["commands"] and after["commands"][0]["origin"] == "support"
    audit = _api(site, "support", f"/v1/kits/{kit}/audit")["items"]
    assert audit[0]["reason"] == "customer paid cash at the agency"
    assert audit[0]["actor"] == "support-ama"
    page.wait_for_function(
        "document.getElementById('k-audit').textContent.includes('customer paid cash')",
        timeout=15000)
    page.screenshot(path=str(SHOTS / "kit.png"), full_page=True)
    page.context.close()


def _french(site: dict[str, Any], role: str, path: str) -> Page:
    return french_page(site["browser"], site["url"] + path, site["keys"][role])


def test_fleet_page_in_french_then_english_with_the_switch(site: dict[str, Any]) -> None:
    page = _french(site, "operator", "/dashboard#/fleet")
    ctx = page.context
    page.wait_for_function("window.cizoReady === true", timeout=15000)
    assert page.title() == "Tableau de bord CIZO"
    assert page.evaluate("document.documentElement.lang") == "fr"
    assert "Paiements du mois" in page.inner_text("#fleet-page")
    assert "chiffres vieux de" in page.inner_text("#age")
    assert "UTC" in page.inner_text("#age") or "GMT" in page.inner_text("#age")
    assert page.inner_text("#t-month").endswith("FCFA")
    assert page.locator("nav.pages a[aria-current='page']").inner_text() == "Tableau de bord"
    guide_shot(page, "tableau-de-bord.png")
    # an API error comes back in the page's language
    page.goto(f"{site['url']}/dashboard#/kit/NO-SUCH-KIT")
    page.wait_for_function("document.getElementById('msg').textContent.includes('404')",
                           timeout=15000)
    assert "kit NO-SUCH-KIT introuvable" in page.inner_text("#msg")
    page.goto(f"{site['url']}/dashboard#/fleet")
    page.wait_for_function("window.cizoReady === true", timeout=15000)
    page.select_option("#lang", "en")
    page.wait_for_function("document.title === 'CIZO dashboard'", timeout=15000)
    assert "Payments this month" in page.inner_text("#fleet-page")
    page.wait_for_function("document.getElementById('age').textContent.includes('s old')",
                           timeout=15000)
    ctx.close()


def test_kit_list_in_french_finds_a_kit_by_phone_and_exports_the_kits(
    site: dict[str, Any]
) -> None:
    page = _french(site, "operator", "/")
    page.wait_for_function("document.querySelectorAll('#kits tr').length === "
                           f"{len(KITS)} && document.getElementById('who').textContent",
                           timeout=15000)
    assert page.title() == "Kits CIZO"
    assert "Rechercher" in page.inner_text("#filters")
    assert "Vu pour la dernière fois" in page.inner_text("thead")
    assert page.inner_text("#who") == "ops (operator)"
    guide_shot(page, "liste-des-kits.png")
    # a customer's phone, written as they give it, finds their kit
    page.fill("#q", "+228 90 12 34 52")
    page.click("#filters button[type=submit]")
    page.wait_for_function("document.querySelectorAll('#kits tr').length === 1", timeout=15000)
    assert page.inner_text("#kits tr td:first-child") == KITS[2]
    page.click(f"#kits a:text-is('{KITS[2]}')")  # its page on the dashboard
    page.wait_for_function(f"window.cizoKit && window.cizoKit.kit.kit_id === '{KITS[2]}'",
                           timeout=15000)
    assert page.inner_text("#k-title") == f"Kit {KITS[2]}"
    page.go_back()
    page.wait_for_function("document.querySelectorAll('#kits tr').length", timeout=15000)
    page.fill("#q", "")
    page.click("#filters button[type=submit]")
    page.wait_for_function(f"document.querySelectorAll('#kits tr').length === {len(KITS)}",
                           timeout=15000)
    with page.expect_download() as download:
        page.click("#download")
    assert download.value.suggested_filename == "kits.csv"
    rows = Path(download.value.path()).read_text().splitlines()
    assert rows[0].startswith("kit_id,") and sorted(r.split(",")[0] for r in rows[1:]) == KITS
    page.context.close()


def _finance_page(site: dict[str, Any], role: str) -> Page:
    ctx = site["browser"].new_context(viewport={"width": 1280, "height": 1100}, locale="fr-FR")
    ctx.add_init_script(f"localStorage.setItem('cizo_api_key', {site['keys'][role]!r});")
    page: Page = ctx.new_page()
    page.goto(f"{site['url']}/finance")
    page.wait_for_function("window.cizoReady === true", timeout=15000)
    return page


def test_finance_page_propose_then_approve_by_two_keys(site: dict[str, Any]) -> None:
    secret = webhook_secret(site["rt"])
    for tx, ref in (("BR-1", "typo-b1"), ("BR-2", "typo-b2")):
        raw, headers = signed(secret, agent_payment(tx, 12_500, reference=ref))
        r = httpx.post(site["url"] + WEBHOOK_URL, content=raw, headers=headers)
        assert r.status_code == 200, r.text
    queue = _api(site, "finance", "/v1/suspense")
    first, second = (next(p["payment_id"] for p in queue if p["reference"] == ref)
                     for ref in ("typo-b1", "typo-b2"))

    page = _finance_page(site, "support")
    assert page.title() == "Finance CIZO"
    assert "Paiements en suspens" in page.inner_text("main")
    row = page.locator(f"#suspense-rows tr[data-payment='{first}']")
    assert "12 500 FCFA" in row.inner_text().replace("\u202f", " ")
    assert "GMT" in row.inner_text() or "UTC" in row.inner_text()
    assert row.locator("text=Approuver").count() == 0  # support proposes, never decides
    row.locator("input.p-kit").fill(KITS[1])
    row.locator("input.p-reason").fill("le client a appelé")
    row.locator("button", has_text="Proposer").click()
    page.wait_for_function(f"document.querySelector(\"#suspense-rows tr[data-payment='{first}']\")"
                           ".textContent.includes('proposé par support-ama')", timeout=15000)
    page.context.close()

    page = _finance_page(site, "finance")
    row = page.locator(f"#suspense-rows tr[data-payment='{first}']")
    assert row.locator("input.p-kit").count() == 0  # finance decides, never proposes
    row.locator("button", has_text="Approuver").click()
    page.wait_for_function(
        "document.getElementById('decision-rows').textContent.includes('finance-kofi')",
        timeout=15000)
    decided = page.inner_text("#decision-rows")
    assert "support-ama" in decided and "approuvé" in decided
    assert page.locator(f"#suspense-rows tr[data-payment='{first}']").count() == 0
    assert _api(site, "finance", "/v1/suspense/links?status=approved")[0]["kit_id"] == KITS[1]
    # the payments list, filtered by kit, shows the money now credited
    page.fill("#p-kit", KITS[1])
    page.click("#p-search")
    page.wait_for_function("document.getElementById('payment-rows').textContent"
                           ".includes('crédité')", timeout=15000)
    page.context.close()

    # the API refuses what the rule refuses, and the page says it in French
    page = _finance_page(site, "admin")
    row = page.locator(f"#suspense-rows tr[data-payment='{second}']")
    row.locator("input.p-kit").fill(KITS[2])
    row.locator("input.p-reason").fill("vu au guichet")
    row.locator("button", has_text="Proposer").click()
    page.wait_for_function(f"document.querySelector(\"#suspense-rows tr[data-payment='{second}']"
                           " button\") && document.querySelector(\"#suspense-rows "
                           f"tr[data-payment='{second}']\").textContent.includes('proposé par')",
                           timeout=15000)
    row.locator("button", has_text="Approuver").click()
    page.wait_for_function("document.getElementById('msg').textContent.includes('403')",
                           timeout=15000)
    assert "cette étape est refusée" in page.inner_text("#msg")
    assert "[suspense_refused]" in page.inner_text("#msg")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "finance.png"), full_page=True)
    page.context.close()


def test_kit_page_timeline_lists_events_newest_first(site: dict[str, Any]) -> None:
    kit = KITS[1]
    page = _page(site, "operator", f"#/kit/{kit}")
    page.wait_for_function(f"window.cizoKit && window.cizoKit.kit.kit_id === '{kit}' "
                           "&& window.cizoKit.timeline", timeout=15000)
    tl = page.evaluate("window.cizoKit.timeline")
    assert tl["items"] and tl["telemetry_checked"] is True
    assert page.locator("#k-timeline tr").count() == len(tl["items"])
    times = [e["at"] for e in tl["items"]]
    assert times == sorted(times, reverse=True)
    page.context.close()


# --- roles: what each may do in the pages, as the API admits it -----------------------------


@pytest.fixture(scope="module")
def staged(site: dict[str, Any]) -> dict[str, Any]:
    """What the role tests act on: open alerts (one to keep, one to acknowledge, one to close)
    and two held payments, each with a support proposal waiting for a finance decision."""
    now = time.time()
    alerts = {}
    with site["rt"].db.session() as s:
        for name, kit, kind, detail, evidence in (
                ("kept", KITS[0], "pv_below_neighbours", "PV at 41 % of neighbours' in Maritime",
                 {"ratio": 0.41, "region": "Maritime"}),
                ("acknowledge", KITS[2], "silent", "no report for more than 2 days",
                 {"silent_days": 2.5}),
                ("close", KITS[2], "capacity_fading",
                 "capacity fading 9 %/year (expected about 5 %)",
                 {"fade_per_year": 0.092, "health_pct": 91.0,
                  "expected_fade_per_year": 0.05})):
            alert = Alert(kit_id=kit, desco_id="default", kind=kind, state="open", detail=detail,
                          evidence=evidence, opened_at=now - 3600, last_seen_at=now)
            s.add(alert)
            s.flush()
            alerts[name] = alert.id
    secret = webhook_secret(site["rt"])
    held = {}
    for tx, ref in (("BR-OFFER", "roles-offer"), ("BR-REJECT", "roles-reject")):
        raw, headers = signed(secret, agent_payment(tx, 5_000, reference=ref))
        assert httpx.post(site["url"] + WEBHOOK_URL, content=raw, headers=headers
                          ).status_code == 200
        payment = next(p["payment_id"] for p in _api(site, "finance", "/v1/suspense")
                       if p["reference"] == ref)
        r = httpx.post(f"{site['url']}/v1/suspense/{payment}/links",
                       headers={"Authorization": f"Bearer {site['keys']['support']}"},
                       json={"account": KITS[1], "reason": "même montant, même téléphone"})
        assert r.status_code == 201, r.text
        held[ref] = {"payment": payment, "link": r.json()["link_id"]}
    return {"alerts": alerts, "held": held}


def _ready(page: Page) -> None:
    """The page has drawn what the key may see, or shown why not."""
    page.wait_for_function("window.cizoReady === true || "
                           "document.getElementById('msg').textContent !== ''", timeout=15000)


def _audit(site: dict[str, Any], kit: str, action: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = _api(site, "admin", f"/v1/kits/{kit}/audit")["items"]
    return [e for e in items if e["action"] == action]


# a control of the pages -> the endpoint it calls
OFFERS = {
    "unlock form": "POST /v1/kits/{kit_id}/unlock",
    "alert buttons": "POST /v1/alerts/{alert_id}/{action}",
    "suspense queue": "GET /v1/suspense",
    "propose fields": "POST /v1/suspense/{payment_id}/links",
    "approve and reject": "POST /v1/suspense/links/{link_id}/approve",
    "kits export": "GET /v1/exports/kits.csv",
    "payments export": "GET /v1/exports/payments.csv",
}


@pytest.mark.parametrize("role", ROLES)
def test_each_role_is_offered_what_the_api_admits_and_nothing_else(
    site: dict[str, Any], staged: dict[str, Any], role: str
) -> None:
    # who may call each endpoint, walked from the app's own routes
    admits = {e.key: e.roles or frozenset() for e in endpoints(site["app"])}
    page = _french(site, role, f"/dashboard#/kit/{KITS[0]}")
    _ready(page)
    alert = f"#k-alerts button[data-alert='{staged['alerts']['kept']}']"
    shown = {"unlock form": page.locator("#unlock-box").is_visible(),
             "alert buttons": page.locator(alert).count() == 2}
    page.goto(site["url"] + "/finance")
    _ready(page)
    held = staged["held"]["roles-offer"]["payment"]
    row = page.locator(f"#suspense-rows tr[data-payment='{held}']")
    shown |= {"suspense queue": row.count() == 1,
              "propose fields": row.locator("input.p-kit").count() == 1,
              "approve and reject": (row.locator("button", has_text="Approuver").count()
                                     == row.locator("button", has_text="Rejeter").count() == 1)}
    page.goto(site["url"] + "/")
    page.wait_for_function("document.getElementById('who').textContent", timeout=15000)
    offered = page.eval_on_selector_all("#export option", "os => os.filter(o => !o.disabled)"
                                                          ".map(o => o.value)")
    shown |= {"kits export": "kits" in offered, "payments export": "payments" in offered}
    assert shown == {name: role in admits[endpoint] for name, endpoint in OFFERS.items()}
    page.context.close()


def _alert_done_in_the_page(site: dict[str, Any], alert: int, role: str, button: str,
                            state: str, by: str, action: str) -> None:
    """``role`` presses ``button`` on an alert of the kit page: the alert is in ``state``
    by the key's name, and the audit has one ``action`` entry by it."""
    page = _french(site, role, f"/dashboard#/kit/{KITS[2]}")
    _ready(page)
    page.locator(f"#k-alerts button[data-alert='{alert}']", has_text=button).click()
    page.wait_for_function(f"window.cizoKit.kit.alerts.some(a => a.id === {alert} "
                           f"&& a.state === '{state}')", timeout=15000)
    name = _api(site, role, "/v1/dashboard/me")["name"]
    seen = next(a for a in _api(site, role, f"/v1/alerts?kit_id={KITS[2]}")["items"]
                if a["id"] == alert)
    assert seen["state"] == state and seen[by] == name
    assert [(e["actor"], e["after"]["alert_id"]) for e in
            _audit(site, KITS[2], action)] == [(name, alert)]
    page.context.close()


def _operator_acknowledges_an_alert(site: dict[str, Any], staged: dict[str, Any]) -> None:
    _alert_done_in_the_page(site, staged["alerts"]["acknowledge"], "operator",
                            "Prendre en compte", "acknowledged", "acknowledged_by",
                            "alert.acknowledge")


def _support_unlocks_a_kit_with_a_reason(site: dict[str, Any], staged: dict[str, Any]) -> None:
    kit, reason = KITS[2], "le client a payé en espèces à l'agence de Tsévié"
    before = _api(site, "support", f"/v1/dashboard/kits/{kit}")["credit_until"]
    page = _french(site, "support", f"/dashboard#/kit/{kit}")
    _ready(page)
    page.fill("#u-days", "1")
    page.fill("#u-reason", reason)
    page.click("#u-submit")
    page.wait_for_function(f"document.getElementById('k-audit').textContent.includes({reason!r})",
                           timeout=15000)
    assert page.inner_text("#u-result").startswith("débloqué : crédit jusqu'au")
    after = _api(site, "support", f"/v1/dashboard/kits/{kit}")
    base = before if before is not None and before > time.time() else time.time()
    assert abs(after["credit_until"] - (base + 86400)) < 120
    assert after["commands"][0]["origin"] == "support"
    unlocks = _audit(site, kit, "kit.unlock")
    assert unlocks and (unlocks[0]["actor"], unlocks[0]["reason"]) == ("support-ama", reason)
    # the API's codes and the analytics' sentences are worded in French, the codes in titles
    shown = page.inner_text("#kit-page")
    for french in ("kit débloqué par le personnel", "jours offerts", "déblocage", "support client",
                   "aucun relevé depuis 2,5 jours", "muet"):
        assert french in shown, french
    _no_raw_codes(shown)
    assert page.locator("#k-audit td[title='kit.unlock']").count() >= 1
    guide_shot(page, "fiche-kit.png")
    page.context.close()


def _finance_rejects_a_proposal(site: dict[str, Any], staged: dict[str, Any]) -> None:
    held = staged["held"]["roles-reject"]
    page = _french(site, "finance", "/finance")
    _ready(page)
    guide_shot(page, "finance.png")
    link = page.locator(f"#suspense-rows .link-row[data-link='{held['link']}']")
    link.locator("button", has_text="Rejeter").click()
    decision = f"#decision-rows tr[data-link='{held['link']}']"
    page.wait_for_function(f"document.querySelector(\"{decision}\")"
                           ".textContent.includes('finance-kofi')", timeout=15000)
    assert "rejeté" in page.inner_text(decision)
    queue = page.inner_text("#suspense-rows")
    assert "aucun compte ne correspond" in queue
    _no_raw_codes(queue + page.inner_text("#decision-rows") + page.inner_text("#payment-rows"))
    decided = next(x for x in _api(site, "finance", "/v1/suspense/links?status=rejected")
                   if x["link_id"] == held["link"])
    assert (decided["proposed_by"], decided["decided_by"]) == ("support-ama", "finance-kofi")
    # rejected, the money stays held for another proposal
    assert held["payment"] in [p["payment_id"] for p in _api(site, "finance", "/v1/suspense")]
    page.context.close()


# codes the API writes that a French page must never show as they are
RAW_CODES = ("power_while_locked", "capacity_fading", "pv_below_neighbours", "silent",
             "acknowledged", "closed", "free_days", "deposit", "kit.unlock", "alert.acknowledge",
             "alert.close", "queued", "sent", "applied", "superseded", "sweep", "unlock",
             "suspense", "rejected", "no account matches", "evening-peak", "night-long",
             "undersized", "oversized")


def _no_raw_codes(text: str) -> None:
    raw = [c for c in RAW_CODES if re.search(rf"(?<![\w.-]){re.escape(c)}(?![\w.-])", text)]
    assert not raw, f"raw codes on a French page: {raw}"


def _admin_closes_an_alert(site: dict[str, Any], staged: dict[str, Any]) -> None:
    _alert_done_in_the_page(site, staged["alerts"]["close"], "admin", "Clore", "closed",
                            "closed_by", "alert.close")


def _regulator_reads_the_national_figures(site: dict[str, Any], staged: dict[str, Any]) -> None:
    page = _french(site, "regulator", "/regulator")
    _ready(page)
    national = _api(site, "regulator", "/v1/regulator/national")
    assert page.inner_text("#msg") == ""
    # nothing published yet: every figure on the page is a published cell, so none shows
    assert national["health"]["month"] is None and national["health"]["descos"] == []
    assert page.inner_text("#t-households") == "\u2013"
    assert page.inner_text("#age") == "Aucun chiffre de santé publié pour l'instant."
    assert page.inner_text("#map-title") == "Aucune donnée ouverte publiée pour l'instant."
    page.context.close()


ROLE_ACTIONS: dict[str, Callable[[dict[str, Any], dict[str, Any]], None]] = {
    "operator": _operator_acknowledges_an_alert,
    "support": _support_unlocks_a_kit_with_a_reason,
    "finance": _finance_rejects_a_proposal,
    "admin": _admin_closes_an_alert,
    "regulator": _regulator_reads_the_national_figures,
}


@pytest.mark.parametrize("role", ROLES)
def test_each_role_does_in_the_page_one_thing_it_may(
    site: dict[str, Any], staged: dict[str, Any], role: str
) -> None:
    ROLE_ACTIONS[role](site, staged)


@pytest.mark.parametrize(("role", "path"), [
    ("operator", "/regulator"), ("finance", "/regulator"),
    ("regulator", "/"), ("regulator", f"/dashboard#/kit/{KITS[0]}"),
])
def test_a_page_a_role_may_not_read_shows_the_refusal_in_french(
    site: dict[str, Any], role: str, path: str
) -> None:
    page = _french(site, role, path)
    page.wait_for_function("document.getElementById('msg').textContent.includes('403')",
                           timeout=15000)
    msg = page.inner_text("#msg")
    assert msg.startswith(f"Erreur 403 : le rôle '{role}' ne peut pas faire ceci (il faut : ")
    assert msg.endswith("[role_forbidden]")
    page.context.close()


def test_a_control_the_page_hides_is_refused_by_the_api_in_french_and_changes_nothing(
    site: dict[str, Any]
) -> None:
    """The kit page hides the unlock form from an operator; shown by force, its submit is
    refused by the API itself: the page is not what guards the ledger."""
    kit = KITS[1]
    before = _api(site, "admin", f"/v1/dashboard/kits/{kit}")
    audit = _api(site, "admin", f"/v1/kits/{kit}/audit")
    page = _french(site, "operator", f"/dashboard#/kit/{kit}")
    _ready(page)
    assert page.locator("#unlock-box").is_hidden()
    page.evaluate("document.getElementById('unlock-box').hidden = false")
    page.fill("#u-days", "3")
    page.fill("#u-reason", "le client le demande")
    page.click("#u-submit")
    page.wait_for_function("document.getElementById('msg').textContent.includes('403')",
                           timeout=15000)
    assert page.inner_text("#msg") == (
        "Erreur 403 : le rôle 'operator' ne peut pas faire ceci (il faut : admin, support) "
        "[role_forbidden]")
    assert page.inner_text("#u-result") == ""
    after = _api(site, "admin", f"/v1/dashboard/kits/{kit}")
    assert (after["credit_until"], after["commands"], after["ledger"]) == (
        before["credit_until"], before["commands"], before["ledger"])
    assert _api(site, "admin", f"/v1/kits/{kit}/audit") == audit
    page.context.close()
