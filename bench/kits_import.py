"""Kit import at factory size: 100,000 kits from one CSV file into PostgreSQL.

Writes a CSV of 100,000 kits, starts the API (uvicorn) on a fresh PostgreSQL database and
runs ``cizo kits import`` against it, the way a DESCO would: parts of 5,000 rows over HTTP,
each row checked, the new kits written by the one provisioning function a batch per
transaction, every credential hashed (Mosquitto's PBKDF2) and encrypted, one audit entry
per kit. Compared with the 120 s limit. Then the same file again: it must create nothing.
Env: CIZO_BENCH_KITS (default 100000).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cizo.clock import SystemClock
from cizo.settings import Settings
from cizo_cli import main as cli
from control.api import create_app
from control.ledger.db import migrate
from control.ledger.secrets import generate_secret_key
from control.runtime import Runtime
from control.security.api_keys import ensure_admin_key
from tests.api_support import serve_in_thread

ADMIN = os.environ.get("CIZO_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
KITS = int(os.environ.get("CIZO_BENCH_KITS", "100000"))
LIMIT_S = 120.0
ADMIN_KEY = "cizo_bench_admin_key_0123456789abcdef"
REGIONS = ("Maritime", "Plateaux", "Centrale", "Kara", "Savanes")


def write_file(path: Path, n: int) -> None:
    with path.open("w") as fh:
        fh.write("kit_id,phone,deposit_fcfa,daily_rate_fcfa,total_price_fcfa,region,"
                 "deposit_paid\n")
        for i in range(n):
            fh.write(f"TG-{i:07d},9{i % 10}{i:06d},2000,100,50000,{REGIONS[i % 5]},"
                     f"{'true' if i % 4 else 'false'}\n")


def count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def run_import(url: str, src: Path, out: Path) -> float:
    t0 = time.perf_counter()
    code = cli.main(["--log-level", "WARNING", "kits", "import", str(src), "--url", url,
                     "--api-key", ADMIN_KEY, "--credentials-out", str(out)])
    elapsed = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"cizo kits import exited {code}")
    return elapsed


def main() -> int:
    name = f"cizo_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{ADMIN.rpartition('/')[0]}/{name}"
    try:
        migrate(url)
        settings = Settings(database_url=url, secret_key=generate_secret_key(),
                            admin_api_key=ADMIN_KEY, influx_url="http://127.0.0.1:9")
        rt = Runtime.build(settings, SystemClock())
        ensure_admin_key(rt)
        server = serve_in_thread(create_app(rt))
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "factory.csv"
            write_file(src, KITS)
            first = run_import(server.url, src, Path(tmp) / "credentials.csv")
            creds = sum(1 for _ in (Path(tmp) / "credentials.csv").open()) - 1
            kits = count(url, "kits")
            again = run_import(server.url, src, Path(tmp) / "again.csv")
            again_creds = sum(1 for _ in (Path(tmp) / "again.csv").open()) - 1
        server.stop()
        rt.db.dispose()
        out = {"kits": kits, "import_s": round(first, 1), "limit_s": LIMIT_S,
               "kits_per_s": round(kits / first), "credentials_written": creds,
               "rerun_s": round(again, 1), "rerun_created": count(url, "kits") - kits,
               "rerun_credentials": again_creds,
               "audit_entries": count(url, "audit_log"),
               "deposit_entries": count(url, "ledger_entries")}
        print(f"imported {kits} kits in {first:.1f} s (limit {LIMIT_S:.0f} s); the same file "
              f"again in {again:.1f} s created {out['rerun_created']}", file=sys.stderr)
        print(json.dumps(out))
        ok = (first < LIMIT_S and kits == KITS == creds and out["rerun_created"] == 0
              and again_creds == 0)
        return 0 if ok else 1
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    sys.exit(main())
