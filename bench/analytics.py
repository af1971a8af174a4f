"""The nightly analytics job at national size: 300,000 kits, a 30-day window.

Starts a private influxd 1.x and a fresh PostgreSQL database and writes the kits, accounts
and ledgers (COPY) across four DESCOs and Togo's five regions. The night is the job's steady
state: the 29 earlier days of hourly rollups are already kept in the ledger as the job of
earlier nights left them (generated, put through ``day_stats`` and ``jobs.save_day``), and
influxd holds the new day and tonight's first two hours (line protocol, 50,000 lines per
POST). Then ``control.fleet.jobs.run_analytics`` runs once in a child process (read the new
day, build the window, compute, store metrics and solvency scores, open and close alerts)
and its wall time and peak RSS are printed beside the goals (10 minutes, 2 GiB); set-up
times are reported apart. After it, the regulator's national view is timed on the same
ledger (bench/regulator.py: ``regulator_p95_ms``, goal < 300 ms).

Env: CIZO_BENCH_KITS (default 300000), CIZO_BENCH_DAYS (30), CIZO_TEST_PG_ADMIN_URL;
CIZO_BENCH_COLD=1 writes every day to influxd instead and runs the job twice on the same
night: cold (every day read from influxd, nothing kept yet) then warm (an A/B in one run:
``cold_job_s`` beside ``job_s``, and whether both found the same alerts);
CIZO_BENCH_COMPUTE_ONLY=1 times only the pure per-day pipeline on generated arrays (no
servers); CIZO_BENCH_REGULATOR_ONLY=1 loads the ledger and times only the regulator's view.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import regulator

from cizo import services
from cizo.settings import Settings
from control.fleet import jobs
from control.ledger.db import Database, migrate
from telemetry import analytics, rollups

ADMIN = os.environ.get("CIZO_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
KITS = int(os.environ.get("CIZO_BENCH_KITS", "300000"))
DAYS = int(os.environ.get("CIZO_BENCH_DAYS", "30"))
COLD = bool(os.environ.get("CIZO_BENCH_COLD"))
DESCOS = ("d1", "d2", "d3", "d4")
REGIONS = jobs.REGIONS
REGION_SHARE = (0.40, 0.20, 0.15, 0.13, 0.12)  # Maritime (Lomé) holds most households
GOAL_JOB_S = 600.0
GOAL_RSS_MIB = 2048.0
LINES_PER_POST = 50_000
DAY = 86_400
HOUR = 3_600


def kit_ids(n: int) -> list[str]:
    return [f"K{i:07d}" for i in range(n)]


def regions_of(n: int) -> np.ndarray:
    rng = np.random.default_rng(11)
    return rng.choice(len(REGIONS), size=n, p=REGION_SHARE)


def load_ledger(url: str, n: int, now: float) -> None:
    """Kits, accounts and their ledgers: a deposit, then payments every week or so."""
    rng = np.random.default_rng(5)
    region = regions_of(n)
    created = now - 120 * DAY
    with psycopg.connect(url) as conn:
        for d in DESCOS:
            conn.execute("INSERT INTO descos (id, name, created_at) VALUES (%s, %s, 0) "
                         "ON CONFLICT DO NOTHING", (d, f"DESCO {d}"))
        with conn.cursor().copy(
                "COPY kits (id, desco_id, mqtt_username, mqtt_password_hash, secret_enc, "
                "cmd_seq, created_at, online, reported_locked, region, last_seen) "
                "FROM STDIN") as cp:
            for i, k in enumerate(kit_ids(n)):
                silent = i % 211 == 0
                cp.write_row((k, DESCOS[i % 4], k, "x", "x", 0, created, not silent, False,
                              REGIONS[region[i]], now - (6 * DAY if silent else 60)))
        accounts: list[tuple[Any, ...]] = []
        entries: list[tuple[Any, ...]] = []
        for i, k in enumerate(kit_ids(n)):
            acct = i + 1
            until = int(created + 7 * DAY)
            entries.append((acct, "deposit", 2000, 7, 0, None, until, created))
            at = created
            paid = 2000
            gap = 5 + int(rng.integers(0, 6)) if i % 9 else 12  # some pay late
            while True:
                at += float(gap * DAY + int(rng.integers(0, DAY)))
                if at >= now:
                    break
                before = until
                until = int(max(until, at) + 7 * DAY)
                entries.append((acct, "payment", 700, 7, 0, before, until, at))
                paid += 700
            accounts.append((acct, DESCOS[i % 4], k, k, "+22890000000", 2000, 100, 60000,
                             paid, 0, until, False, created))
        _copy(conn, "accounts (id, desco_id, account_number, kit_id, customer_phone, "
              "deposit_fcfa, daily_rate_fcfa, total_price_fcfa, paid_total_fcfa, "
              "remainder_fcfa, credit_until, owned, created_at)", accounts)
        _copy(conn, "ledger_entries (account_id, kind, amount_fcfa, days, "
              "remainder_after_fcfa, credit_until_before, credit_until_after, created_at)",
              entries)
        conn.execute("SELECT setval('accounts_id_seq', %s)", (n + 1,))
        conn.commit()
        conn.execute("ANALYZE")


def _copy(conn: psycopg.Connection[Any], table: str, rows: list[tuple[Any, ...]]) -> None:
    with conn.cursor().copy(f"COPY {table} FROM STDIN") as cp:
        for row in rows:
            cp.write_row(row)


def hourly_rollups(n: int, now: float, days: int
                   ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Every kit's hourly rollup from 00:00 ``days`` days ago to the last whole hour, as
    (hour start, kits seen (5 % of hours missing), their ``HOURLY_FIELDS`` columns)."""
    rng = np.random.default_rng(9)
    panel = rng.uniform(60, 90, n)
    panel[::37] = 25.0  # dirty or broken panels: below their neighbours
    cap = rng.uniform(300, 600, n)
    evening_w = rng.uniform(4, 16, n)
    locked_kit = np.arange(n) % 53 == 0
    soc = np.full(n, 60.0)
    for t in range((int(now // DAY) - days) * DAY, int(now // HOUR) * HOUR, HOUR):
        hod = (t % DAY) // HOUR
        sun = max(0.0, float(np.sin((hod - 6) / 12 * np.pi)))
        pv = panel * sun * rng.uniform(0.7, 1.0, n)
        load = (evening_w if 18 <= hod < 23 else evening_w * 0.1) * rng.uniform(0.5, 1.5, n)
        first = soc.copy()
        soc = np.clip(soc + 100 * (pv - load) / cap, 0, 100)
        full_n = np.where(soc >= 98, 60, 0)
        locked = np.where(locked_kit & (rng.random(n) < 0.02), 3, 0)
        seen = np.flatnonzero(rng.random(n) > 0.05)
        cols = {"soc_min": np.minimum(first, soc).round(1), "soc_first": first.round(1),
                "soc_last": soc.round(1), "pv_wh": pv.round(2), "load_wh": load.round(2),
                "n": np.full(n, 60.0), "full_n": full_n.astype(float),
                "locked_load_n": locked.astype(float)}
        yield t, seen, np.column_stack([cols[f][seen] for f in analytics.HOURLY_FIELDS])


class LineWriter:
    """Hours of rollups into influxd as line protocol, 50,000 lines per POST, two at once."""

    def __init__(self, url: str, db: str, ids: list[str]) -> None:
        self.db = db
        self.prefix = [f"{rollups.HOURLY_MEASUREMENT},kit_id={k} " for k in ids]
        self.client = httpx.Client(base_url=url, timeout=600)
        self.pool = ThreadPoolExecutor(2)
        self.pending: list[Future[int]] = []
        self.written = 0

    def add(self, t: int, seen: np.ndarray, values: np.ndarray) -> None:
        names = analytics.HOURLY_FIELDS
        ints = {"n", "full_n", "locked_load_n"}
        text = [[f"{v:.0f}i" if f in ints else repr(v) for v in col]
                for f, col in zip(names, values.T.tolist(), strict=True)]
        lines = [self.prefix[i] + ",".join(f"{f}={text[j][r]}" for j, f in enumerate(names))
                 + f" {t}" for r, i in enumerate(seen.tolist())]
        for a in range(0, len(lines), LINES_PER_POST):
            self.pending.append(self.pool.submit(_post, self.client, self.db,
                                                 lines[a:a + LINES_PER_POST]))
            while len(self.pending) > 2:
                self.written += self.pending.pop(0).result()
        if t % DAY == DAY - HOUR:
            print(f"influx: {time.strftime('%Y-%m-%d', time.gmtime(t))} written, "
                  f"{self.written} points", file=sys.stderr, flush=True)

    def close(self) -> int:
        self.written += sum(f.result() for f in self.pending)
        self.pool.shutdown()
        self.client.close()
        return self.written


class DayKeeper:
    """Hours of rollups straight into the job's kept days (``jobs.save_day``), as the job
    of earlier nights would have left them: day by day through the same ``day_stats``,
    each day linked to the previous day's 23:00 like the job's read."""

    def __init__(self, url: str, ids: list[str], now: float) -> None:
        self.db = Database(url.replace("postgresql://", "postgresql+psycopg://"))
        self.ids, self.now = ids, now
        self.grid: analytics.DayHours | None = None
        self.day = 0
        self.link: tuple[int, np.ndarray, np.ndarray] | None = None
        self.kept = 0

    def add(self, t: int, seen: np.ndarray, values: np.ndarray) -> None:
        if self.grid is not None and t // DAY != self.day:
            self._keep()
        if self.grid is None:
            self.grid, self.day = analytics.blank_day(len(self.ids)), t // DAY
            if self.link is not None and self.link[0] == t - HOUR:
                lt, ls, lv = self.link
                analytics.place_hours(self.grid, ls, np.full(len(ls), lt), lv,
                                      day_start=self.day * DAY)
        analytics.place_hours(self.grid, seen, np.full(len(seen), t), values,
                              day_start=self.day * DAY)
        if t % DAY == DAY - HOUR:
            self.link = (t, seen, values)

    def _keep(self) -> None:
        assert self.grid is not None
        jobs.save_day(self.db, self.day, self.ids, analytics.day_stats(self.grid), self.now)
        self.kept += 1
        self.grid = None
        print(f"kept: {time.strftime('%Y-%m-%d', time.gmtime(self.day * DAY))}",
              file=sys.stderr, flush=True)

    def close(self) -> int:
        if self.grid is not None:
            self._keep()
        self.db.dispose()
        return self.kept


def _post(c: httpx.Client, db: str, lines: list[str]) -> int:
    """One batch; a 5xx (influxd's cache full while it snapshots) is retried after a pause."""
    body = "\n".join(lines).encode()
    for attempt in range(8):
        if not lines:
            break
        r = c.post("/write", params={"db": db, "precision": "s"}, content=body)
        if r.status_code < 500 or attempt == 7:
            r.raise_for_status()
            break
        print(f"influxd {r.status_code}: {r.text[:200]}; retrying", file=sys.stderr)
        time.sleep(2.0 * (attempt + 1))
    return len(lines)


def settle(influx: services.InfluxProcess, quiet_s: float = 0.5, limit_s: float = 900.0
           ) -> None:
    """Wait until influxd uses less than ``quiet_s`` of CPU in 5 s (its snapshots and
    compactions done), at most ``limit_s``."""
    assert influx.proc is not None
    stat = Path(f"/proc/{influx.proc.pid}/stat")

    def cpu() -> float:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    deadline = time.monotonic() + limit_s
    last = cpu()
    while time.monotonic() < deadline:
        time.sleep(5)
        now = cpu()
        if now - last < quiet_s:
            return
        last = now


def job(now: float) -> None:
    """The child: the nightly job, as the control service's scheduler runs it (settings
    from the CIZO_* environment), its progress on stderr."""
    settings = Settings()
    db = Database(settings.database_url)
    t0 = time.perf_counter()

    def show(info: dict[str, Any]) -> None:
        print(json.dumps(info), file=sys.stderr, flush=True)

    findings = jobs.run_analytics(settings, db, now, progress=show)
    assert findings is not None, "the lease was held by another run"
    kinds: dict[str, int] = {}
    for f in findings:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1
    print(json.dumps({"job_s": round(time.perf_counter() - t0, 1), "findings": kinds}))
    db.dispose()


def compute_only(n: int, days: int) -> None:
    """The child of CIZO_BENCH_COMPUTE_ONLY: the pure per-day pipeline on generated grids
    for ``n`` kits (no InfluxDB, no ledger), to size the compute apart from the read."""
    from telemetry import analytics as a
    from telemetry import habits

    rng = np.random.default_rng(3)
    groups = regions_of(n).astype(np.int64)
    t0 = time.perf_counter()
    builder = a.WindowBuilder(n)
    prev_present, prev_last = np.zeros(n, dtype=bool), np.zeros(n)
    for _ in range(days + 1):
        fields = {f: rng.uniform(0, 100, (n, 24)) for f in a.HOURLY_FIELDS}
        fields["n"][:] = 60
        fields["full_n"] = np.where(rng.random((n, 24)) < 0.2, 60.0, 0.0)
        grid = a.DayHours(rng.random((n, 24)) > 0.05, fields, prev_present, prev_last)
        stats = a.day_stats(grid)
        builder.add(stats, a.pv_ratios_by_group(stats.pv, groups))
        prev_present, prev_last = grid.present[:, 23].copy(), fields["soc_last"][:, 23].copy()
        del grid, fields, stats
    w = builder.finish()
    habits.household_patterns(w.profiles[w.reported])
    print(json.dumps({"job_s": round(time.perf_counter() - t0, 1), "findings": {}}))


def run_child(env: dict[str, str], now: float, mode: str = "--job") -> dict[str, Any]:
    """One run of the job in a child process of its own: its time and its peak RSS."""
    t0 = time.perf_counter()
    argv = [sys.executable, __file__, mode, str(now)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(argv, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if child.returncode:
        raise RuntimeError(f"the job failed: {stderr[-4000:]}")
    steps = [line for line in stderr.splitlines() if line.startswith('{"job"')]
    sys.stderr.write("".join(f"  {line}\n" for line in steps[:2] + steps[-5:]))
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    # seconds at the end of each step (the last one of a kind when it repeats)
    result["steps"] = {json.loads(line)["step"]: json.loads(line)["elapsed_s"]
                       for line in steps}
    result["rss_mib"] = usage.ru_maxrss / 1024
    result["wall_s"] = time.perf_counter() - t0
    return result


def main() -> int:
    if os.environ.get("CIZO_BENCH_COMPUTE_ONLY"):
        r = run_child(dict(os.environ), float(KITS), mode="--compute")
        print(f"compute only, {KITS} kits x {DAYS + 1} days: {r['job_s']} s, peak RSS "
              f"{r['rss_mib']:.0f} MiB", file=sys.stderr)
        print(json.dumps({"kits": KITS, "compute_s": r["job_s"],
                          "compute_peak_rss_mib": round(r["rss_mib"])}))
        return 0
    name = f"cizo_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{ADMIN.rpartition('/')[0]}/{name}"
    sa_url = url.replace("postgresql://", "postgresql+psycopg://")
    now = float(int(time.time() // DAY) * DAY + 2 * HOUR)  # the nightly run, 02:00 UTC
    work = Path(tempfile.mkdtemp(prefix="cizo-bench-analytics-"))
    influx = services.influxd(work / "influx", services.free_port())
    try:
        t0 = time.perf_counter()
        migrate(url)
        load_ledger(url, KITS, now)
        ledger_s = time.perf_counter() - t0
        print(f"ledger: {KITS} kits, accounts and ledgers in {ledger_s:.1f} s", file=sys.stderr)
        if os.environ.get("CIZO_BENCH_REGULATOR_ONLY"):
            print(json.dumps({"kits": KITS, "setup_ledger_s": round(ledger_s, 1),
                              **regulator.figures(sa_url, regions_of(KITS), work)}))
            return 0
        # influxd 1.x snapshots its cache to a TSM file every 25 MB by default; with
        # 300,000 series each snapshot writes every series' keys (~50 s each here), so the
        # writes stall. A night's writes in production arrive over the day, not in minutes.
        influx.env = {**os.environ, "INFLUXDB_DATA_CACHE_SNAPSHOT_MEMORY_SIZE": "512m",
                      "INFLUXDB_DATA_CACHE_MAX_MEMORY_SIZE": "4g"}
        influx.start()
        influx_url = f"http://127.0.0.1:{influx.port}"
        settings = Settings(database_url=sa_url, influx_url=influx_url, influx_db="bench")
        assert rollups.ensure_tiers(settings)
        ids = kit_ids(KITS)
        new_day = (int(now // DAY) - 1) * DAY  # yesterday: the day tonight's job reads
        keeper = None if COLD else DayKeeper(url, ids, now)
        writer = LineWriter(influx_url, rollups.Tiers.from_settings(settings).hourly, ids)
        spent = {"state": 0.0, "influx": 0.0}
        for t, seen, values in hourly_rollups(KITS, now, DAYS):
            t0 = time.perf_counter()
            if keeper is not None and t < new_day:
                keeper.add(t, seen, values)
                spent["state"] += time.perf_counter() - t0
                t0 = time.perf_counter()
            if keeper is None or t >= new_day - HOUR:  # with the hour that links it
                writer.add(t, seen, values)
                spent["influx"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        kept = keeper.close() if keeper is not None else 0
        spent["state"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        points = writer.close()
        influx_s = spent["influx"] + time.perf_counter() - t0
        state_s = spent["state"]
        t0 = time.perf_counter()
        settle(influx)  # snapshots and compactions over, as hours after the day's writes
        settle_s = time.perf_counter() - t0
        print(f"set-up: {kept} earlier days kept in {state_s:.1f} s; {points} hourly points "
              f"in influxd in {influx_s:.1f} s ({points / influx_s:,.0f}/s), then idle after "
              f"{settle_s:.1f} s", file=sys.stderr)
        env = {**os.environ, "CIZO_DATABASE_URL": settings.database_url,
               "CIZO_INFLUX_URL": influx_url, "CIZO_INFLUX_DB": settings.influx_db}
        cold = run_child(env, now) if COLD else None
        if cold:
            print(f"cold (every day read from influxd): {cold['job_s']} s, peak RSS "
                  f"{cold['rss_mib']:.0f} MiB; findings {cold['findings']}", file=sys.stderr)
        result = run_child(env, now)
        wall_s, rss_mib = result["wall_s"], result["rss_mib"]
        print(f"job: {result['job_s']} s (goal <= {GOAL_JOB_S:.0f} s), process wall "
              f"{wall_s:.1f} s, peak RSS {rss_mib:.0f} MiB (goal <= {GOAL_RSS_MIB:.0f}); "
              f"findings {result['findings']}", file=sys.stderr)
        national = regulator.figures(sa_url, regions_of(KITS), work)
        out = {"kits": KITS, "days": DAYS, "job_s": result["job_s"],
               "peak_rss_mib": round(rss_mib), **national,
               "hourly_points_in_influxd": points, "days_kept_before": kept,
               "setup_ledger_s": round(ledger_s, 1), "setup_kept_days_s": round(state_s, 1),
               "setup_influx_s": round(influx_s, 1),
               "setup_influx_settle_s": round(settle_s, 1), "goal_job_s": GOAL_JOB_S,
               "goal_rss_mib": GOAL_RSS_MIB, "findings": result["findings"],
               "steps_s": result["steps"],
               "cold_job_s": cold and cold["job_s"],
               "cold_peak_rss_mib": cold and round(cold["rss_mib"]),
               "cold_findings_same": cold and cold["findings"] == result["findings"]}
        print(json.dumps(out))
        return 0 if out["job_s"] <= GOAL_JOB_S and out["peak_rss_mib"] <= GOAL_RSS_MIB \
            and out["regulator_p95_ms"] < regulator.GOAL_MS else 1
    finally:
        influx.stop()
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--compute":
        compute_only(int(float(sys.argv[2])), DAYS)
        sys.exit(0)
    if len(sys.argv) == 3 and sys.argv[1] == "--job":
        job(float(sys.argv[2]))
        sys.exit(0)
    sys.exit(main())
