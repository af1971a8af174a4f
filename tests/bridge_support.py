"""Shared set-up of the bridge's integration tests: settings, started bridges, a steady
QoS 1 load, bridge processes, and ``FaultRig`` (the ``fault_rig`` fixture in
tests/conftest.py): a private Mosquitto and influxd to stop, kill and restart, with
everything a test started stopped at its end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from broker_bridge import Bridge
from cizo import compact, protocol, services
from cizo.clock import SystemClock
from cizo.settings import Settings
from telemetry import InfluxClient, quote_string
from tests.support import wait_for

ROOT = Path(__file__).resolve().parent.parent


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def bridge_settings(mqtt_port: int, influx_port: int, db: str, data_dir: Path,
                    **over: Any) -> Settings:
    return Settings(mqtt_port=mqtt_port, influx_url=f"http://127.0.0.1:{influx_port}",
                    influx_db=db, influx_flush_interval_s=0.1, data_dir=data_dir, **over)


def start_bridge(settings: Settings, **kwargs: Any) -> Bridge:
    """A started bridge, subscribed; short session and retries (tests leave no
    long-lived sessions behind)."""
    kwargs.setdefault("client_id", unique("bridge"))
    kwargs.setdefault("session_expiry_s", 30)
    kwargs.setdefault("retry_max_s", 0.5)
    bridge = Bridge(settings, SystemClock(), **kwargs)
    bridge.start()
    assert bridge.wait_subscribed(10), "bridge did not subscribe"
    return bridge


def metric_samples(text: str) -> dict[str, float]:
    """Prometheus exposition text -> {name with labels: value}."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def count_points(influx: InfluxClient, kits: list[str]) -> int:
    where = " OR ".join(f"kit_id = {quote_string(k)}" for k in kits)
    rows = influx.query(f"SELECT count(seq) FROM kit_telemetry WHERE {where}")
    return int(rows[0]["count"]) if rows else 0


class LoadPublisher:
    """Kits publishing QoS1 readings at a steady rate from a thread, through faults.

    A reading whose PUBACK does not come (broker down) is published again until it does;
    a copy that went through twice is the same point (same kit, ts and values). ``sent``
    counts distinct readings confirmed by the broker. In kit contract v2 (``version``) each
    message carries ``V2_READINGS`` readings, and ``rate_per_s`` counts messages.
    """

    V2_READINGS = 4

    def __init__(self, port: int, kits: list[str], rate_per_s: float,
                 version: int = protocol.PROTOCOL_VERSION) -> None:
        self.kits = kits
        self.version = version
        self.per_message = self.V2_READINGS if version == protocol.V2 else 1
        self.interval = 1.0 / rate_per_s
        self.base_ts = int(time.time()) - 86400
        self.sent = 0
        self.retries = 0
        self._stop = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=unique("load"),
                                  protocol=mqtt.MQTTv5)
        self.client.reconnect_delay_set(0.2, 1)  # type: ignore[arg-type]
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def message(self, i: int) -> tuple[str, bytes]:
        kit = self.kits[i % len(self.kits)]
        first = i // len(self.kits) * self.per_message
        bodies = [{"v": 1, "kit_id": kit, "ts": self.base_ts + n, "seq": n, "boot": 1,
                   "battery_v": 12.5, "soc": float(i % 100), "pv_w": 40.0, "load_w": 5.0,
                   "pv_wh_total": 1000.0 + n, "load_wh_total": 500.0, "locked": False,
                   "credit_until": None, "temp_c": 30.0}
                  for n in range(first, first + self.per_message)]
        payload = (compact.encode_readings(bodies) if self.version == protocol.V2
                   else json.dumps(bodies[0]).encode())
        return protocol.telemetry_topic(kit, self.version), payload

    def _run(self) -> None:
        i = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            topic, payload = self.message(i)
            try:
                info = self.client.publish(topic, payload, qos=1)
                info.wait_for_publish(2.0)
                ok = info.is_published()
            except (RuntimeError, ValueError):
                ok = False
            if not ok:
                self.retries += 1
                self._stop.wait(0.2)
                continue
            i += 1
            self.sent = i * self.per_message
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def start(self) -> LoadPublisher:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        self.client.disconnect()
        self.client.loop_stop()
        return self.sent


class BridgeProcess:
    """``python -m cizo_cli bridge`` as a separate process, with its /metrics."""

    def __init__(self, settings: Settings, client_id: str, group: str | None = None) -> None:
        self.settings = settings
        self.client_id = client_id
        self.metrics_port = services.free_port()
        env = dict(os.environ)
        env.update({
            "CIZO_MQTT_PORT": str(settings.mqtt_port),
            "CIZO_INFLUX_URL": settings.influx_url,
            "CIZO_INFLUX_DB": settings.influx_db,
            "CIZO_INFLUX_FLUSH_INTERVAL_S": "0.1",
            "CIZO_DATA_DIR": str(settings.data_dir),
            "CIZO_BRIDGE_CLIENT_ID": client_id,
            "CIZO_BRIDGE_METRICS_PORT": str(self.metrics_port),
            "CIZO_LOG_LEVEL": "WARNING",
        })
        if group:
            env["CIZO_BRIDGE_SHARED_GROUP"] = group
        self.log_path = settings.data_dir / f"{client_id}.log"
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "cizo_cli", "bridge"], env=env,
                                         cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.metrics().get("cizo_bridge_connected") == 1, timeout_s=20,
                 what=f"bridge process {client_id} connected")

    def metrics(self) -> dict[str, float]:
        if self.proc.poll() is not None:
            raise AssertionError(f"bridge exited: {self.log_path.read_text()[-2000:]}")
        try:
            text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return {}
        return metric_samples(text)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@dataclass(frozen=True)
class LoadedBridge:
    """A bridge taking a steady load: its settings, the publishing kits, the load."""

    settings: Settings
    kits: list[str]
    bridge: Bridge
    load: LoadPublisher


@dataclass(frozen=True)
class LoadedBridgeProcess:
    """A bridge process taking a steady load: its settings, the publishing kits, the load."""

    settings: Settings
    kits: list[str]
    bridge: BridgeProcess
    load: LoadPublisher


class FaultRig:
    """A private broker and influxd, and the bridges and loads a fault test runs on them.

    Whatever a test starts through the rig is stopped when the test ends (loads first,
    then bridges, then the servers), pass or fail.
    """

    def __init__(self, broker: services.ManagedProcess, influxd: services.InfluxProcess,
                 data_dir: Path) -> None:
        self.broker = broker
        self.influxd = influxd
        self.data_dir = data_dir
        self._loads: list[LoadPublisher] = []
        self._bridges: list[Bridge | BridgeProcess] = []

    def settings(self, db: str, **over: Any) -> Settings:
        return bridge_settings(self.broker.port, self.influxd.port, db, self.data_dir, **over)

    def bridge(self, settings: Settings, **kwargs: Any) -> Bridge:
        """A bridge in this process that retries and reconnects quickly."""
        kwargs.setdefault("session_expiry_s", 60)
        kwargs.setdefault("reconnect_max_s", 2)
        bridge = start_bridge(settings, **kwargs)
        self._bridges.append(bridge)
        return bridge

    def bridge_process(self, settings: Settings, client_id: str | None = None,
                       group: str | None = None) -> BridgeProcess:
        process = BridgeProcess(settings, client_id or unique("bridge"), group=group)
        self._bridges.append(process)
        return process

    def bridge_under_load(self, db: str, *, kits: int, rate_per_s: float,
                          steady_written: int, version: int = protocol.PROTOCOL_VERSION,
                          **over: Any) -> LoadedBridge:
        """A bridge in this process and ``kits`` kits publishing at ``rate_per_s`` in kit
        contract ``version``, returned once the bridge has written ``steady_written``
        points."""
        settings = self.settings(db, **over)
        kit_ids = [unique(db.upper()) for _ in range(kits)]
        bridge = self.bridge(settings)
        load = self.load(kit_ids, rate_per_s, version)
        wait_for(lambda: bridge.stats().written >= steady_written, what="steady writes")
        return LoadedBridge(settings, kit_ids, bridge, load)

    def bridge_process_under_load(self, db: str, *, kits: int, rate_per_s: float,
                                  steady_written: int,
                                  version: int = protocol.PROTOCOL_VERSION
                                  ) -> LoadedBridgeProcess:
        """A bridge process and ``kits`` kits publishing at ``rate_per_s`` in kit contract
        ``version``, returned once the bridge has written ``steady_written`` points."""
        settings = self.settings(db)
        kit_ids = [unique(db.upper()) for _ in range(kits)]
        process = self.bridge_process(settings)
        load = self.load(kit_ids, rate_per_s, version)
        wait_for(lambda: process.metrics().get("cizo_bridge_written_total", 0)
                 >= steady_written, what="steady writes")
        return LoadedBridgeProcess(settings, kit_ids, process, load)

    def load(self, kits: list[str], rate_per_s: float,
             version: int = protocol.PROTOCOL_VERSION) -> LoadPublisher:
        load = LoadPublisher(self.broker.port, kits, rate_per_s, version).start()
        self._loads.append(load)
        return load

    # --- faults -----------------------------------------------------------------------

    def stop_influxd(self) -> float:
        """Stop influxd; returns when it went down (monotonic)."""
        self.influxd.stop()
        return time.monotonic()

    def wait_until(self, when: float) -> None:
        """Let the fault last until the monotonic time ``when``."""
        wait_for(lambda: time.monotonic() >= when, timeout_s=max(0.0, when - time.monotonic()) + 5,
                 interval_s=0.5, what="the outage")

    def restart_broker(self, bridge: Bridge) -> None:
        """Restart Mosquitto (its persistence keeps the sessions) and wait until
        ``bridge`` has reconnected and subscribed again."""
        self.broker.restart()
        wait_for(lambda: bridge.stats().connected and bridge.wait_subscribed(0),
                 timeout_s=20, what="bridge reconnected and resubscribed")

    # --- outcome ----------------------------------------------------------------------

    def wait_for_points(self, settings: Settings, kits: list[str], expected: int,
                        timeout_s: float = 30) -> None:
        with InfluxClient.from_settings(settings) as influx:
            wait_for(lambda: count_points(influx, kits) == expected, timeout_s=timeout_s,
                     what=f"{expected} points")

    def assert_stored_once(self, settings: Settings, kits: list[str], sent: int,
                           timeout_s: float = 20) -> None:
        """Every reading sent is in InfluxDB, none twice and none extra."""
        self.wait_for_points(settings, kits, sent, timeout_s=timeout_s)
        with InfluxClient.from_settings(settings) as influx:
            rows = influx.query("SELECT count(seq) FROM kit_telemetry GROUP BY kit_id")
            assert sum(int(r["count"]) for r in rows) == sent

    def close(self) -> None:
        for load in self._loads:
            load.stop()
        for bridge in self._bridges:
            bridge.stop()
