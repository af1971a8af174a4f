"""Kit telemetry in InfluxDB: the stored schema (pure) and a v1-wire-API client."""

from __future__ import annotations

from telemetry.errors import (
    InfluxError,
    InfluxQueryError,
    InfluxUnavailable,
    InfluxWriteRejected,
)
from telemetry.influx import InfluxClient, quote_ident, quote_string
from telemetry.schema import (
    STATUS_MEASUREMENT,
    TELEMETRY_MEASUREMENT,
    LineProtocolError,
    encode_line,
    encode_lines,
    encode_status_line,
    encode_status_lines,
)

__all__ = [
    "STATUS_MEASUREMENT",
    "TELEMETRY_MEASUREMENT",
    "InfluxClient",
    "InfluxError",
    "InfluxQueryError",
    "InfluxUnavailable",
    "InfluxWriteRejected",
    "LineProtocolError",
    "encode_line",
    "encode_lines",
    "encode_status_line",
    "encode_status_lines",
    "quote_ident",
    "quote_string",
]
