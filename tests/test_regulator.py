"""The regulator's national view: its pure figures, the API's roles, no personal data in
it, and its map and trend equal to the published open data."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import pytest

from control.fleet import figures, jobs, national, publication, summary
from control.ledger.models import Account, FleetSummary, Kit
from control.runtime import Runtime
from control.security.api_keys import create_api_key
from telemetry import opendata
from tests.api_support import DAY, Keys, TestClient, provision

ROOT = Path(__file__).resolve().parent.parent
GEO = ROOT / "control" / "static" / "geo"


def _households(sizes: dict[str, int], month: str, seed: int = 3
                ) -> list[opendata.HouseholdMonth]:
    rng = random.Random(seed)
    return [opendata.HouseholdMonth(region=r, month=month, days_reported=rng.randint(1, 30),
                                    days_powered=rng.randint(0, 1),
                                    energy_wh=rng.uniform(100, 9000),
                                    paid_fcfa=rng.choice((0, 700, 1400)))
            for r, n in sizes.items() for _ in range(n)]


# --- pure ---------------------------------------------------------------------------------


def test_portfolio_share_is_a_bounded_share_or_none() -> None:
    assert figures.portfolio_share(0, 0) is None
    assert figures.portfolio_share(50, 200) == 0.25
    assert figures.portfolio_share(300, 200) == 1.0  # summed over different sets: capped
    assert figures.portfolio_share(-1, 200) == 0.0


def _row(desco: str, region: str, kits: int, **money: int) -> FleetSummary:
    f = summary._empty_figures()
    f.update(kits=kits, **money)
    return FleetSummary(desco_id=desco, region=region, computed_at=0.0, figures=f)


def test_live_figures_per_desco_and_region_hide_money_below_the_threshold() -> None:
    rows = [_row("d1", "Kara", 40, expected_fcfa=1000, paid_due_fcfa=900,
                 outstanding_fcfa=10_000, par30_outstanding_fcfa=2000,
                 default_outstanding_fcfa=500),
            _row("d2", "Kara", 3, expected_fcfa=100, paid_due_fcfa=0, outstanding_fcfa=900)]
    live = national.live_figures(rows, jobs.REGIONS, 10)
    assert live["households"] == 43
    d1, d2 = live["descos"]
    assert (d1["repayment_rate"], d1["par30"], d1["default_rate"]) == (0.9, 0.2, 0.05)
    assert d2 == {"desco_id": "d2", "kits": 3, "owned": None, "energy_wh_30d": None,
                  "repayment_rate": None, "par30": None, "default_rate": None, "suppressed": True}
    assert [r["region"] for r in live["regions"]] == list(jobs.REGIONS)
    kara = next(r for r in live["regions"] if r["region"] == "Kara")
    assert kara["kits"] == 43 and kara["repayment_rate"] == round(900 / 1100, 4)


def test_published_figures_are_the_cells_of_the_latest_month_and_the_national_trend() -> None:
    rows = [*opendata.build_rows(_households({"Maritime": 30, "Kara": 12}, "2026-02")),
            *opendata.build_rows(_households({"Maritime": 40, "Kara": 15, "Savanes": 4},
                                             "2026-03"))]
    rows = opendata.from_csv(opendata.to_csv(rows))
    got = national.published_figures(rows, jobs.REGIONS)
    assert got["month"] == "2026-03"
    assert [m["month"] for m in got["trend"]] == ["2026-02", "2026-03"]
    by = {r["region"]: r for r in got["regions"]}
    # Savanes (4) is suppressed, and Kara (the smallest published) with it
    assert by["Savanes"]["kits_active"] is None and by["Kara"]["kits_active"] is None
    assert by["Maritime"]["kits_active"] == 40
    assert by["Plateaux"] == dict.fromkeys(["region", *national.OPEN_COLUMNS]) | {
        "region": "Plateaux"}
    assert got["trend"][1]["kits_active"] == 59
    # nothing published yet (a fresh deployment): the map has regions, no figures
    empty = national.published_figures([], jobs.REGIONS)
    assert empty["month"] is None and empty["trend"] == []
    assert all(r["kits_active"] is None for r in empty["regions"])


def test_the_boundary_file_is_togo_s_five_regions_small_with_its_licence() -> None:
    geo = json.loads((GEO / "togo-regions.geojson").read_text())
    assert sorted(f["properties"]["region"] for f in geo["features"]) == sorted(jobs.REGIONS)
    assert (GEO / "togo-regions.geojson").stat().st_size < 100_000
    readme = (GEO / "README.md").read_text()
    assert "Natural Earth" in readme and "public domain" in readme
    assert "ISC" in (GEO / "LICENSE").read_text()
    for f in geo["features"]:  # inside Togo's bounding box
        for lon, lat in f["geometry"]["coordinates"][0]:
            assert -0.2 < lon < 1.9 and 6.0 < lat < 11.2


# --- over the API -------------------------------------------------------------------------


@pytest.fixture
def published(rt: Runtime, tmp_path: Path) -> Path:
    rt.settings.opendata_dir = tmp_path / "opendata"
    path, _ = publication.write_release(rt.settings, "2026-03", opendata.build_rows(
        _households({"Maritime": 40, "Plateaux": 25, "Centrale": 18, "Kara": 15,
                     "Savanes": 4}, "2026-03")))
    publication.write_release(rt.settings, "2026-02", opendata.build_rows(
        _households({"Maritime": 35, "Kara": 11}, "2026-02", seed=4)))
    return path


def test_who_may_read_the_national_view(client: TestClient, rt: Runtime, keys: Keys,
                                        published: Path) -> None:
    regulator = create_api_key(rt, name="arse", role="regulator")[1]
    for key, status in ((regulator, 200), (keys.admin, 200), (keys.operator, 403),
                        (keys.support, 403), (keys.finance, 403)):
        r = client.get("/v1/regulator/national", headers=Keys.auth(key))
        assert r.status_code == status, (key, r.text)
    assert client.get("/v1/regulator/national").status_code == 401


def test_no_kit_account_or_phone_in_the_national_view(client: TestClient, rt: Runtime,
                                                      keys: Keys, published: Path) -> None:
    for i in range(12):
        provision(client, keys.admin, f"KIT-R{i:02d}")
    provision(client, keys.north_admin, "KIT-NORTH", desco_id="north")
    now = rt.clock.now()
    with rt.db.session() as s:
        late = s.query(Account).filter_by(kit_id="KIT-R00").one()
        late.created_at = now - 200 * DAY  # credit ran out 100 days ago: in default
        late.credit_until = int(now - 100 * DAY)
        numbers = {a.account_number for a in s.query(Account)}
        kits = {k.id for k in s.query(Kit)}
    summary.refresh_fleet_summary(rt.db, now)
    regulator = create_api_key(rt, name="arse", role="regulator")[1]
    body = client.get("/v1/regulator/national", headers=Keys.auth(regulator)).json()
    text = json.dumps(body)
    assert not [k for k in kits if k in text] and not [n for n in numbers if n in text]
    assert "90 12" not in text and "+228" not in text and "phone" not in text
    live = body["live"]
    assert live["households"] == 13
    default, north = live["descos"]
    assert default["desco_id"] == "default" and default["kits"] == 12
    assert 0 < default["default_rate"] <= default["par30"] <= 1
    assert north == {"desco_id": "north", "kits": 1, "owned": None, "energy_wh_30d": None,
                     "repayment_rate": None, "par30": None, "default_rate": None,
                     "suppressed": True}
    # a DESCO-scoped admin sees its own DESCO only
    scoped = client.get("/v1/regulator/national", headers=Keys.auth(keys.north_admin)).json()
    assert [d["desco_id"] for d in scoped["live"]["descos"]] == ["north"]


def test_the_map_and_trend_equal_the_published_open_data(client: TestClient, rt: Runtime,
                                                         keys: Keys, published: Path) -> None:
    body = client.get("/v1/regulator/national", headers=Keys.auth(keys.admin)).json()
    od = body["open_data"]
    assert od["month"] == "2026-03"
    rows = list(csv.DictReader(io.StringIO(published.read_text())))
    by = {r["region"]: r for r in od["regions"]}
    compared = 0
    for row in rows:
        if row["region"] == opendata.NATIONAL:
            continue
        for column in national.OPEN_COLUMNS:
            if row[column] == "":  # suppressed in the file: not shown either
                assert by[row["region"]][column] is None
                continue
            assert by[row["region"]][column] == float(row[column]), (row, column)
            compared += 1
    assert compared >= 12
    assert by["Savanes"]["kits_active"] is None
    togo = next(r for r in rows if r["region"] == opendata.NATIONAL)
    assert body["open_data"]["trend"][-1]["kits_active"] == int(togo["kits_active"])
    assert body["open_data"]["trend"][-1]["energy_delivered_kwh"] == \
        float(togo["energy_delivered_kwh"])
    assert [m["month"] for m in body["open_data"]["trend"]] == ["2026-02", "2026-03"]


def test_the_page_and_the_boundary_file_are_served(client: TestClient) -> None:
    page = client.get("/regulator")
    assert page.status_code == 200 and "regulator.js" in page.text
    geo = client.get("/static/geo/togo-regions.geojson")
    assert geo.status_code == 200 and geo.headers["content-type"] == "application/geo+json"
    assert len(geo.json()["features"]) == 5
    assert client.get("/static/geo/..%2Fregulator.html").status_code == 404
