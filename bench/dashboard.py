"""Fleet summary latency with 300,000 kits in the ledger (PostgreSQL).

Loads 300,000 kits, accounts and one payment each into a fresh PostgreSQL database (COPY),
runs the pre-aggregation job once (timed), then times GET /v1/dashboard/fleet over real
HTTP (uvicorn). Compares with the 200 ms limit and with the same figures computed live
from the ledger (what the page would cost without pre-aggregation). Env: CIZO_BENCH_KITS.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cizo.clock import SystemClock
from cizo.settings import Settings
from control.api import create_app
from control.fleet import jobs
from control.ledger.db import migrate
from control.ledger.secrets import generate_secret_key
from control.runtime import Runtime
from control.security.api_keys import create_api_key
from tests.api_support import serve_in_thread

ADMIN = os.environ.get("CIZO_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
KITS = int(os.environ.get("CIZO_BENCH_KITS", "300000"))
REGIONS = jobs.REGIONS
LIMIT_MS = 200.0


def load(url: str, n: int, now: float) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO descos (id, name, created_at) VALUES ('d1','DESCO 1',0), "
                     "('d2','DESCO 2',0) ON CONFLICT DO NOTHING")
        with conn.cursor().copy(
            "COPY kits (id, desco_id, mqtt_username, mqtt_password_hash, secret_enc, cmd_seq, "
            "created_at, online, reported_locked, region, last_seen) FROM STDIN") as cp:
            for i in range(n):
                k = f"K{i:07d}"
                cp.write_row((k, "d1" if i % 3 else "d2", k, "x", "x", 0, now - 90 * 86400,
                              i % 4 != 0, i % 5 == 0, REGIONS[i % 5], now - 60))
                if i % 50000 == 0:
                    print(f"kits {i}/{n}", file=sys.stderr, flush=True)
        with conn.cursor().copy(
            "COPY accounts (id, desco_id, account_number, kit_id, customer_phone, deposit_fcfa, "
            "daily_rate_fcfa, total_price_fcfa, paid_total_fcfa, remainder_fcfa, credit_until, "
            "owned, created_at) FROM STDIN") as cp:
            for i in range(n):
                k = f"K{i:07d}"
                cp.write_row((i + 1, "d1" if i % 3 else "d2", k, k, "+22890000000", 2000, 100,
                              50000, 2000 + (i % 90) * 100, 0,
                              int(now + (i % 60 - 40) * 86400), i % 97 == 0, now - 90 * 86400))
        with conn.cursor().copy(
            "COPY ledger_entries (account_id, kind, amount_fcfa, days, remainder_after_fcfa, "
            "created_at) FROM STDIN") as cp:
            for i in range(n):
                cp.write_row((i + 1, "payment", 500, 5, 0, now - (i % 40) * 3600))
        conn.execute("SELECT setval('accounts_id_seq', %s)", (n + 1,))
        conn.execute("ANALYZE")
        conn.commit()


def main() -> int:
    name = f"cizo_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = ADMIN.rpartition("/")[0]
    url = f"{base}/{name}"
    try:
        migrate(url)
        now = time.time()
        t0 = time.perf_counter()
        load(url, KITS, now)
        print(f"loaded {KITS} kits in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        settings = Settings(database_url=url, secret_key=generate_secret_key(),
                            influx_url="http://127.0.0.1:9")
        rt = Runtime.build(settings, SystemClock())
        t0 = time.perf_counter()
        jobs.refresh_fleet_summary(rt.db, rt.clock.now())
        job_ms = (time.perf_counter() - t0) * 1000
        key = create_api_key(rt, name="bench", role="operator")[1]
        server = serve_in_thread(create_app(rt))
        headers = {"Authorization": f"Bearer {key}"}
        lat: list[float] = []
        with httpx.Client(base_url=server.url, headers=headers) as c:
            for i in range(60):
                params = {} if i % 3 == 0 else {"region": REGIONS[i % 5]} if i % 3 == 1 \
                    else {"desco_id": "d2"}
                t0 = time.perf_counter()
                r = c.get("/v1/dashboard/fleet", params=params)
                lat.append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()
            body = c.get("/v1/dashboard/fleet").json()
        server.stop()
        t0 = time.perf_counter()
        with rt.db.session() as s:
            jobs.compute_fleet_summary(s, rt.clock.now())
        live_ms = (time.perf_counter() - t0) * 1000
        rt.db.dispose()
        lat.sort()
        out = {"kits": KITS, "summary_kits": body["kits"],
               "p50_ms": round(statistics.median(lat), 1),
               "p95_ms": round(lat[int(len(lat) * 0.95) - 1], 1), "max_ms": round(lat[-1], 1),
               "limit_ms": LIMIT_MS, "job_ms": round(job_ms, 1),
               "live_aggregate_ms": round(live_ms, 1)}
        print(json.dumps(out))
        return 0 if out["p95_ms"] < LIMIT_MS else 1
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
