"""docker-compose.yml run for real, without a container engine.

Docker Compose v2's own CLI renders docker-compose.yml with a production .env; each of
our services (bridge, control) then runs natively with exactly the command and
environment compose gives its container (plus the image's ENV), production mode on,
against this test's real Mosquitto (the deploy/ ACL, service accounts with the compose
passwords), influxd and PostgreSQL. Only addresses are mapped: compose's service names
and ports to the test's, container paths to temporary directories. A setting production
needs that compose does not give makes a process refuse to start, and the test fail
with its message.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cizo import protocol, services
from telemetry import InfluxClient
from telemetry.errors import InfluxQueryError
from tests.compose_support import ROOT, dockerfile_env, env_of, rendered_services
from tests.support import wait_for

pytestmark = pytest.mark.integration

ACL = ROOT / "deploy" / "mosquitto" / "acl"
OUR_SERVICES = ("bridge", "control")  # with an MQTT account
CONTAINER_DATA_DIR = "/var/lib/cizo"


@dataclass(frozen=True)
class Servers:
    """The test's servers, by the compose service name and port they stand in for."""

    mqtt_port: int
    influx_port: int
    ledger_url: str  # a fresh PostgreSQL database
    passwd: Path
    broker: services.ManagedProcess

    def address(self, host: str, port: int) -> tuple[str, int] | None:
        return {("mosquitto", 1883): ("127.0.0.1", self.mqtt_port),
                ("influxdb", 8086): ("127.0.0.1", self.influx_port)}.get((host, port))


def add_broker_account(passwd: Path, user: str, password: str) -> None:
    flags = ["-b"] if passwd.exists() else ["-c", "-b"]
    subprocess.run([services.find_binary("mosquitto_passwd", "/usr/bin"), *flags, str(passwd),
                    user, password], check=True, capture_output=True, timeout=30)


@pytest.fixture
def compose_services(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return rendered_services(tmp_path)


@pytest.fixture
def servers(tmp_path: Path, pg_database: str,
            compose_services: dict[str, dict[str, Any]]) -> Iterator[Servers]:
    passwd = tmp_path / "broker" / "passwd"
    passwd.parent.mkdir()
    for name in OUR_SERVICES:
        env = env_of(compose_services[name])
        add_broker_account(passwd, env["CIZO_MQTT_USERNAME"], env["CIZO_MQTT_PASSWORD"])
    broker = services.mosquitto(tmp_path / "broker", services.free_port(),
                                allow_anonymous=False, password_file=passwd, acl_file=ACL)
    influxd = services.influxd(tmp_path / "influxd", services.free_port())
    with services.running(broker, influxd):
        yield Servers(broker.port, influxd.port, pg_database, passwd, broker)


def native_env(service: dict[str, Any], servers: Servers, data_dir: Path,
               api_port: int) -> dict[str, str]:
    """The container's environment (image ENV, then compose's), addresses mapped."""
    env = {k: v for k, v in dockerfile_env().items() if k.startswith("CIZO_")}
    env |= env_of(service)
    mapped = servers.address(env.get("CIZO_MQTT_HOST", ""), int(env.get("CIZO_MQTT_PORT", 0)))
    if mapped:
        env["CIZO_MQTT_HOST"], port = mapped
        env["CIZO_MQTT_PORT"] = str(port)
    for key, value in env.items():
        url = urlsplit(value)
        to = servers.address(url.hostname or "", url.port or 0) if url.scheme == "http" else None
        if to is not None:
            env[key] = urlunsplit(url._replace(netloc=f"{to[0]}:{to[1]}"))
    if "CIZO_DATABASE_URL" in env:
        assert urlsplit(env["CIZO_DATABASE_URL"]).hostname == "postgres"
        env["CIZO_DATABASE_URL"] = servers.ledger_url  # the test's own user and database
    assert env["CIZO_DATA_DIR"] == CONTAINER_DATA_DIR  # a volume in compose: a directory here
    env["CIZO_DATA_DIR"] = str(data_dir)
    if env.get("CIZO_API_PORT") == "8000":  # published by compose: a free port here
        env["CIZO_API_HOST"], env["CIZO_API_PORT"] = "127.0.0.1", str(api_port)
    unmapped = {k: v for k, v in env.items()
                if any(h in v for h in ("//mosquitto", "//influxdb", "@postgres", "/var/lib"))}
    assert not unmapped, f"an address the test does not map: {unmapped}"
    return env


class NativeService:
    """One compose service's command, run as a local process."""

    def __init__(self, name: str, service: dict[str, Any], env: dict[str, str],
                 log_dir: Path) -> None:
        # container paths in arguments live in the data volume, a directory here
        command = [arg.replace(CONTAINER_DATA_DIR, env["CIZO_DATA_DIR"])
                   for arg in service["command"]]
        assert command[0] == "cizo" and service.get("entrypoint") in ([], None), name
        self.name = name
        self.data_dir = Path(env["CIZO_DATA_DIR"])
        self.log = log_dir / f"{name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cizo_cli", *command[1:]], cwd=ROOT, stdout=out,
                stderr=subprocess.STDOUT,
                env={"PATH": os.environ["PATH"], "HOME": str(log_dir), **env})

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n"
                                 f"{self.output()[-3000:]}")
        return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def run_service(tmp_path: Path, servers: Servers,
                compose_services: dict[str, dict[str, Any]]) -> Iterator[Any]:
    started: list[NativeService] = []

    def run(name: str, api_port: int = 0) -> NativeService:
        service = compose_services[name]
        env = native_env(service, servers, tmp_path / f"{name}-data", api_port)
        (tmp_path / f"{name}-data").mkdir()
        native = NativeService(name, service, env, tmp_path)
        started.append(native)
        return native

    yield run
    for native in reversed(started):
        native.stop()


def kit_client(port: int, username: str, password: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=username,
                         protocol=mqtt.MQTTv311)
    client.username_pw_set(username, password)
    client.reconnect_delay_set(min_delay=1, max_delay=1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    wait_for(client.is_connected, what=f"kit {username} connected")
    return client


def test_bridge_control_and_rollup_run_in_production_with_only_what_compose_gives_them(
    servers: Servers, run_service: Any, compose_services: dict[str, dict[str, Any]],
) -> None:
    control_env = env_of(compose_services["control"])
    bridge_env = env_of(compose_services["bridge"])
    assert control_env["CIZO_ENV"] == bridge_env["CIZO_ENV"] == "production"
    api_port = services.free_port()
    control = run_service("control", api_port)
    bridge = run_service("bridge")
    api = f"http://127.0.0.1:{api_port}"

    def ready() -> bool:
        control.alive() and bridge.alive()
        try:
            return httpx.get(f"{api}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, timeout_s=60, interval_s=0.2, what="control ready")
    assert "refusing to start" not in control.output() + bridge.output()

    # the first kit, provisioned with the admin key compose gives control
    admin = {"Authorization": f"Bearer {control_env['CIZO_ADMIN_API_KEY']}"}
    kit_id = f"KIT-{int(time.time() * 1000) % 10**9}"
    created = httpx.post(f"{api}/v1/kits", headers=admin, timeout=10, json={
        "kit_id": kit_id, "phone": "+22890000001",
        "plan": {"deposit_fcfa": 5000, "daily_rate_fcfa": 200, "total_price_fcfa": 60000}})
    assert created.status_code == 201, created.text
    creds = created.json()
    add_broker_account(servers.passwd, creds["mqtt_username"], creds["mqtt_password"])
    assert servers.broker.proc is not None
    os.kill(servers.broker.proc.pid, signal.SIGHUP)  # Mosquitto reloads its password file

    # paho retries a refused login by itself: it gets in once the broker has reloaded
    kit = kit_client(servers.mqtt_port, creds["mqtt_username"], creds["mqtt_password"])
    try:
        an_hour_done = (int(time.time()) // 3600 - 1) * 3600 + 60  # the rollup sums it
        reading = {"v": 1, "kit_id": kit_id, "ts": an_hour_done, "seq": 1, "boot": 1,
                   "battery_v": 12.6, "soc": 81.0, "pv_w": 35.0, "load_w": 6.0,
                   "pv_wh_total": 1200.0, "load_wh_total": 640.0, "locked": False,
                   "credit_until": None, "temp_c": 31.0}
        kit.publish(protocol.status_topic(kit_id), json.dumps({"v": 1, "online": True}),
                    qos=1, retain=True).wait_for_publish(5)
        kit.publish(protocol.telemetry_topic(kit_id), json.dumps(reading),
                    qos=1).wait_for_publish(5)

        # the bridge wrote it with its own InfluxDB login into the database compose names
        influx = InfluxClient(f"http://127.0.0.1:{servers.influx_port}",
                              bridge_env["CIZO_INFLUX_DB"])
        with influx:
            wait_for(lambda: influx.last_telemetry(kit_id), timeout_s=20,
                     what="the reading in InfluxDB")

        # control saw the kit come online over MQTT and reads the reading back
        def detail() -> dict[str, Any] | None:
            control.alive()
            got = httpx.get(f"{api}/v1/kits/{kit_id}", headers=admin, timeout=5).json()
            return got if got["online"] and got["last_telemetry"] else None

        seen = wait_for(detail, timeout_s=20, interval_s=0.2, what="control sees the kit")
        assert seen is not None and seen["last_telemetry"]["soc"] == 81.0

        # the rollup service (started now: it runs at once) sums the hour into its tier
        rollup = run_service("rollup")
        hourly = InfluxClient(f"http://127.0.0.1:{servers.influx_port}",
                              f"{bridge_env['CIZO_INFLUX_DB']}_hourly")
        with hourly:
            def rolled_up() -> list[dict[str, Any]]:
                rollup.alive()
                try:
                    return hourly.query(f"SELECT * FROM kit_hourly WHERE kit_id = '{kit_id}'")
                except InfluxQueryError:  # the tier's database is not created yet
                    return []

            (row,) = wait_for(rolled_up, timeout_s=30, interval_s=0.2, what="hourly point")
        assert row["n"] == 1
        heartbeat = rollup.data_dir / "rollup.ok"
        wait_for(heartbeat.exists, what="the rollup service's heartbeat")
    finally:
        kit.loop_stop()
        kit.disconnect()


def test_production_refuses_what_compose_would_leave_out(
    servers: Servers, run_service: Any, compose_services: dict[str, dict[str, Any]],
) -> None:
    """The check above is only worth something if a missing setting stops the process:
    drop one production setting from compose's environment and control refuses, naming it."""
    del compose_services["control"]["environment"]["CIZO_SMS_GATEWAY_URL"]
    control = run_service("control", services.free_port())
    control.proc.wait(60)
    assert control.proc.returncode != 0
    assert "refusing to start with CIZO_ENV=production" in control.output()
    assert "CIZO_SMS_GATEWAY_URL" in control.output()
