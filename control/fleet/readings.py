"""One kit's readings from InfluxDB, bucketed: the kit page's charts and its timeline's
telemetry gaps read the same query."""

from __future__ import annotations

from typing import Any

from cizo.settings import Settings
from telemetry.influx import quote_ident, quote_string
from telemetry.rollups import client_for
from telemetry.schema import TELEMETRY_MEASUREMENT


def series(settings: Settings, kit_id: str, *, start: int, end: int,
           step_s: int) -> list[dict[str, Any]]:
    """Mean state of charge, PV and load per ``step_s`` bucket with readings (empty buckets
    left out); raises telemetry.errors.InfluxError when the store does not answer."""
    q = (f"SELECT mean(soc) AS soc, mean(pv_w) AS pv_w, mean(load_w) AS load_w "
         f"FROM {quote_ident(TELEMETRY_MEASUREMENT)} "
         f"WHERE {quote_ident('kit_id')} = {quote_string(kit_id)} "
         f"AND time >= {start}s AND time <= {end}s "
         f"GROUP BY time({step_s}s) fill(none)")
    with client_for(settings, settings.influx_db, timeout_s=5.0) as client:
        rows: list[dict[str, Any]] = client.query(q)
    return rows
