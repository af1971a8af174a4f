"""What a kit costs on a 2G SIM: measured MQTT bytes scaled to a month, plus link overhead.

Pure arithmetic. The MQTT part is measured by ``mqtt_async.WireCounters`` (every byte the
kit writes and reads); it is scaled from the simulated span to 30 days. Keepalives are
computed, not measured, because in an accelerated run the broker's keepalive runs on the
wall clock, not on simulated time. The TCP/IP and TLS part is an estimate stated with its
assumptions (docs/protocol.md, "Data budget").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MONTH_S = 30 * 86_400
OPENPAYGO_METRICS_KB = 750.0

TCP_IP_HEADER_B = 52  # IPv4 20 + TCP 20 + timestamps option 12
TLS_RECORD_B = 29  # TLS 1.2 AES-GCM: header 5 + explicit nonce 8 + tag 16 (TLS 1.3: 22)
TCP_CONNECT_B = 3 * 60 + 4 * TCP_IP_HEADER_B  # SYN, SYN-ACK, ACK and the FIN exchange
TLS_RESUMED_HANDSHAKE_B = 450  # session resumption (ticket); a full handshake is ~4-6 KB
PING_B = 2 + 2  # PINGREQ + PINGRESP
COMPACT_TELEMETRY_PUBLISH_B = 2 + 2 + 8 + 2 + 36  # short topic, 36-byte binary reading


@dataclass(frozen=True, slots=True)
class MonthlyBudget:
    reports: float  # telemetry readings a month
    mqtt_kb: float  # MQTT packets both ways, keepalives included
    keepalive_kb: float
    overhead_kb: float  # TCP/IP headers and ACKs, TLS records, reconnect handshakes
    total_kb: float
    compact_total_kb: float  # the same with a compact binary telemetry encoding
    vs_openpaygo: float  # total / 750 KB

    @property
    def compact_saving_kb(self) -> float:
        return self.total_kb - self.compact_total_kb


def pings_per_month(report_interval_s: float, keepalive_s: float) -> float:
    """PINGREQs when the link is idle for a whole keepalive between two reports."""
    idle = keepalive_s
    per_interval = max(0, math.ceil(report_interval_s / idle) - 1)
    return per_interval * MONTH_S / report_interval_s


def monthly_budget(*, mqtt_bytes_out: float, mqtt_bytes_in: float, packets_out: float,
                   packets_in: float, connects: float, sim_seconds: float, keepalive_s: float,
                   report_interval_s: float, avg_publish_bytes: float) -> MonthlyBudget:
    """Per-kit figures measured over ``sim_seconds`` of simulated time, scaled to 30 days."""
    scale = MONTH_S / max(1.0, sim_seconds)
    pings = pings_per_month(report_interval_s, keepalive_s)
    # measured pings are wall-clock artefacts of acceleration: replaced by the computed ones
    mqtt_b = (mqtt_bytes_out + mqtt_bytes_in) * scale
    packets = (packets_out + packets_in) * scale
    keepalive_b = pings * PING_B
    all_packets = packets + 2 * pings
    overhead_b = (all_packets * (TCP_IP_HEADER_B + TLS_RECORD_B)  # each packet's segment
                  + all_packets * TCP_IP_HEADER_B  # and the bare ACK it is answered with
                  + connects * scale * (TCP_CONNECT_B + TLS_RESUMED_HANDSHAKE_B))
    total_b = mqtt_b + keepalive_b + overhead_b
    reports = MONTH_S / report_interval_s
    saving = reports * max(0.0, avg_publish_bytes - COMPACT_TELEMETRY_PUBLISH_B)
    return MonthlyBudget(
        reports=reports,
        mqtt_kb=(mqtt_b + keepalive_b) / 1000,
        keepalive_kb=keepalive_b / 1000,
        overhead_kb=overhead_b / 1000,
        total_kb=total_b / 1000,
        compact_total_kb=(total_b - saving) / 1000,
        vs_openpaygo=total_b / 1000 / OPENPAYGO_METRICS_KB,
    )
