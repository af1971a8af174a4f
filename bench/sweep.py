"""How long one control sweep takes on a big fleet in PostgreSQL.

Loads 300,000 kits with their accounts (COPY) into a fresh PostgreSQL database, every kit
commanded unlocked until its credit end; three disjoint 1 % slices (3,000 kits each) run out
of credit at three moments. Then times ``ControlService.sweep()`` (database round trips
included: advisory lock, expiry scan, due-kit scan, supersede, INSERT of the commands,
kit updates, commit):

- with no kit due (repeated; goal: under 5 ms),
- at each of the three moments, where it must find its 3,000 kits and queue their lock
  commands (goal: under 200 ms),
- and, for comparison in the same run, the per-kit path (one ``converge_kit`` round trip
  set per kit: what the batched sweep saves) on 300 more due kits, scaled to 3,000.

Every kit shares one encrypted secret (signing is not what is measured; publishing is off).
Env: CIZO_BENCH_SWEEP_KITS (300000), CIZO_BENCH_SWEEP_DUE_PCT (1.0),
CIZO_TEST_PG_ADMIN_URL. Prints progress, then one JSON object on the last line.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cizo.clock import ManualClock
from cizo.settings import Settings
from control.commands.service import ControlService
from control.ledger.db import Database, migrate
from control.ledger.models import Command
from control.ledger.secrets import SecretBox, generate_secret_key, hash_mqtt_password

PG_ADMIN = os.environ.get("CIZO_TEST_PG_ADMIN_URL",
                          "postgresql://postgres@127.0.0.1:5432/postgres")
KITS = int(os.environ.get("CIZO_BENCH_SWEEP_KITS", "300000"))
DUE_PCT = float(os.environ.get("CIZO_BENCH_SWEEP_DUE_PCT", "1.0"))
DAY = 86_400
GOAL_DUE_MS = 200.0
GOAL_IDLE_MS = 5.0


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load(url: str, box: SecretBox, now: int, due_at: list[int], per_slice: int,
         slow_at: int, slow_n: int) -> None:
    """COPY kits and accounts: slices due at ``due_at``, ``slow_n`` more at ``slow_at``,
    the rest weeks ahead."""
    secret_enc = box.encrypt("ab" * 32)
    pw = hash_mqtt_password("bench-password")
    kits, accts = io.StringIO(), io.StringIO()
    for i in range(KITS):
        kid = f"TG{i:07d}"
        slice_no = i // per_slice
        if slice_no < len(due_at):
            until = due_at[slice_no]
        elif i < len(due_at) * per_slice + slow_n:
            until = slow_at
        else:
            until = now + DAY * (5 + i % 60)
        kits.write(f"{kid}\tdefault\t{kid}\t{pw}\t{secret_enc}\t1\t{now - 90 * DAY}\tf\t"
                   f"unlock\t{until}\t{until}\tMaritime\n")
        accts.write(f"default\t{kid}\t{kid}\t+2289{i % 10_000_000:07d}\t2000\t100\t50000\t"
                    f"5000\t0\t{until}\tf\t{now - 90 * DAY}\n")
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY kits (id, desco_id, mqtt_username, mqtt_password_hash, "
                          "secret_enc, cmd_seq, created_at, online, commanded_action, "
                          "commanded_credit_until, lock_due_at, region) FROM STDIN") as cp:
                cp.write(kits.getvalue())
            with cur.copy("COPY accounts (desco_id, account_number, kit_id, customer_phone, "
                          "deposit_fcfa, daily_rate_fcfa, total_price_fcfa, paid_total_fcfa, "
                          "remainder_fcfa, credit_until, owned, created_at) FROM STDIN") as cp:
                cp.write(accts.getvalue())
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE kits")
        conn.execute("VACUUM ANALYZE accounts")


def ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)


def main() -> int:
    name = f"cizo_bench_sweep_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rpartition("/")[0].replace("postgresql://", "postgresql+psycopg://", 1) \
        + f"/{name}"
    try:
        migrate(url)
        box = SecretBox(generate_secret_key())
        now = int(time.time())
        per_slice = int(KITS * DUE_PCT / 100)
        due_at = [now + 3600, now + 2 * 3600, now + 3 * 3600]
        slow_at, slow_n = now + 4 * 3600, max(1, per_slice // 10)
        say(f"loading {KITS:,} kits and accounts into PostgreSQL ({per_slice:,} due per "
            "slice) ...")
        t0 = time.perf_counter()
        load(url, box, now, due_at, per_slice, slow_at, slow_n)
        load_s = round(time.perf_counter() - t0, 1)
        say(f"loaded in {load_s} s")
        clock = ManualClock()
        clock.set(now)
        settings = Settings(database_url=url)
        db = Database(url)
        svc = ControlService(settings, db, box, clock, None)
        svc.sweep()  # warm the pool and the plan cache
        idle = []
        for _ in range(50):
            t0 = time.perf_counter()
            r = svc.sweep()
            idle.append(ms(t0))
            assert r.issued == 0, r
        say(f"no kit due: median {statistics.median(idle)} ms over {len(idle)} sweeps")
        due: list[dict[str, Any]] = []
        for at in due_at:
            clock.set(at + 1)
            t0 = time.perf_counter()
            r = svc.sweep()
            took = ms(t0)
            due.append({"issued": r.issued, "ms": took})
            say(f"sweep at +{(at - now) // 3600} h: {r.issued:,} lock commands queued in "
                f"{took} ms")
            assert r.issued == per_slice, r
        with db.session() as s:
            from sqlalchemy import func, select
            queued = s.scalar(select(func.count()).select_from(Command)
                              .where(Command.status == "queued", Command.action == "lock"))
        assert queued == len(due_at) * per_slice, queued
        # the per-kit path on slow_n more kits, for comparison (scaled to one slice)
        clock.set(slow_at + 1)
        t0 = time.perf_counter()
        with db.session() as s:
            from control.commands.lifecycle import due_for_lock
            for kid in due_for_lock(s, clock.now()):
                svc.converge_kit(s, kid, origin="sweep")
        per_kit_ms = ms(t0)
        scaled = round(per_kit_ms * per_slice / slow_n, 1)
        say(f"per-kit path: {slow_n} kits in {per_kit_ms} ms (~{scaled} ms for {per_slice:,})")
        idle_after = []
        for _ in range(30):
            t0 = time.perf_counter()
            svc.sweep()
            idle_after.append(ms(t0))
        db.dispose()
        due_ms = [d["ms"] for d in due]
        result = {
            "bench": "sweep", "database": "postgresql", "kits": KITS,
            "due_per_sweep": per_slice, "load_s": load_s,
            "due_sweep_ms": due_ms, "due_sweep_ms_median": statistics.median(due_ms),
            "goal_due_ms": GOAL_DUE_MS,
            "idle_sweep_ms_median": round(statistics.median(idle), 2),
            "idle_sweep_ms_p95": sorted(idle)[int(len(idle) * 0.95) - 1],
            "idle_sweep_ms_median_with_9000_queued": round(statistics.median(idle_after), 2),
            "goal_idle_ms": GOAL_IDLE_MS,
            "per_kit_path_ms_scaled": scaled,
        }
        print(json.dumps(result))
        return 0
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    raise SystemExit(main())
