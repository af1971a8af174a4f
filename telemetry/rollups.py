"""Hourly and daily aggregates of kit telemetry, in their own databases (buckets).

InfluxDB 2.x has no continuous queries and its retention is per bucket, so the tiers are
three databases: raw readings (kept ``raw_retention_days``), ``<db>_hourly`` and
``<db>_daily`` (kept for years). A scheduled job reads with InfluxQL ``/query`` and writes
back with ``/write``: the v1 wire API that 1.x serves natively and 2.x through DBRP
mappings, so the same code runs on both. Re-running a window rewrites the same points
(same measurement, tag and time), so the job is idempotent and catches late readings by
always redoing the last hour it wrote.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from cizo.settings import Settings
from telemetry import analytics
from telemetry.errors import InfluxQueryError
from telemetry.influx import InfluxClient, quote_ident
from telemetry.schema import TAG_KIT_ID, TELEMETRY_MEASUREMENT, escape_tag_value

log = logging.getLogger(__name__)

HOURLY_MEASUREMENT = "kit_hourly"
DAILY_MEASUREMENT = "kit_daily"
HOUR_S = analytics.HOUR_S
DAY_S = analytics.DAY_S

HOURLY_FLOAT_FIELDS = ("soc_first", "soc_last", "soc_min", "soc_max", "soc_mean", "pv_w_mean",
                       "load_w_mean", "pv_wh", "load_wh", "pv_wh_total", "load_wh_total")
HOURLY_INT_FIELDS = ("n", "full_n", "locked_n", "locked_load_n")
DAILY_FLOAT_FIELDS = ("pv_wh", "load_wh", "soc_min", "soc_mean")
DAILY_INT_FIELDS = ("n", "full_n", "locked_n", "locked_load_n", "hours", "powered")


@dataclass(frozen=True, slots=True)
class Tiers:
    raw: str
    hourly: str
    daily: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Tiers:
        db = settings.influx_db
        return cls(db, settings.influx_hourly_db or f"{db}_hourly",
                   settings.influx_daily_db or f"{db}_daily")


def client_for(settings: Settings, db: str, *, timeout_s: float = 30.0) -> InfluxClient:
    """A client on one tier, with the settings' credentials (the RP only on the raw tier)."""
    token = settings.influx_token.get_secret_value() if settings.influx_token else None
    password = settings.influx_password.get_secret_value() if settings.influx_password else None
    return InfluxClient(settings.influx_url, db,
                        rp=settings.influx_rp if db == settings.influx_db else None,
                        token=token, username=settings.influx_username, password=password,
                        timeout_s=timeout_s)


def ensure_tiers(settings: Settings) -> bool:
    """Create the tier databases and set retention on 1.x; False where the server refuses.

    On 2.x the buckets (with their retention) and DBRP mappings are made by the deployment
    (deploy/influxdb/create-dbrp.sh): ``CREATE DATABASE`` is refused there, which is fine.
    """
    tiers = Tiers.from_settings(settings)
    rp = settings.influx_rp or "autogen"
    plan = [
        (tiers.raw, rp, settings.raw_retention_days),
        (tiers.hourly, "autogen", settings.aggregate_retention_days),
        (tiers.daily, "autogen", settings.aggregate_retention_days),
    ]
    with client_for(settings, tiers.raw) as client:
        try:
            for db, policy, days in plan:
                client.query(f"CREATE DATABASE {quote_ident(db)}", db="", epoch=None)
                client.query(f"ALTER RETENTION POLICY {quote_ident(policy)} ON {quote_ident(db)} "
                             f"DURATION {days}d", db="", epoch=None)
        except InfluxQueryError as exc:
            log.info("tier databases not created here (InfluxDB 2.x buckets?): %s", exc)
            return False
    return True


def _line(measurement: str, kit_id: str, fields: dict[str, Any], ints: tuple[str, ...],
          t: int) -> str:
    parts = []
    for name, value in fields.items():
        if value is None:
            continue
        if name in ints:
            parts.append(f"{name}={int(value)}i")
        else:
            parts.append(f"{name}={float(value)!r}")
    return f"{measurement},{TAG_KIT_ID}={escape_tag_value(kit_id)} {','.join(parts)} {t}"


def _window(a: int, b: int) -> str:
    return f"time >= {a}s AND time < {b}s"


def _by_kit_time(rows: list[dict[str, Any]], field: str) -> dict[tuple[str, int], Any]:
    return {(r[TAG_KIT_ID], int(r["time"])): r.get(field) for r in rows}


def hourly_rows(raw: InfluxClient, start: int, end: int) -> list[tuple[str, int, dict[str, Any]]]:
    """Aggregate raw readings into hours [start, end): (kit_id, hour, fields)."""
    m = quote_ident(TELEMETRY_MEASUREMENT)
    group = f"GROUP BY time(1h), {quote_ident(TAG_KIT_ID)} fill(none)"
    # one hour before the window gives each kit's counter base for its first hour
    base = (
        "SELECT first(soc) AS soc_first, last(soc) AS soc_last, min(soc) AS soc_min, "
        "max(soc) AS soc_max, mean(soc) AS soc_mean, mean(pv_w) AS pv_w_mean, "
        "mean(load_w) AS load_w_mean, first(pv_wh_total) AS pv_first, "
        "last(pv_wh_total) AS pv_last, first(load_wh_total) AS load_first, "
        "last(load_wh_total) AS load_last, count(soc) AS n "
        f"FROM {m} WHERE {_window(start - HOUR_S, end)} {group}"
    )
    rows = raw.query(base)
    full = _by_kit_time(raw.query(
        f"SELECT count(soc) AS full_n FROM {m} WHERE soc >= {analytics.FULL_SOC_PCT} "
        f"AND {_window(start, end)} {group}"), "full_n")
    locked = _by_kit_time(raw.query(
        f"SELECT count(load_w) AS locked_n FROM {m} WHERE locked = true "
        f"AND {_window(start, end)} {group}"), "locked_n")
    locked_load = _by_kit_time(raw.query(
        f"SELECT count(load_w) AS locked_load_n FROM {m} WHERE locked = true "
        f"AND load_w > {analytics.LOCKED_LOAD_W} AND {_window(start, end)} {group}"),
        "locked_load_n")
    per_kit: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        per_kit[r[TAG_KIT_ID]].append(r)
    out: list[tuple[str, int, dict[str, Any]]] = []
    for kit_id, kit_rows in per_kit.items():
        kit_rows.sort(key=lambda r: int(r["time"]))
        prev: dict[str, Any] | None = None
        for r in kit_rows:
            t = int(r["time"])
            energy = {}
            for name, first, last in (("pv_wh", "pv_first", "pv_last"),
                                      ("load_wh", "load_first", "load_last")):
                lo = prev[last] if prev is not None else r[first]
                delta = float(r[last]) - float(lo)
                energy[name] = delta if delta >= 0 else float(r[last])  # counter reset
            prev = r
            if t < start:
                continue
            fields = {
                "soc_first": r["soc_first"], "soc_last": r["soc_last"],
                "soc_min": r["soc_min"], "soc_max": r["soc_max"], "soc_mean": r["soc_mean"],
                "pv_w_mean": r["pv_w_mean"], "load_w_mean": r["load_w_mean"],
                "pv_wh": energy["pv_wh"], "load_wh": energy["load_wh"],
                "pv_wh_total": r["pv_last"], "load_wh_total": r["load_last"],
                "n": r["n"], "full_n": full.get((kit_id, t)) or 0,
                "locked_n": locked.get((kit_id, t)) or 0,
                "locked_load_n": locked_load.get((kit_id, t)) or 0,
            }
            out.append((kit_id, t, fields))
    return out


def daily_rows(hourly: InfluxClient, start: int, end: int
               ) -> list[tuple[str, int, dict[str, Any]]]:
    """Aggregate hourly points into UTC days [start, end): (kit_id, day, fields)."""
    rows = hourly.query(
        "SELECT sum(pv_wh) AS pv_wh, sum(load_wh) AS load_wh, min(soc_min) AS soc_min, "
        "mean(soc_mean) AS soc_mean, sum(n) AS n, sum(full_n) AS full_n, "
        "sum(locked_n) AS locked_n, sum(locked_load_n) AS locked_load_n, count(n) AS hours "
        f"FROM {quote_ident(HOURLY_MEASUREMENT)} WHERE {_window(start, end)} "
        f"GROUP BY time(1d), {quote_ident(TAG_KIT_ID)} fill(none)"
    )
    out = []
    for r in rows:
        fields = {k: r.get(k) for k in ("pv_wh", "load_wh", "soc_min", "soc_mean", "n",
                                        "full_n", "locked_n", "locked_load_n", "hours")}
        fields["powered"] = 1 if float(r.get("load_wh") or 0.0) > 0 else 0
        out.append((r[TAG_KIT_ID], int(r["time"]), fields))
    return out


def _last_time(client: InfluxClient, measurement: str, field: str) -> int | None:
    rows = client.query(f"SELECT last({quote_ident(field)}) FROM {quote_ident(measurement)}")
    return int(rows[0]["time"]) if rows else None


def _first_raw_time(raw: InfluxClient) -> int | None:
    rows = raw.query(f"SELECT first(soc) FROM {quote_ident(TELEMETRY_MEASUREMENT)}")
    return int(rows[0]["time"]) if rows else None


@dataclass(frozen=True, slots=True)
class RollupResult:
    hourly_points: int
    daily_points: int
    hours_from: int | None
    hours_to: int


def run_rollups(settings: Settings, now: float, *, batch_lines: int = 5000) -> RollupResult:
    """Roll raw readings up to complete hours before ``now``, and hours up to days.

    The daily tier includes today's partial day (rewritten by every run).
    """
    tiers = Tiers.from_settings(settings)
    end = int(now // HOUR_S) * HOUR_S
    raw_floor = int(now - settings.raw_retention_days * DAY_S) // HOUR_S * HOUR_S
    with (client_for(settings, tiers.raw) as raw, client_for(settings, tiers.hourly) as hc,
          client_for(settings, tiers.daily) as dc):
        last = _last_time(hc, HOURLY_MEASUREMENT, "n")
        if last is not None:
            start = max(last, raw_floor)  # redo the last hour written: late readings
        else:
            first = _first_raw_time(raw)
            if first is None:
                return RollupResult(0, 0, None, end)
            start = max(first // HOUR_S * HOUR_S, raw_floor)
        hourly_points = 0
        step = settings.rollup_chunk_hours * HOUR_S
        a = start
        while a < end:
            b = min(end, a + step)
            rows = hourly_rows(raw, a, b)
            _write(hc, [_line(HOURLY_MEASUREMENT, k, f, HOURLY_INT_FIELDS, t)
                        for k, t, f in rows], batch_lines)
            hourly_points += len(rows)
            a = b
        day_start = (start // DAY_S) * DAY_S
        last_day = _last_time(dc, DAILY_MEASUREMENT, "hours")
        if last_day is not None:
            day_start = min(day_start, last_day)
        daily = daily_rows(hc, day_start, end) if end > day_start else []
        _write(dc, [_line(DAILY_MEASUREMENT, k, f, DAILY_INT_FIELDS, t) for k, t, f in daily],
               batch_lines)
    log.info("rollup: %d hourly and %d daily points (%d..%d)", hourly_points, len(daily),
             start, end)
    return RollupResult(hourly_points, len(daily), start, end)


def _write(client: InfluxClient, lines: list[str], batch_lines: int) -> None:
    for i in range(0, len(lines), batch_lines):
        client.write("\n".join(lines[i:i + batch_lines]).encode())
