"""Rollups, analytics and Grafana panels against the real influxd with a simulated fleet."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from cizo import services
from cizo.settings import Settings
from control.fleet import jobs
from control.ledger.db import Database, migrate
from control.ledger.leases import Lease
from control.ledger.models import Alert, AnalyticsDay, Desco, JobLease, Kit, KitMetrics
from telemetry import analytics, rollups
from telemetry.influx import InfluxClient
from tests.compose_support import env_of, rendered_services
from tests.dashboard_support import InfluxFleet, load_fleet

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"


@pytest.fixture(scope="module")
def fleet(influxd: services.InfluxProcess) -> Iterator[tuple[InfluxFleet, Settings]]:
    url = f"http://127.0.0.1:{influxd.port}"
    db = f"f_{uuid.uuid4().hex[:10]}"
    settings = Settings(influx_url=url, influx_db=db, rollup_chunk_hours=48)
    assert rollups.ensure_tiers(settings)
    data = load_fleet(url, db, int(time.time()))
    rollups.run_rollups(settings, data.now)
    yield data, settings
    for name in (db, f"{db}_hourly", f"{db}_daily"):
        httpx.post(f"{url}/query", params={"q": f'DROP DATABASE "{name}"'})


def test_tiers_have_their_retention(fleet: tuple[InfluxFleet, Settings]) -> None:
    data, _settings = fleet
    with InfluxClient(data.url, data.db) as c:
        raw = c.query(f'SHOW RETENTION POLICIES ON "{data.db}"')
        hourly = c.query(f'SHOW RETENTION POLICIES ON "{data.db}_hourly"')
    assert raw[0]["duration"] == "720h0m0s"
    assert hourly[0]["duration"] == f"{24 * 3650}h0m0s"


def test_daily_tier_matches_the_raw_counters(fleet: tuple[InfluxFleet, Settings]) -> None:
    data, settings = fleet
    kit = data.spec.kit_ids[5]
    hour_end = data.now // 3600 * 3600  # only complete hours are rolled up
    mine = [r for r in data.readings if r.kit_id == kit and r.ts < hour_end]
    days, wh = analytics.daily_energy([r.ts for r in mine], [r.load_wh_total for r in mine])
    with rollups.client_for(settings, f"{data.db}_daily") as c:
        rows = c.query(f"SELECT load_wh, hours, powered FROM kit_daily WHERE kit_id = '{kit}'")
    got = {int(r["time"]): r for r in rows}
    assert sorted(got) == [int(d) for d in days]
    for d, expected in zip(days, wh, strict=True):
        assert got[int(d)]["load_wh"] == pytest.approx(expected, rel=1e-6, abs=1e-6)
        assert got[int(d)]["powered"] == 1
    assert got[int(days[1])]["hours"] == 24
    # a second run rewrites the same points: no double counting
    before = sum(r["load_wh"] for r in rows)
    again = rollups.run_rollups(settings, data.now)
    assert again.hourly_points > 0
    with rollups.client_for(settings, f"{data.db}_daily") as c:
        rows2 = c.query(f"SELECT load_wh FROM kit_daily WHERE kit_id = '{kit}'")
    assert sum(r["load_wh"] for r in rows2) == pytest.approx(before)


def _ledger(url: str, data: InfluxFleet) -> Database:
    """A ledger with the fleet's kits (kit 6 silent for ten days)."""
    migrate(url)
    db = Database(url)
    with db.session() as s:
        if s.get(Desco, "default") is None:  # a migration may seed it
            s.add(Desco(id="default", name="d", created_at=0.0))
            s.flush()
        for k in data.spec.kit_ids:
            s.add(Kit(id=k, desco_id="default", mqtt_username=k, mqtt_password_hash="x",
                      secret_enc="x", cmd_seq=0, created_at=data.start, online=True,
                      last_seen=data.now - (10 * 86400 if k == data.spec.kit_ids[6] else 60)))
    return db


class Crash(Exception):
    """The control process dies here."""


def crash_at(step: str, *, day: int | None = None) -> Any:
    """A progress callback that dies at ``step`` (of the ``day``-th day read, if given)."""
    def progress(info: dict[str, Any]) -> None:
        if info["step"] == step and day in (None, info.get("day")):
            raise Crash(step)
    return progress


def test_analytics_find_each_planted_fault(
    fleet: tuple[InfluxFleet, Settings], tmp_path: Path
) -> None:
    data, settings = fleet
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    db = _ledger(url, data)
    settings = settings.model_copy(update={"database_url": url})
    steps: list[dict[str, Any]] = []
    findings = jobs.run_analytics(settings, db, data.now, progress=steps.append)
    assert findings is not None
    ids = data.spec.kit_ids
    found = {(f.kit_id, f.kind) for f in findings}
    assert (ids[2], "pv_below_neighbours") in found
    assert (ids[3], "power_while_locked") in found
    assert (ids[4], "capacity_fading") in found
    fading = next(f for f in findings if (f.kit_id, f.kind) == (ids[4], "capacity_fading"))
    # the page words it from this evidence, the figure it was judged against included
    assert fading.evidence["expected_fade_per_year"] == analytics.EXPECTED_FADE_PER_YEAR
    assert (ids[6], "silent") in found
    kinds_of_normal = {kind for k, kind in found if k in ids[7:]}
    assert kinds_of_normal == set(), found
    with db.session() as s:
        m = {row.kit_id: row for row in s.query(KitMetrics)}
        assert m[ids[0]].sizing == "undersized"
        assert m[ids[1]].sizing == "oversized"
        assert m[ids[8]].sizing == "ok"
        health4 = m[ids[4]].battery_health_pct
        assert health4 is not None and health4 < 90
        health8 = m[ids[8]].battery_health_pct
        assert health8 is not None and health8 > 97
        assert m[ids[8]].load_pattern and m[ids[1]].load_pattern
        assert m[ids[8]].energy_wh_30d == pytest.approx(
            sum(analytics.daily_energy([r.ts for r in data.readings if r.kit_id == ids[8]],
                                       [r.load_wh_total for r in data.readings
                                        if r.kit_id == ids[8]])[1]), rel=0.02)
        assert s.query(Alert).filter(Alert.state == "open").count() == len(findings)
    # the next run refreshes the same alerts instead of opening new ones
    jobs.run_analytics(settings, db, data.now + 60)
    with db.session() as s:
        assert s.query(Alert).count() == len(findings)
    # progress: every day of the window, then the computed, scored and stored steps
    days = [p for p in steps if p["step"] == "day read"]
    assert days and days[-1]["day"] == days[-1]["days"] == len(days)
    assert [p["step"] for p in steps][-3:] == ["computed", "scored", "stored"]
    db.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_analytics_resume_after_a_crash_without_opening_alerts_twice(
    fleet: tuple[InfluxFleet, Settings], database_url: str
) -> None:
    data, settings = fleet
    db = _ledger(database_url, data)
    first = jobs.run_analytics(settings, db, data.now)
    assert first

    with db.session() as s:  # a kit's alert acknowledged by an operator stays one alert
        ack = s.query(Alert).filter(Alert.kind == "silent").one()
        ack.state = "acknowledged"
    for step in ("day read", "scored"):  # a crash while reading, and just before storing
        with pytest.raises(Crash):
            jobs.run_analytics(settings, db, data.now + 3600, progress=crash_at(step))
    again = jobs.run_analytics(settings, db, data.now + 7200)
    assert again is not None
    with db.session() as s:
        live = [(a.kit_id, a.kind) for a in s.query(Alert).filter(Alert.state != "closed")]
        assert sorted(live) == sorted({(f.kit_id, f.kind) for f in again})
        assert len(live) == len(set(live)) == len(first)
        kept = s.get(Alert, ack.id)
        assert kept is not None and kept.state == "acknowledged"
        assert {m.computed_at for m in s.query(KitMetrics)} == {data.now + 7200}
    db.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_analytics_never_runs_twice_at_once(
    fleet: tuple[InfluxFleet, Settings], database_url: str
) -> None:
    data, settings = fleet
    db = _ledger(database_url, data)
    other = Database(database_url)  # a second control process: its own connections
    inside, leave = threading.Event(), threading.Event()

    def hold(info: dict[str, Any]) -> None:
        if info["step"] == "start":
            inside.set()
            assert leave.wait(60)

    result: list[Any] = []
    first = threading.Thread(target=lambda: result.append(
        jobs.run_analytics(settings, db, data.now, progress=hold)))
    first.start()
    assert inside.wait(60)
    try:
        assert jobs.run_analytics(settings, other, data.now) is None  # skipped: lease held
        with other.session() as s:
            assert s.query(KitMetrics).count() == 0 and s.query(Alert).count() == 0
            lease = s.get(JobLease, "analytics")
            assert lease is not None and lease.progress and lease.progress["step"] == "start"
    finally:
        leave.set()
        first.join(60)
    assert result and result[0]
    # released at the end: the other process runs the next one
    assert jobs.run_analytics(settings, other, data.now + 60) is not None
    # a holder that died leaves a lease that runs out
    dead = Lease(db, "analytics", 30.0, holder="dead-process", wall=lambda: data.now)
    assert dead.acquire()
    assert jobs.run_analytics(settings, other, data.now) is None
    assert Lease(other, "analytics", 30.0, wall=lambda: data.now + 31).acquire()
    other.dispose()
    db.dispose()


def _panel_queries() -> list[tuple[str, str, str, str]]:
    """(file, panel title, data source uid, query) of every dashboard target."""
    out = []
    for file in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(file.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                out.append((file.name, panel["title"], target["datasource"]["uid"],
                            target["query"]))
    return out


def _grafana_databases(db: str, tmp_path: Path) -> dict[str, str]:
    """Data source uid -> the database Grafana queries, through the provisioning file and
    the grafana service's environment as docker-compose.yml renders it for CIZO_INFLUX_DB."""
    env = env_of(rendered_services(tmp_path, CIZO_INFLUX_DB=db)["grafana"])
    provisioned = yaml.safe_load((ROOT / "deploy" / "grafana" / "provisioning" / "datasources"
                                  / "influxdb.yml").read_text())["datasources"]
    return {ds["uid"]: env[ds["jsonData"]["dbName"].strip("${}")] for ds in provisioned}


def test_every_grafana_panel_returns_data(fleet: tuple[InfluxFleet, Settings],
                                          tmp_path: Path) -> None:
    data, _settings = fleet
    queries = _panel_queries()
    files = {q[0] for q in queries}
    assert {"fleet.json", "kit.json"} <= files
    databases = _grafana_databases(data.db, tmp_path)
    assert set(databases.values()) == {data.db, f"{data.db}_hourly", f"{data.db}_daily"}
    kit = data.spec.kit_ids[5]
    for name, title, uid, q in queries:
        q = (q.replace("$timeFilter", f"time > {data.now - 3 * 86400}s")
              .replace("$__interval", "1h").replace("$kit_id", kit))
        assert "$" not in re.sub(r"/\^.*\$/", "", q), (name, title, q)
        with InfluxClient(data.url, databases[uid]) as c:
            rows = c.query(q)
        values = [v for r in rows for k, v in r.items() if k not in ("time", "kit_id")]
        assert any(v is not None for v in values), (name, title, q)
    assert np.isfinite(1.0)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_each_final_day_is_read_from_influxdb_once_and_changes_nothing(
    fleet: tuple[InfluxFleet, Settings], database_url: str
) -> None:
    data, settings = fleet
    db = _ledger(database_url, data)
    settings = settings.model_copy(update={"analytics_read_parallel": 1})

    def run(now: float, **kw: Any) -> tuple[list[str], Any, Any]:
        steps: list[dict[str, Any]] = []
        found = jobs.run_analytics(settings, db, now, progress=steps.append, **kw)
        assert found is not None
        with db.session() as s:
            metrics = sorted((m.kit_id, m.energy_wh_30d, m.battery_health_pct, m.sizing,
                              m.load_pattern, m.solvency_score) for m in s.query(KitMetrics))
        return (["influx" if i + 1 in {p["day"] for p in steps if p["step"] == "day read"}
                 else "stored" for i in range(len(jobs.window_days(now)))],
                sorted((f.kit_id, f.kind, f.detail) for f in found), metrics)

    now = data.now + 60
    days = jobs.window_days(now)
    final = [(d + 1) * 86400 + settings.analytics_day_final_after_s <= now for d in days]
    with pytest.raises(Crash):  # a first night that dies on its fifth day...
        jobs.run_analytics(settings, db, now, progress=crash_at("day read", day=5))
    sources, cold_findings, cold = run(now)  # ...is resumed: those days are not read again
    assert sources == ["stored" if i < 5 and final[i] else "influx" for i in range(len(days))]
    # the next run reads only the days that were not final yet, in parts side by side
    settings = settings.model_copy(update={"analytics_read_parallel": 3})
    sources, findings, metrics = run(now + 60)
    assert sources == ["stored" if f else "influx" for f in final]
    assert findings == cold_findings and metrics == cold
    # read again from InfluxDB in one go, the window is the same to the last bit
    with db.session() as s:
        s.query(AnalyticsDay).delete()
    settings = settings.model_copy(update={"analytics_read_parallel": 1})
    sources, findings, metrics = run(now + 120)
    assert set(sources) == {"influx"}
    assert findings == cold_findings and metrics == cold
    # days that leave the window are let go
    run(now + 40 * 86400)
    with db.session() as s:
        assert min(d.day for d in s.query(AnalyticsDay)) >= jobs.window_days(
            now + 40 * 86400)[0]
    db.dispose()


def test_kit_parts_split_every_kit_into_exactly_one_query() -> None:
    kits = [f"K{i:05d}" for i in range(1000)] + ["a-b", "x_y", "kit-", "k]", "k^", "k/", "k\\"]
    for n in (1, 2, 3, 7):
        parts = jobs.kit_parts(kits, n)
        assert len(parts) == n
        if n == 1:
            assert parts == [""]
            continue
        patterns = [re.compile(p.split("=~ /")[1].rstrip("/")) for p in parts]
        for k in kits:
            assert sum(bool(p.search(k)) for p in patterns) == 1, (k, parts)
        sizes = [sum(bool(p.search(k)) for k in kits) for p in patterns]
        assert max(sizes) - min(sizes) <= 150, sizes
