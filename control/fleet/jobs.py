"""Scheduled jobs behind the dashboards: fleet summary, analytics -> alerts, rollups.

- ``control.fleet.summary.refresh_fleet_summary`` (every ``fleet_summary_interval_s``):
  one row of figures per (DESCO, region), so the fleet page reads a handful of rows.
- ``run_analytics`` (every ``analytics_interval_s``): each day of the window from the
  ledger when it was read before (final days are kept), else from the hourly tier; per-kit
  metrics (telemetry.analytics), solvency scores, and alerts for anomalies.
- ``telemetry.rollups.run_rollups`` (every ``rollup_interval_s``; 0: not here).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from itertools import groupby
from typing import Any, cast

import numpy as np
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import (
    Table,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)

from cizo.settings import Settings
from control.fleet.summary import refresh_fleet_summary
from control.ledger.db import Database
from control.ledger.leases import Lease
from control.ledger.models import (
    Account,
    Alert,
    AnalyticsDay,
    Kit,
    KitMetrics,
    LedgerEntry,
)
from telemetry import analytics, day_state, habits, opendata, rollups, solvency
from telemetry.errors import InfluxQueryError
from telemetry.influx import quote_ident

log = logging.getLogger(__name__)

DAY = analytics.DAY_S
REGIONS = ("Maritime", "Plateaux", "Centrale", "Kara", "Savanes")
ALERT_STATES = ("open", "acknowledged", "closed")
ALERT_KINDS = ("power_while_locked", "capacity_fading", "pv_below_neighbours", "silent")
ANALYTICS_WINDOW_DAYS = 30
MIN_NEIGHBOURS = 4
HOUR = analytics.HOUR_S
READ_CHUNK_POINTS = 20_000  # influxd streams its answer in chunks of this many points
STORE_BATCH = 20_000
ANALYTICS_LEASE = "analytics"
ANALYTICS_ACTOR = "analytics"  # closed_by of an alert whose condition has cleared


# --- analytics -> metrics and alerts ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Finding:
    kit_id: str
    kind: str
    detail: str
    evidence: dict[str, Any]


@dataclass(frozen=True, slots=True)
class KitRow:
    id: str
    region: str
    desco_id: str
    last_seen: float | None
    created_at: float


Progress = Callable[[dict[str, Any]], None]


def run_analytics(settings: Settings, db: Database, now: float, *,
                  progress: Progress | None = None) -> list[Finding] | None:
    """Per-kit metrics, solvency scores and alerts for the whole fleet, under a lease.

    Returns the findings, or None when another control process holds the lease (it is
    running the job now). Each final day is kept as soon as it is read; metrics, scores
    and alerts are written at the end, in one transaction: a run that crashes leaves the
    previous results, and the next run takes the days already read from the ledger and
    starts the rest again (an open alert is refreshed, never opened twice).
    """
    with Lease(db, ANALYTICS_LEASE, settings.analytics_lease_s) as lease:
        if not lease.held:
            log.info("analytics: another control process is running it; skipped")
            return None
        return _analytics(settings, db, now, lease, progress)


def _analytics(settings: Settings, db: Database, now: float, lease: Lease,
               progress: Progress | None) -> list[Finding]:
    started = time.monotonic()

    def step(event: str, **fields: Any) -> None:
        info = {"job": "analytics", "step": event,
                "elapsed_s": round(time.monotonic() - started, 1), **fields}
        log.info("analytics %s", event, extra=info)
        lease.renew(info)
        if progress is not None:
            progress(info)

    with db.session() as s:
        kits = [KitRow(*r) for r in s.execute(
            select(Kit.id, Kit.region, Kit.desco_id, Kit.last_seen, Kit.created_at)
            .where(Kit.decommissioned_at.is_(None)).order_by(Kit.id)).all()]
    index = {k.id: i for i, k in enumerate(kits)}
    regions = sorted({k.region for k in kits})
    group = np.array([regions.index(k.region) for k in kits], dtype=np.int64)
    days = window_days(now)
    stored = _stored_days(db, days[0]) & set(days)
    step("start", kits=len(kits), days=len(days), stored_days=len(stored))
    # the days to read first, so one day's grid is never in memory beside the window's
    # numbers: final ones are kept at once (a crash resumes after them), the others wait
    fresh: dict[int, analytics.DayStats] = {}
    reader = DayReader(settings, rollups.Tiers.from_settings(settings).hourly, index)
    for n, day in enumerate(days, 1):
        if day in stored:
            continue
        stats = analytics.day_stats(reader.read(day * DAY))
        if (day + 1) * DAY + settings.analytics_day_final_after_s <= now:
            save_day(db, day, [k.id for k in kits], stats, now)
            stored.add(day)
        else:
            fresh[day] = stats
        step("day read", day=n, days=len(days), kits_reporting=int(stats.reported.sum()))
        del stats
    builder = analytics.WindowBuilder(len(kits))
    for day in days:
        one = fresh.pop(day) if day in fresh else _load_day(db, day, index)
        if one is None:  # kept in a format this version does not know: read it again
            one = analytics.day_stats(reader.read(day * DAY))
        builder.add(one, analytics.pv_ratios_by_group(one.pv, group))
        del one  # the window keeps ~75 bytes a kit of each day
    step("days added", days=len(days))
    w = builder.finish()
    findings = _findings(settings, kits, group, w, now)
    patterns = (habits.household_patterns(w.profiles[w.reported])
                if w.reported.any() else None)
    step("computed", findings=len(findings))
    scores = _solvency(db, kits, w, now)
    step("scored", accounts=len(scores))
    _store(db, now, kits, w, patterns, scores, findings, days[0])
    step("stored", findings=len(findings))
    return findings


def window_days(now: float) -> list[int]:
    """The window's UTC days (unix time // 86400): the last ``ANALYTICS_WINDOW_DAYS``
    whole days and today so far. Whole days, so each is read once and kept when final."""
    today = int(now // DAY)
    return list(range(today - ANALYTICS_WINDOW_DAYS, today + 1))


# --- each day read once: final days kept in the ledger ------------------------------------


def _stored_days(db: Database, first: int) -> set[int]:
    with db.session() as s:
        return set(s.scalars(select(AnalyticsDay.day).where(AnalyticsDay.day >= first)))


def _load_day(db: Database, day: int, index: dict[str, int]) -> analytics.DayStats | None:
    """A stored day laid on tonight's kits; None when it must be read again (a format
    this version does not know)."""
    with db.session() as s:
        blob = s.scalar(select(AnalyticsDay.data).where(AnalyticsDay.day == day))
    if blob is None:
        return None
    try:
        kit_ids, stats = day_state.unpack(bytes(blob))
    except day_state.UnknownFormat:
        log.info("analytics: stored day %d is of another format; reading it again", day)
        return None
    return day_state.aligned(kit_ids, stats, index)


def save_day(db: Database, day: int, kit_ids: list[str], stats: analytics.DayStats,
              now: float) -> None:
    """Keep a final day's numbers (``kit_ids[i]`` is row i), committed at once: a run that
    crashes later resumes from the days it had read."""
    blob = day_state.pack(kit_ids, stats)
    with db.session() as s:
        s.execute(delete(AnalyticsDay).where(AnalyticsDay.day == day))
        s.add(AnalyticsDay(day=day, kits=len(kit_ids), stored_at=now, data=blob))


class DayReader:
    """One UTC day of the hourly tier for every kit, straight onto the day's grid.

    One query per day and part of the kits (influxd 1.6 walks every series of the shard
    for each query, so a query per hour costs that walk 24 times), the parts side by side
    on ``analytics_read_parallel`` connections, each answer parsed as it streams in.
    The hour before 00:00 comes with it: it ties the day's first hour to the day before.
    """

    def __init__(self, settings: Settings, tier: str, index: dict[str, int]) -> None:
        self.settings = settings
        self.tier = tier
        self.index = index
        self.parts = kit_parts(list(index), settings.analytics_read_parallel)

    def read(self, day_start: int) -> analytics.DayHours:
        grid = analytics.blank_day(len(self.index))
        if not self.index:
            return grid
        lock = threading.Lock()
        fields = analytics.HOURLY_FIELDS
        q = (f"SELECT {', '.join(fields)} FROM {quote_ident(rollups.HOURLY_MEASUREMENT)} "
             f"WHERE time >= {day_start - HOUR}s AND time < {day_start + DAY}s{{part}} "
             f"GROUP BY {quote_ident('kit_id')}")

        def read_part(part: str) -> None:
            with rollups.client_for(self.settings, self.tier, timeout_s=600.0) as client:
                for chunk in client.stream_series(q.format(part=part), READ_CHUNK_POINTS):
                    rows: list[list[Any]] = []
                    kit_of: list[int] = []
                    for one in chunk:
                        i = self.index.get((one.get("tags") or {}).get("kit_id", ""))
                        values = one.get("values") or []
                        if i is None or not values:
                            continue  # a decommissioned or unknown kit
                        if one.get("columns") != ["time", *fields]:
                            raise InfluxQueryError(200,
                                                   f"unexpected columns {one.get('columns')}")
                        rows.extend(values)
                        kit_of.extend([i] * len(values))
                    if rows:
                        v = np.array(rows, dtype=np.float64)
                        with lock:
                            analytics.place_hours(grid, np.array(kit_of), v[:, 0], v[:, 1:],
                                                  day_start=day_start)

        if len(self.parts) == 1:
            read_part(self.parts[0])
        else:
            with ThreadPoolExecutor(len(self.parts)) as pool:
                for done in [pool.submit(read_part, part) for part in self.parts]:
                    done.result()  # the first failure is the day's failure
        return grid


def kit_parts(kit_ids: list[str], n: int) -> list[str]:
    """``n`` InfluxQL conditions that split the kits by the last character of their id,
    about evenly (at most as many parts as characters used); one part is no condition."""
    counts: dict[str, int] = {}
    for k in kit_ids:
        counts[k[-1]] = counts.get(k[-1], 0) + 1
    if n <= 1 or len(counts) <= 1:
        return [""]
    bins: list[list[str]] = [[] for _ in range(min(n, len(counts)))]
    size = [0] * len(bins)
    for char, count in sorted(counts.items(), key=lambda c: (-c[1], c[0])):
        j = size.index(min(size))
        bins[j].append(char)
        size[j] += count
    return [f" AND {quote_ident('kit_id')} =~ /[{''.join(_in_class(c) for c in sorted(b))}]$/"
            for b in bins]


def _in_class(char: str) -> str:
    """A character inside an InfluxQL /regex/ character class."""
    return "\\" + char if char in "\\]^-[/" else char


def _findings(settings: Settings, kits: list[KitRow], group: np.ndarray[Any, Any],
              w: analytics.Window, now: float) -> list[Finding]:
    findings: list[Finding] = []
    members = np.bincount(group[w.reported], minlength=int(group.max(initial=0)) + 1)
    compared = w.reported & (members[group] >= MIN_NEIGHBOURS + 1)
    for i, kit in enumerate(kits):
        silent = analytics.silent_for_days(kit.last_seen, now)
        if (silent is not None and silent > settings.silent_alert_days) or (
                silent is None and now - kit.created_at > settings.silent_alert_days * DAY):
            findings.append(Finding(kit.id, "silent",
                                    f"no report for more than {settings.silent_alert_days:g} days",
                                    {"silent_days": None if silent is None else round(silent, 1)}))
        if not w.reported[i]:
            continue
        locked_hours = int(w.locked_hours[i])
        if locked_hours >= 2:
            findings.append(Finding(kit.id, "power_while_locked",
                                    f"power drawn while locked in {locked_hours} hours",
                                    {"hours": locked_hours,
                                     "readings": int(w.locked_readings[i])}))
        if w.fading_fast[i]:
            fade = float(w.fade_per_year[i])
            findings.append(Finding(
                kit.id, "capacity_fading",
                f"capacity fading {100 * fade:.0f} %/year "
                f"(expected about {100 * analytics.EXPECTED_FADE_PER_YEAR:.0f} %)",
                {"fade_per_year": fade, "health_pct": _num(w.health_pct[i]),
                 "expected_fade_per_year": analytics.EXPECTED_FADE_PER_YEAR}))
        r = w.pv_ratio[i]
        if compared[i] and np.isfinite(r) and r < analytics.PV_NEIGHBOUR_RATIO:
            findings.append(Finding(kit.id, "pv_below_neighbours",
                                    f"PV at {100 * r:.0f} % of neighbours' in {kit.region}",
                                    {"ratio": round(float(r), 3), "region": kit.region}))
    return findings


def _num(x: Any) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _solvency(db: Database, kits: list[KitRow], w: analytics.Window, now: float
              ) -> dict[str, tuple[float, dict[str, Any]]]:
    """Every account's score from one ordered read of the ledger (streamed, not one per kit)."""
    index = {k.id: i for i, k in enumerate(kits)}
    day0 = window_days(now)[0] * DAY
    out: dict[str, tuple[float, dict[str, Any]]] = {}

    def score(acct_id: int, entries: list[Any]) -> None:
        kit_id, created = accounts[acct_id]
        i = index.get(kit_id)
        if i is None:
            return  # a decommissioned kit
        payments = solvency.ledger_payments(
            (at, kind, before, after) for _, at, kind, before, after in entries)
        daily_load = None
        if w.reported[i]:
            daily_load = [(float(day0 + d * DAY), float(v))
                          for d, v in enumerate(w.daily_load_wh[i]) if np.isfinite(v)]
        inputs = solvency.solvency_inputs(
            payments=payments, window_start=solvency.window_start(created, now),
            now=now, daily_load_wh=daily_load)
        out[kit_id] = (solvency.solvency_score(inputs), asdict(inputs))

    with db.session() as s:
        accounts = {a: (k, c) for a, k, c in s.execute(
            select(Account.id, Account.kit_id, Account.created_at)).all()}
        entries = s.execute(
            select(LedgerEntry.account_id, LedgerEntry.created_at, LedgerEntry.kind,
                   LedgerEntry.credit_until_before, LedgerEntry.credit_until_after)
            .order_by(LedgerEntry.account_id, LedgerEntry.created_at, LedgerEntry.id)
            .execution_options(yield_per=20_000))
        seen = set()
        for acct_id, rows in groupby(entries, key=lambda r: r.account_id):
            if acct_id in accounts:
                score(acct_id, list(rows))
                seen.add(acct_id)
    for acct_id in accounts.keys() - seen:  # no ledger entry yet
        score(acct_id, [])
    return out


def _store(db: Database, now: float, kits: list[KitRow], w: analytics.Window,
           patterns: habits.Patterns | None, scores: dict[str, tuple[float, dict[str, Any]]],
           findings: list[Finding], first_day: int) -> None:
    """Metrics replaced, alerts opened, refreshed and closed, days that left the window
    let go: one transaction."""
    pattern_of: dict[str, str] = {}
    if patterns is not None:
        reported = [k.id for k, r in zip(kits, w.reported, strict=True) if r]
        pattern_of = {k: patterns.name_of(j) for j, k in enumerate(reported)}
    rows = []
    for i, k in enumerate(kits):
        score, inputs = scores.get(k.id, (None, None))
        has = bool(w.reported[i])
        rows.append({
            "kit_id": k.id, "computed_at": now,
            "energy_wh_30d": float(w.energy_wh[i]) if has else None,
            "battery_health_pct": _num(w.health_pct[i]) if has else None,
            "sizing": w.sizing[i] if has else None, "load_pattern": pattern_of.get(k.id),
            "solvency_score": score, "solvency_inputs": inputs,
        })
    desco = {k.id: k.desco_id for k in kits}
    found = {(f.kit_id, f.kind): f for f in findings}
    # a kind is judged for a kit only with the evidence for it; no data is no verdict
    judged = {k.id for k, r in zip(kits, w.reported, strict=True) if r}
    with db.session() as s:
        s.execute(delete(AnalyticsDay).where(AnalyticsDay.day < first_day))
        s.execute(delete(KitMetrics).where(KitMetrics.kit_id.in_(select(Kit.id).where(
            Kit.decommissioned_at.is_(None)))))
        for a in range(0, len(rows), STORE_BATCH):
            s.execute(insert(KitMetrics), rows[a:a + STORE_BATCH])
        current = {(kit_id, kind): alert_id for alert_id, kit_id, kind in s.execute(
            select(Alert.id, Alert.kit_id, Alert.kind)
            .where(Alert.state != "closed", Alert.kind.in_(ALERT_KINDS))).all()}
        opened = [
            {"kit_id": f.kit_id, "desco_id": desco.get(f.kit_id, ""), "kind": f.kind,
             "state": "open", "detail": f.detail, "evidence": f.evidence,
             "opened_at": now, "last_seen_at": now}
            for key, f in found.items() if key not in current]
        seen = [{"alert_id": current[key], "detail": f.detail, "evidence": f.evidence}
                for key, f in found.items() if key in current]
        cleared = [{"alert_id": alert_id} for (kit_id, kind), alert_id in current.items()
                   if (kit_id, kind) not in found and (kind == "silent" or kit_id in judged)]
        if opened:
            s.execute(insert(Alert), opened)
        alerts = cast(Table, Alert.__table__)  # Core: an executemany UPDATE keyed by id
        if seen:
            s.execute(update(alerts).where(alerts.c.id == bindparam("alert_id"))
                      .values(last_seen_at=now, detail=bindparam("detail"),
                              evidence=bindparam("evidence")), seen)
        if cleared:
            s.execute(update(alerts).where(alerts.c.id == bindparam("alert_id"))
                      .values(state="closed", closed_at=now, closed_by=ANALYTICS_ACTOR),
                      cleared)
    log.info("analytics stored: %d kits, %d alerts opened, %d refreshed, %d closed",
             len(rows), len(opened), len(seen), len(cleared))


# --- scheduling ---------------------------------------------------------------------------


def add_jobs(scheduler: BackgroundScheduler, settings: Settings, db: Database,
             clock_now: Any, *, then_at_start: Callable[[float], object] | None = None) -> None:
    """Add the summary, analytics and rollup jobs to the control service's scheduler;
    ``then_at_start`` runs after the start-up run (``analytics_at_start``)."""

    def summary() -> None:
        try:
            refresh_fleet_summary(db, clock_now())
        except Exception:
            log.exception("fleet summary failed; the next run will retry")

    def rollup_job() -> None:
        try:
            rollups.run_rollups(settings, clock_now())
        except Exception:
            log.exception("rollup failed; the next run will retry")

    def analytics_job() -> None:
        try:
            run_analytics(settings, db, clock_now())
        except Exception:
            log.exception("analytics failed; the next run will retry")

    scheduler.add_job(summary, "interval", seconds=settings.fleet_summary_interval_s,
                      id="fleet_summary", max_instances=1, coalesce=True,
                      next_run_time=_soon())
    if settings.rollup_interval_s > 0:  # else a `cizo rollup --every` process runs it
        scheduler.add_job(rollup_job, "interval", seconds=settings.rollup_interval_s,
                          id="rollup", max_instances=1, coalesce=True)
    scheduler.add_job(analytics_job, "interval", seconds=settings.analytics_interval_s,
                      id="analytics", max_instances=1, coalesce=True)
    if settings.analytics_at_start:
        scheduler.add_job(lambda: run_at_start(settings, db, clock_now(), then_at_start),
                          id="at_start",
                          next_run_time=_soon())


def run_at_start(settings: Settings, db: Database, now: float,
                 then: Callable[[float], object] | None = None) -> None:
    """Rollups, analytics and the fleet summary once, in that order (each reads what the
    one before wrote), then ``then`` (the open data's catch-up), so a stack started on
    existing telemetry shows every figure at once instead of after the first interval of
    each job (an hour for analytics, a month for the open data)."""
    try:
        if settings.rollup_interval_s > 0:
            rollups.ensure_tiers(settings)  # a fresh InfluxDB: the tiers do not exist yet
            rollups.run_rollups(settings, now)
        run_analytics(settings, db, now)
        refresh_fleet_summary(db, now)
        if then is not None:
            then(now)
    except Exception:
        log.exception("the start-up analytics failed; the scheduled runs will retry")


def _soon() -> Any:
    import datetime as dt

    return dt.datetime.now(dt.UTC)


# --- open data ----------------------------------------------------------------------------


def opendata_households(settings: Settings, db: Database, month: str
                        ) -> list[opendata.HouseholdMonth]:
    """Each kit's month (from the daily tier and the ledger), ready for aggregation."""
    start, end = opendata.month_bounds(month)
    with db.session() as s:
        region_of = dict(s.execute(select(Kit.id, Kit.region)).all())
        paid = dict(s.execute(
            select(Account.kit_id, func.sum(LedgerEntry.amount_fcfa))
            .select_from(LedgerEntry).join(Account, Account.id == LedgerEntry.account_id)
            .where(LedgerEntry.kind == "payment", LedgerEntry.created_at >= start,
                   LedgerEntry.created_at < end)
            .group_by(Account.kit_id)).all())
    tiers = rollups.Tiers.from_settings(settings)
    with rollups.client_for(settings, tiers.daily) as client:
        try:
            rows = client.query(
                "SELECT sum(load_wh) AS wh, sum(powered) AS powered, count(powered) AS days "
                f"FROM {quote_ident(rollups.DAILY_MEASUREMENT)} "
                f"WHERE time >= {start}s AND time < {end}s GROUP BY {quote_ident('kit_id')}")
        except InfluxQueryError as exc:
            if "database not found" not in exc.error:
                raise
            # a fresh deployment before the first rollup: no energy figures yet, not an error
            log.info("open data %s: daily tier %s does not exist yet", month, tiers.daily)
            rows = []
    daily = {r["kit_id"]: r for r in rows}
    out = []
    for kit_id, region in region_of.items():
        d = daily.get(kit_id, {})
        out.append(opendata.HouseholdMonth(
            region=region, month=month, days_reported=int(d.get("days") or 0),
            days_powered=int(d.get("powered") or 0), energy_wh=float(d.get("wh") or 0.0),
            paid_fcfa=int(paid.get(kit_id) or 0)))
    return out
