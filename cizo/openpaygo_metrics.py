"""OpenPAYGO Metrics as CIZO reads it (docs/protocol.md, "OpenPAYGO Metrics"): the data
formats a device may name, and how a Metrics time step becomes a ``kit_telemetry`` reading.

Pure code, no I/O. The control service's ``POST /dd`` and the fleet simulator's Metrics
devices both read the formats and the variable names here, so the mapping lives in one
place; every reading is then checked by the one kit contract (``cizo.protocol``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cizo.protocol import ContractError, Telemetry, validate_reading

AUTH_METHODS = ("sa", "ta", "ca", "da", "ra")  # the spec's; a server must accept them all

# A device names its data format by id ("df"), or sends it inline ("dfo"). Ours: the
# request's data then the hour's readings, newest first, 15 minutes apart (a reading that
# carries its own "timestamp" or "relative_time" overrides the interval).
CIZO_FORMAT_ID = 1
CIZO_FORMAT: dict[str, Any] = {
    "id": CIZO_FORMAT_ID,
    "data_order": ["token_count", "active_until_timestamp_requested",
                   "active_seconds_left_requested"],
    "historical_data_interval": -900,
    "historical_data_order": ["battery_voltage", "battery_soc", "panel_power", "load_power",
                              "panel_energy_total", "load_energy_total", "temperature",
                              "locked", "timestamp"],
}
DATA_FORMATS: Mapping[int, dict[str, Any]] = {CIZO_FORMAT_ID: CIZO_FORMAT}

# Metrics variable -> kit_telemetry field (units: V, %, W, W, Wh, Wh, °C). All required.
VARIABLES: Mapping[str, str] = {
    "battery_voltage": "battery_v",
    "battery_soc": "soc",
    "panel_power": "pv_w",
    "load_power": "load_w",
    "panel_energy_total": "pv_wh_total",
    "load_energy_total": "load_wh_total",
    "temperature": "temp_c",
}
LOCKED = "locked"  # optional: 1/0 or true/false; else derived from the ledger's credit end
ACTIVE_UNTIL = "active_until_timestamp"  # optional: the end the device holds -> credit_until


def data_format(format_id: Any) -> dict[str, Any] | None:
    """The registered format a request names by id (an int, or its decimal string)."""
    try:
        return DATA_FORMATS.get(int(format_id))
    except (TypeError, ValueError):
        return None


def readings(kit_id: str, simple: Mapping[str, Any], *, seq: int, now: float,
             credit_until: int | None, owned: bool) -> list[Telemetry]:
    """The ``kit_telemetry`` readings of one request in the library's simple form
    (``MetricsResponseHandler.get_simple_metrics``): one per historical time step, each
    step's values over the request's current ``data`` (a device may report a slow value
    such as the temperature once); a request without historical data but with the reading
    variables in ``data`` is one reading at the request's time.

    ``seq`` is the request count (v1's per-reading counter has no Metrics twin); ``locked``,
    when the device does not say, is what the ledger says at the reading's time.
    Raises ContractError (``missing_variable``, ``bad_time`` or a contract reason): one bad
    step refuses the whole request, which the device may then send again corrected.
    """
    current = simple.get("data") or {}
    if not isinstance(current, Mapping):
        raise ContractError("bad_data", "data is not an object")
    steps = simple.get("historical_data") or []
    if not steps and any(v in current for v in VARIABLES):
        steps = [{"timestamp": simple.get("data_collection_timestamp")
                  or simple.get("timestamp") or int(now)}]
    out = []
    for i, step in enumerate(steps):
        values = {**current, **step}
        missing = [v for v in VARIABLES if values.get(v) is None]
        if missing:
            raise ContractError("missing_variable", f"step {i}: {', '.join(missing)}")
        ts = values.get("timestamp")
        if isinstance(ts, bool) or not isinstance(ts, int):
            raise ContractError("bad_time", f"step {i}: timestamp {ts!r}")
        reported_end = values.get(ACTIVE_UNTIL)
        fields: dict[str, Any] = {field: values[v] for v, field in VARIABLES.items()}
        fields |= {"v": 1, "kit_id": kit_id, "ts": ts, "seq": seq, "boot": 0,
                   "locked": _locked(values.get(LOCKED), ts, credit_until, owned),
                   "credit_until": reported_end}
        out.append(validate_reading(fields, kit_id, now))
    return out


def _locked(reported: Any, ts: int, credit_until: int | None, owned: bool) -> Any:
    if reported is None:
        return not owned and (credit_until is None or ts >= credit_until)
    if type(reported) is int and reported in (0, 1):
        return bool(reported)
    return reported  # a bool, or anything else for the contract to refuse
