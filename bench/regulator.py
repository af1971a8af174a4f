"""The regulator's national view at national size: ``GET /v1/regulator/national`` timed over
real HTTP (uvicorn) against a ledger already loaded (bench/analytics.py loads 300,000 kits,
accounts and ledgers on PostgreSQL), beside the 300 ms goal (p95).

The request reads only the published open-data files, so the set-up publishes the latest
health file (the fleet summary refreshed on the loaded ledger, timed apart) and 24 months
of files per region, each built by ``opendata.build_rows`` from one household per kit: the
files a programme two years in has, at the size the kits give them.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cizo.clock import SystemClock
from cizo.settings import Settings
from control.api import create_app
from control.fleet import jobs, national, publication
from control.ledger.secrets import generate_secret_key
from control.runtime import Runtime
from control.security.api_keys import create_api_key
from telemetry import opendata
from tests.api_support import serve_in_thread

GOAL_MS = 300.0
RUNS = 60


def _months(now: float, n: int) -> list[str]:
    y, m = time.gmtime(now)[:2]
    out = []
    for _ in range(n):
        y, m = (y - 1, 12) if m == 1 else (y, m - 1)
        out.append(f"{y:04d}-{m:02d}")
    return sorted(out)


def publish_months(settings: Settings, region: np.ndarray, now: float) -> int:
    """``national.TREND_MONTHS`` monthly releases, one household per kit; returns rows."""
    rng = np.random.default_rng(17)
    energy = rng.uniform(2_000, 12_000, len(region))
    written = 0
    for month in _months(now, national.TREND_MONTHS):
        rows = opendata.build_rows(
            (opendata.HouseholdMonth(region=jobs.REGIONS[int(r)], month=month,
                                     days_reported=28, days_powered=26,
                                     energy_wh=float(e), paid_fcfa=2_800)
             for r, e in zip(region, energy, strict=True)),
            settings.opendata_min_households)
        publication.write_release(settings, month, rows)
        written += len(rows)
    return written


def publish_health(settings: Settings, rt: Runtime, now: float) -> float:
    """The latest month's health file, as the release writes it; its time in ms (the
    summary refreshed inside, on the loaded ledger)."""
    t0 = time.perf_counter()
    publication.publish_health(settings, rt.db, _months(now, 1)[-1], now)
    return (time.perf_counter() - t0) * 1000


def figures(database_url: str, region: np.ndarray, work: Path) -> dict[str, Any]:
    """Refresh the summary, publish the months, then time the endpoint ``RUNS`` times."""
    settings = Settings(database_url=database_url, secret_key=generate_secret_key(),
                        influx_url="http://127.0.0.1:9", opendata_dir=work / "opendata")
    rt = Runtime.build(settings, SystemClock())
    try:
        refresh_ms = publish_health(settings, rt, rt.clock.now())
        t0 = time.perf_counter()
        rows = publish_months(settings, region, rt.clock.now())
        publish_s = time.perf_counter() - t0
        key = create_api_key(rt, name="bench-regulator", role="regulator")[1]
        server = serve_in_thread(create_app(rt))
        lat: list[float] = []
        try:
            with httpx.Client(base_url=server.url, timeout=60,
                              headers={"Authorization": f"Bearer {key}"}) as c:
                for _ in range(RUNS):
                    t0 = time.perf_counter()
                    r = c.get("/v1/regulator/national")
                    lat.append((time.perf_counter() - t0) * 1000)
                    r.raise_for_status()
                body = r.json()
        finally:
            server.stop()
    finally:
        rt.db.dispose()
    lat.sort()
    p95 = round(lat[max(0, int(len(lat) * 0.95) - 1)], 1)
    households = body["health"]["national"]["households"]
    print(f"regulator: GET /v1/regulator/national p95 {p95} ms (goal < {GOAL_MS:.0f} ms), "
          f"{households} households, {len(body['open_data']['trend'])} months "
          f"of open data ({rows} rows, published in {publish_s:.1f} s); health file "
          f"(summary refreshed) {refresh_ms:.0f} ms", file=sys.stderr)
    return {"regulator_p95_ms": p95, "regulator_p50_ms": round(statistics.median(lat), 1),
            "regulator_goal_ms": GOAL_MS, "regulator_households": households,
            "regulator_health_publish_ms": round(refresh_ms, 1)}
