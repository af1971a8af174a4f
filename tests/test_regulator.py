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


def test_health_rows_suppress_small_groups_and_enough_others_against_differencing() -> None:
    rows = [_row("d1", "Kara", 40, expected_fcfa=1000, paid_due_fcfa=900,
                 outstanding_fcfa=10_000, par30_outstanding_fcfa=2000,
                 default_outstanding_fcfa=500),
            _row("d2", "Kara", 3, expected_fcfa=100, paid_due_fcfa=0, outstanding_fcfa=900),
            _row("d3", "Maritime", 8, expected_fcfa=100, paid_due_fcfa=50),
            _row("d4", "Maritime", 25, expected_fcfa=100, paid_due_fcfa=100)]
    published = opendata.from_csv(opendata.to_csv(opendata.build_health_rows(
        "2026-03", national.health_groups(rows, jobs.REGIONS), 10), opendata.HEALTH_COLUMNS))
    view = national.published_health(published, None)
    assert view["month"] == "2026-03"
    togo = view["national"]
    assert togo["households"] == 76 and togo["repayment_rate"] == round(1050 / 1300, 4)
    by = {d["name"]: d for d in view["descos"]}
    assert (by["d1"]["repayment_rate"], by["d1"]["par30"], by["d1"]["default_rate"]) == (
        0.9, 0.2, 0.05)
    # d2 (3) and d3 (8) are too small, and together hold 11 households: enough
    assert by["d2"]["suppressed"] and by["d3"]["suppressed"] and not by["d4"]["suppressed"]
    assert by["d2"] == {"name": "d2", "suppressed": True,
                        **dict.fromkeys(opendata.HEALTH_COLUMNS[3:])}
    hidden = togo["households"] - sum(d["households"] for d in by.values() if d["households"])
    assert hidden >= 10  # the national row minus the published DESCOs: only their sum
    regions = {r["name"]: r for r in view["regions"]}
    assert regions["Kara"]["households"] == 43 and regions["Maritime"]["households"] == 33
    # empty regions are suppressed cells, and nothing here is recoverable by differencing
    assert regions["Savanes"]["suppressed"]
    # a DESCO-scoped key is shown its own row only
    assert [d["name"] for d in national.published_health(published, "d4")["descos"]] == ["d4"]


def test_every_published_health_cell_is_built_from_enough_households() -> None:
    rng = random.Random(7)
    for _ in range(200):
        rows = [_row(f"d{i}", rng.choice(jobs.REGIONS), rng.randint(1, 30),
                     expected_fcfa=100, paid_due_fcfa=rng.randint(0, 100))
                for i in range(rng.randint(1, 6))]
        groups = national.health_groups(rows, jobs.REGIONS)
        out = opendata.build_health_rows("2026-03", groups, 10)
        size = {(g.group, g.name): g.households for g in groups}
        for kind in ("desco", "region"):
            mine = [r for r in out if r["group"] == kind]
            shown = [r for r in mine if r["households"] != ""]
            assert all(size[(kind, r["name"])] >= 10 for r in shown)
            hidden = [size[(kind, r["name"])] for r in mine
                      if r["households"] == "" and size[(kind, r["name"])]]
            # what the national row minus the shown rows gives back: nothing (no national
            # row, or nothing hidden), or the sum of 2+ groups holding 10+ households
            national_shown = out[0]["group"] == "national" and out[0]["households"] != ""
            assert not hidden or not national_shown or (len(hidden) >= 2
                                                        and sum(hidden) >= 10), out


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
    for i in range(11):
        provision(client, keys.north_admin, f"KIT-NORTH{i:02d}", desco_id="north")
    now = rt.clock.now()
    with rt.db.session() as s:
        late = s.query(Account).filter_by(kit_id="KIT-R00").one()
        late.created_at = now - 200 * DAY  # credit ran out 100 days ago: in default
        late.credit_until = int(now - 100 * DAY)
        numbers = {a.account_number for a in s.query(Account)}
        kits = {k.id for k in s.query(Kit)}
    publication.publish_health(rt.settings, rt.db, "2026-03", now)
    regulator = create_api_key(rt, name="arse", role="regulator")[1]
    body = client.get("/v1/regulator/national", headers=Keys.auth(regulator)).json()
    text = json.dumps(body)
    assert not [k for k in kits if k in text] and not [n for n in numbers if n in text]
    assert "90 12" not in text and "+228" not in text and "phone" not in text
    health = body["health"]
    assert health["month"] == "2026-03" and health["national"]["households"] == 23
    default, north = health["descos"]
    assert default["name"] == "default" and default["households"] == 12
    assert 0 < default["default_rate"] <= default["par30"] <= 1
    assert north["name"] == "north" and north["households"] == 11
    # a DESCO-scoped admin is shown its own DESCO's row only
    scoped = client.get("/v1/regulator/national", headers=Keys.auth(keys.north_admin)).json()
    assert [d["name"] for d in scoped["health"]["descos"]] == ["north"]
    # each figure is the published file's cell
    published = (rt.settings.opendata_dir or Path()) / "cizo-opendata-health-2026-03.csv"
    cells = {(r["group"], r["name"]): r for r in opendata.from_csv(published.read_text())}
    for row in [health["national"], *health["descos"]]:
        group = "national" if row is health["national"] else "desco"
        for column in opendata.HEALTH_COLUMNS[3:]:
            assert row[column] == opendata.health_cell(cells[(group, row["name"])], column)


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
