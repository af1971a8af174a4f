"""Open data: suppression that survives differencing, the month range, the monthly release."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from cizo import services
from cizo.settings import Settings
from control.fleet import publication
from control.ledger.db import Database, migrate
from control.ledger.models import Desco, Kit
from control.runtime import Runtime
from telemetry import opendata
from tests.api_support import Keys, TestClient

REGIONS = ("Maritime", "Plateaux", "Centrale", "Kara", "Savanes")
NUMERIC = ("kits_active", "payments_fcfa")  # cells that add up to the national row


def _households(rng: random.Random, sizes: dict[str, int], month: str = "2026-03"
                ) -> list[opendata.HouseholdMonth]:
    out = []
    for region, n in sizes.items():
        for _ in range(n):
            active = rng.random() < 0.9
            out.append(opendata.HouseholdMonth(
                region, month, 30 if active else 0, rng.randint(0, 30) if active else 0,
                rng.uniform(0, 9000) if active else 0.0,
                rng.choice([0, 700, 1400, 2800])))
    return out


def _table(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {r["region"]: r for r in rows}


def test_a_small_region_is_suppressed_with_a_complementary_cell() -> None:
    hs = _households(random.Random(1), {"Maritime": 60, "Plateaux": 30, "Centrale": 25,
                                        "Kara": 20, "Savanes": 4})
    t = _table(opendata.build_rows(hs, 10))
    assert t["Savanes"]["kits_active"] == ""
    hidden = [r for r in REGIONS if t[r]["kits_active"] == ""]
    assert hidden == ["Kara", "Savanes"]  # Kara (the smallest other) hides Savanes
    assert all(t[r]["energy_delivered_kwh"] == "" for r in hidden)
    assert t["Togo"]["kits_active"] == str(sum(h.days_reported > 0 for h in hs))
    # nothing is hidden when every region is large enough
    big = _households(random.Random(2), dict.fromkeys(REGIONS, 40))
    assert all(r[c] != "" for r in opendata.build_rows(big, 10) for c in opendata.COLUMNS)


@pytest.mark.parametrize("seed", range(40))
def test_no_suppressed_cell_can_be_recovered_by_differencing(seed: int) -> None:
    """The national total minus the published regions is the sum of the suppressed cells:
    it must never be a single cell, nor a sum over fewer than the threshold's households."""
    rng = random.Random(seed)
    sizes = {r: rng.choice([0, 1, 3, 6, 9, 10, 12, 25, 80]) for r in REGIONS}
    hs = _households(rng, {r: n for r, n in sizes.items() if n})
    rows = opendata.build_rows(hs, 10)
    t = _table(rows)
    regions = [r for r in t if r != opendata.NATIONAL]
    for column in NUMERIC:
        n = {r: sum((h.days_reported > 0) if column == "kits_active" else (h.paid_fcfa > 0)
                    for h in hs if h.region == r) for r in regions}
        hidden = [r for r in regions if t[r][column] == ""]
        assert all(n[r] >= 10 for r in regions if r not in hidden)  # primary
        assert all(r in hidden for r in regions if n[r] < 10)
        if t[opendata.NATIONAL][column] == "" or not hidden:
            continue
        remainder = int(t[opendata.NATIONAL][column]) - sum(
            int(t[r][column]) for r in regions if r not in hidden)
        assert len(hidden) >= 2, (column, hidden, remainder)  # never one cell alone
        assert sum(n[r] for r in hidden) >= 10  # and never a handful of households
    assert "KIT" not in opendata.to_csv(rows)


def test_metadata_describes_the_file() -> None:
    meta = opendata.metadata("2026-03", min_households=10, licence="CC-BY-4.0",
                             publisher="p", csv_name="cizo-opendata-2026-03.csv")
    assert [f["name"] for f in meta["schema"]["fields"]] == list(opendata.COLUMNS)
    assert meta["licenses"] == [{"name": "CC-BY-4.0"}]
    assert meta["suppression"]["min_households"] == 10 and "10" in meta["suppression"]["rule"]
    json.dumps(meta)  # machine-readable as it is


def test_months_outside_the_programme_are_refused() -> None:
    opendata.check_month("2026-03", "2025-01", "2026-12")
    for month in ("0325-03", "2024-12", "2027-01", "9999-12"):
        with pytest.raises(opendata.MonthOutOfRange, match="2025-01 to 2026-12"):
            opendata.check_month(month, "2025-01", "2026-12")
    with pytest.raises(ValueError, match="YYYY-MM"):
        opendata.check_month("2026-13", "2025-01", "2026-12")
    assert opendata.previous_month(1_767_225_600) == "2025-12"  # 2026-01-01 -> December
    assert opendata.month_of(1_767_225_600) == "2026-01"


def test_opendata_api_gives_a_404_for_a_month_outside_the_data(
    client: TestClient, rt: Runtime, keys: Keys
) -> None:
    headers = {"Authorization": f"Bearer {keys.admin}"}
    for month in ("0325-03", "1969-12", "2099-01"):
        r = client.get(f"/v1/opendata/{month}.csv", headers=headers)
        assert r.status_code == 404, (month, r.text)
        assert "programme's data covers" in r.json()["detail"]
    assert client.get("/v1/opendata/2026-13.csv", headers=headers).status_code == 422


def test_the_monthly_release_writes_csv_and_metadata(
    tmp_path: Path, influxd: services.InfluxProcess
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate(url)
    db = Database(url)
    with db.session() as s:
        if s.get(Desco, "default") is None:
            s.add(Desco(id="default", name="d", created_at=0.0))
            s.flush()
        for i in range(12):
            s.add(Kit(id=f"K{i}", desco_id="default", mqtt_username=f"K{i}",
                      mqtt_password_hash="x", secret_enc="x", cmd_seq=0, created_at=0.0,
                      region="Kara"))
    settings = Settings(database_url=url, opendata_dir=tmp_path / "release",
                        influx_url=f"http://127.0.0.1:{influxd.port}",
                        influx_db="opendata_release_test")
    published = publication.publish(settings, db, "2026-03")
    assert published is not None
    csv_path, meta_path = published
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert [r["region"] for r in rows] == ["Kara", "Togo"]
    meta = json.loads(meta_path.read_text())
    assert meta["path"] == csv_path.name and meta["temporal"] == "2026-03"
    # and the repayment health per DESCO and region, with its own metadata
    health = opendata.from_csv((csv_path.parent / "cizo-opendata-health-2026-03.csv")
                               .read_text())
    assert {(r["group"], r["name"], r["households"]) for r in health} >= {
        ("national", "Togo", "12"), ("desco", "default", "12"), ("region", "Kara", "12")}
    health_meta = json.loads((csv_path.parent / "cizo-opendata-health-2026-03.json")
                             .read_text())
    assert [f["name"] for f in health_meta["schema"]["fields"]] == list(
        opendata.HEALTH_COLUMNS)
    assert health_meta["suppression"]["min_households"] == 10
    # at start (a stack just up, or down on the release day): the month before, once
    april = opendata.month_bounds("2026-04")[0] + 5 * 86_400
    assert not publication.catch_up(settings, db, april)  # 2026-03 is out already
    fresh = settings.model_copy(update={"opendata_dir": tmp_path / "fresh"})
    assert publication.catch_up(fresh, db, april)
    assert (tmp_path / "fresh" / "cizo-opendata-health-2026-03.csv").exists()
    assert not publication.catch_up(fresh, db, april)
    early = fresh.model_copy(update={"programme_start_month": "2026-04"})
    assert not publication.catch_up(early, db, opendata.month_bounds("2026-05")[0] - 1)
    sched = BackgroundScheduler(timezone="UTC")
    publication.add_publish_job(sched, settings, db, lambda: 0.0)
    job = sched.get_job("opendata")
    assert job is not None and "day='2'" in str(job.trigger) and "hour='3'" in str(job.trigger)
    db.dispose()
