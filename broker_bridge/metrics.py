"""The bridge's health in Prometheus text format, and a tiny HTTP server for ``/metrics``.

``render`` is pure (a stats snapshot in, exposition text out); ``MetricsServer`` serves
it from a daemon thread on the ``bridge_metrics_host``/``bridge_metrics_port`` settings.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker_bridge.stats import BridgeStats

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(stats: BridgeStats, prefix: str = "cizo_bridge") -> str:
    """Exposition text of one stats snapshot."""
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, value: float | None,
               labels: str = "") -> None:
        out.append(f"# HELP {prefix}_{name} {help_}")
        out.append(f"# TYPE {prefix}_{name} {kind}")
        if value is not None:
            out.append(f"{prefix}_{name}{labels} {value:g}" if isinstance(value, float)
                       else f"{prefix}_{name}{labels} {value}")

    metric("messages_in_total", "counter", "MQTT messages received (redeliveries included).",
           stats.messages_in)
    metric("written_total", "counter", "Lines written to InfluxDB (spool replays included).",
           stats.written)
    metric("acked_total", "counter", "QoS1 messages acknowledged to the broker.", stats.acked)
    metric("spooled_total", "counter", "Lines appended to the disk spool.", stats.spooled)
    metric("replayed_total", "counter", "Spooled lines replayed into InfluxDB.", stats.replayed)
    metric("batches_total", "counter", "InfluxDB write requests that succeeded.", stats.batches)
    metric("write_retries_total", "counter", "InfluxDB writes that failed.", stats.write_retries)
    metric("deadletters_total", "counter", "Messages stored in the dead-letter store.",
           stats.deadlettered)
    out.append(f"# HELP {prefix}_rejected_total Messages refused, by reason.")
    out.append(f"# TYPE {prefix}_rejected_total counter")
    for reason, count in sorted(stats.rejected.items()):
        out.append(f'{prefix}_rejected_total{{reason="{_label(reason)}"}} {count}')
    metric("spool_bytes", "gauge", "Bytes in the disk spool.", stats.spool_bytes)
    metric("spool_records", "gauge", "Batches in the disk spool waiting for replay.",
           stats.spool_records)
    metric("queue_depth", "gauge", "Messages received and not yet durable.", stats.queue_depth)
    metric("write_latency_seconds", "gauge", "Duration of the last InfluxDB write.",
           stats.last_write_latency_s)
    metric("write_latency_seconds_sum", "counter", "Total time spent in InfluxDB writes.",
           stats.write_latency_sum_s)
    metric("lag_seconds", "gauge",
           "Receipt-to-durable time of the oldest message of the last batch.", stats.lag_s)
    metric("influx_up", "gauge", "1 while InfluxDB takes writes.", int(stats.influx_up))
    metric("connected", "gauge", "1 while connected to the broker.", int(stats.connected))
    metric("connects_total", "counter", "Successful broker connections.", stats.connects)
    metric("kit_replay_requests_total", "counter",
           "Requests to every kit to publish again what a lost broker may have dropped.",
           stats.replay_requests)
    return "\n".join(out) + "\n"


class MetricsServer:
    """Serves ``GET /metrics`` (and ``/healthz``) from a daemon thread."""

    def __init__(self, host: str, port: int, snapshot: Callable[[], BridgeStats]) -> None:
        snap = snapshot

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/metrics":
                    body = render(snap()).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", CONTENT_TYPE)
                elif self.path == "/healthz":
                    body = b"ok\n"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                else:
                    body = b"not found\n"
                    self.send_response(404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("metrics request: %s", format % args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="bridge-metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("bridge metrics on http://%s:%d/metrics", self._server.server_address[0],
                 self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
