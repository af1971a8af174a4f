"""The regulator's page in a real headless Chromium (Debian's), driven by Playwright: the
map of Togo's five regions drawn from the boundary file, the figures of the published
open data on it, each DESCO's repayment health, in French by default (the user guide's
picture of the page)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import sync_playwright

from cizo.clock import ManualClock
from cizo.settings import Settings
from control.api import create_app
from control.fleet import publication
from control.ledger.db import migrate
from control.ledger.secrets import generate_secret_key
from control.runtime import Runtime
from control.security.api_keys import create_api_key, ensure_admin_key
from telemetry import opendata
from tests.api_support import ADMIN_KEY, PLAN, RecordingPublisher, serve_in_thread
from tests.browser_support import CHROMIUM_ARGS, french_page, guide_shot

SIZES = {"Maritime": 40, "Plateaux": 25, "Centrale": 18, "Kara": 15, "Savanes": 4}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("regulator")
    dburl = f"sqlite:///{work / 'ledger.db'}"
    migrate(dburl)
    settings = Settings(database_url=dburl, secret_key=generate_secret_key(),
                        admin_api_key=ADMIN_KEY, influx_url="http://127.0.0.1:9",
                        paygate_url="http://127.0.0.1:9", opendata_dir=work / "opendata")
    rt = Runtime.build(settings, clock=ManualClock())
    rt.service.publisher = RecordingPublisher()
    ensure_admin_key(rt)
    server = serve_in_thread(create_app(rt))
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    for i in range(12):
        r = httpx.post(f"{server.url}/v1/kits", headers=admin, json={
            "kit_id": f"KIT-G{i:02d}", "phone": f"90 12 34 {i:02d}", "plan": PLAN})
        assert r.status_code == 201, r.text
    for month, scale in (("2026-02", 1), ("2026-03", 2)):
        publication.write_release(settings, month, opendata.build_rows(
            opendata.HouseholdMonth(region=region, month=month, days_reported=20,
                                    days_powered=18, energy_wh=3000.0 * scale,
                                    paid_fcfa=700 * scale)
            for region, n in SIZES.items() for _ in range(n)))
    publication.publish_health(settings, rt.db, "2026-03", rt.clock.now())
    key = create_api_key(rt, name="arse", role="regulator")[1]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield {"url": server.url, "key": key, "browser": browser}
        browser.close()
    server.stop()
    rt.db.dispose()


def test_the_national_page_draws_the_regions_with_the_open_data_in_french(
    site: dict[str, Any]
) -> None:
    # a browser in Togo asks for French (Playwright's own default is en-US)
    page = french_page(site["browser"], f"{site['url']}/regulator", site["key"])
    page.wait_for_function("window.cizoReady && window.cizoMap", timeout=15000)
    assert page.locator("#map path").count() == 5
    assert sorted(page.eval_on_selector_all("#map path", "ps => ps.map(p => p.dataset.region)")
                  ) == sorted(SIZES)
    assert page.inner_text("h1") == "CIZO — vue nationale"
    assert "Taux de défaut" in page.inner_text("main")
    api = httpx.get(site["url"] + "/v1/regulator/national",
                    headers={"Authorization": f"Bearer {site['key']}"}).json()
    drawn = page.evaluate("window.cizoMap")
    assert drawn["month"] == api["open_data"]["month"] == "2026-03"
    for r in api["open_data"]["regions"]:
        assert drawn["regions"][r["region"]] == {
            "kits_active": r["kits_active"], "energy_delivered_kwh": r["energy_delivered_kwh"]}
    assert drawn["regions"]["Savanes"]["kits_active"] is None  # 4 households: suppressed
    assert drawn["regions"]["Maritime"]["kits_active"] == 40
    assert page.inner_text("#t-households") == "12"  # the health file's national row
    assert api["health"]["month"] == "2026-03"
    assert "Chiffres publiés pour 2026-03" in page.inner_text("#age")
    # Centrale: 18 households paying 1,400 FCFA each, grouped the French way
    assert "25\u202f200 FCFA" in page.inner_text("#region-rows")
    trend = page.evaluate("window.cizoCharts['c-trend-kits']")
    assert trend["labels"] == ["2026-02", "2026-03"]
    assert trend["series"][0]["values"] == [m["kits_active"] for m in api["open_data"]["trend"]]
    assert guide_shot(page, "vue-nationale.png").stat().st_size > 0
    page.select_option("#lang", "en")
    page.wait_for_function("document.querySelector('h1').textContent === 'CIZO national view'",
                           timeout=15000)
    assert page.locator("#map path").count() == 5
    page.context.close()
