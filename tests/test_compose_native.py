"""docker-compose.yml run for real, without a container engine.

Docker Compose v2's own CLI renders docker-compose.yml with a production .env; each of
our services (bridge, control, rollup) then runs natively with exactly the command and
environment compose gives its container (plus the image's ENV), production mode on,
against this test's real Mosquitto, influxd and PostgreSQL. The broker runs the way the
mosquitto service does: deploy/mosquitto/mosquitto.conf loaded by Debian's Mosquitto,
its dynamic-security file made by the mosquitto-init service's script, a kit TLS listener
whose key is owned as docs/deploy.md says, and no account but the admin until the control
service converges the broker. Only addresses are mapped: compose's service names, ports
and container paths to the test's. A setting production needs that compose does not give
makes a process refuse to start, and the test fail with its message.

Run as root (as the containers start), the init script chowns the dynamic-security file
and the broker drops to the ``mosquitto`` user before it loads the key, which belongs to
that user with mode 0400, exactly as in the image (uid 1883 there). Run as another user,
nobody can change owners: the key is 0400 and the broker's own user's, which checks the
modes and the mapped files but not the drop itself.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
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
from control.security import pki
from telemetry import STATUS_MEASUREMENT, InfluxClient
from telemetry.errors import InfluxQueryError
from tests.compose_support import ROOT, dockerfile_env, env_of, rendered_services
from tests.support import wait_for

pytestmark = pytest.mark.integration

CONTAINER_DATA_DIR = "/var/lib/cizo"
BROKER_USER = "mosquitto"  # eclipse-mosquitto's user (uid 1883); Debian's package has it too
AS_ROOT = os.getuid() == 0


@dataclass(frozen=True)
class Servers:
    """The test's servers, by the compose service name and port they stand in for."""

    mqtt_port: int
    tls_port: int  # the kits' listener, 8883 in compose
    ca: Path  # the test CA that signed the broker's certificate
    influx_port: int
    ledger_url: str  # a fresh PostgreSQL database
    broker: services.ManagedProcess

    def address(self, host: str, port: int) -> tuple[str, int] | None:
        return {("mosquitto", 1883): ("127.0.0.1", self.mqtt_port),
                ("influxdb", 8086): ("127.0.0.1", self.influx_port)}.get((host, port))


@pytest.fixture
def broker_root() -> Iterator[Path]:
    """The broker's volumes and certificates: outside pytest's tree, whose 0700 top
    directory the ``mosquitto`` user the broker drops to could not enter."""
    root = Path(tempfile.mkdtemp(prefix="cizo-compose-broker-"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root)


@pytest.fixture
def compose_services(tmp_path: Path, broker_root: Path) -> dict[str, dict[str, Any]]:
    return rendered_services(tmp_path, MQTT_TLS_DIR=str(broker_root / "certs"))


def host_mounts(service: dict[str, Any], volumes: Path) -> dict[str, Path]:
    """Container path -> host path for each of a service's mounts; a named volume is a
    directory under ``volumes``, shared by every service that mounts it."""
    mounts: dict[str, Path] = {}
    for mount in service.get("volumes") or []:
        host = Path(mount["source"])
        if mount["type"] == "volume":
            host = volumes / mount["source"]
            host.mkdir(parents=True, exist_ok=True)
        mounts[mount["target"]] = host
    return mounts


def on_host(text: str, mounts: dict[str, Path]) -> str:
    for target in sorted(mounts, key=len, reverse=True):
        text = text.replace(target, str(mounts[target]))
    return text


def broker_conf_on_host(conf: str, mounts: dict[str, Path], ports: dict[int, int]) -> str:
    """deploy/'s mosquitto.conf as Debian's Mosquitto can load it here: container paths to
    the mounts' host paths, the image's plugin path to Debian's, each listener's port to
    the test's (on 127.0.0.1). Everything else is kept as it is."""
    lines = []
    for line in conf.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if key == "listener":
            (port,) = value.split()  # every interface, inside the container
            line = f"listener {ports[int(port)]} 127.0.0.1"
        elif key == "plugin":
            assert Path(value).name == services.DYNSEC_PLUGIN, value
            line = f"plugin {services.find_dynsec_plugin()}"
        lines.append(on_host(line, mounts))
    unmapped = [ln for ln in lines if " /mosquitto" in ln]
    assert not unmapped, f"a container path the test does not map: {unmapped}"
    return "\n".join(lines) + "\n"


def conf_values(conf: str, key: str) -> list[str]:
    return [ln.split(None, 1)[1] for ln in conf.splitlines() if ln.split(None, 1)[:1] == [key]]


def write_tls_files(certs: Path, ca_dir: Path) -> Path:
    """A test CA and the broker's certificate, the key owned and moded as docs/deploy.md
    says (``chown 1883:1883 server.key && chmod 0400``; the crt 0444). Returns the CA."""
    ca = pki.make_ca("CIZO compose-check CA")
    crt, key = pki.make_server_cert(ca, ["127.0.0.1", "localhost"]).write(certs, "server")
    if AS_ROOT:
        broker_user = pwd.getpwnam(BROKER_USER)
        os.chown(key, broker_user.pw_uid, broker_user.pw_gid)
    key.chmod(0o400)
    crt.chmod(0o444)
    ca_crt, _ = ca.write(ca_dir, "ca")
    return ca_crt


def run_mosquitto_init(service: dict[str, Any], mounts: dict[str, Path],
                       dynsec_file: str) -> None:
    """The mosquitto-init service: its entrypoint and environment, its paths mapped; as
    root here when the containers' root would be."""
    argv = [on_host(arg, mounts) for arg in service["entrypoint"]]
    env = {"PATH": os.environ["PATH"], **env_of(service),
           "DYNSEC_FILE": on_host(dynsec_file, mounts)}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def the_images_entrypoint(mounts: dict[str, Path], service: dict[str, Any]) -> None:
    """eclipse-mosquitto's docker-entrypoint.sh: as root, ``chown -R mosquitto`` what it
    can under /mosquitto; read-only mounts (the certificates) stay as they are."""
    if not AS_ROOT:
        return
    broker_user = pwd.getpwnam(BROKER_USER)
    writable = [m["target"] for m in service["volumes"] if not m.get("read_only")]
    for target in writable:
        for path in [mounts[target], *mounts[target].rglob("*")]:
            os.chown(path, broker_user.pw_uid, broker_user.pw_gid)


def effective_uid(pid: int) -> int:
    uid_line = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if ln.startswith("Uid:"))
    return int(uid_line.split()[2])


def production_broker(compose_services: dict[str, dict[str, Any]], root: Path,
                      mqtt_port: int, tls_port: int) -> tuple[services.ManagedProcess, Path]:
    """The mosquitto-init and mosquitto services, natively (see the module's docstring)."""
    volumes = root / "volumes"
    mounts = host_mounts(compose_services["mosquitto"], volumes)
    init_mounts = host_mounts(compose_services["mosquitto-init"], volumes)
    conf = mounts["/mosquitto/config/mosquitto.conf"].read_text()
    # compose publishes the TLS listener, and only that one
    (published,) = compose_services["mosquitto"]["ports"]
    ports = {1883: mqtt_port, int(published["target"]): tls_port}
    ca = write_tls_files(mounts["/mosquitto/certs"], root / "ca")
    (dynsec_file,) = conf_values(conf, "plugin_opt_config_file")
    run_mosquitto_init(compose_services["mosquitto-init"], init_mounts, dynsec_file)
    the_images_entrypoint(mounts, compose_services["mosquitto"])
    native = root / "run"
    native.mkdir()
    native_conf = broker_conf_on_host(conf, mounts, ports)
    assert f"listener {tls_port} 127.0.0.1\nprotocol mqtt\ncertfile " in native_conf
    assert not conf_values(conf, "user"), "as root the broker drops to its default, mosquitto"
    (native / "mosquitto.conf").write_text(native_conf)
    return services.mosquitto_with_config(native, native / "mosquitto.conf", mqtt_port), ca


def assert_healthy(service: dict[str, Any], mqtt_port: int) -> None:
    """The service's compose healthcheck, which bridge and control wait for, run here:
    the broker answers and refuses an anonymous client."""
    kind, command = service["healthcheck"]["test"]
    assert kind == "CMD-SHELL" and "-p 1883 " in command
    # `docker compose config` writes a literal $ as $$, as in the compose file
    command = command.replace("$$", "$").replace("-p 1883 ", f"-p {mqtt_port} ")
    done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, f"mosquitto unhealthy: {command}\n{done.stdout}{done.stderr}"


@pytest.fixture
def servers(tmp_path: Path, broker_root: Path, pg_database: str,
            compose_services: dict[str, dict[str, Any]]) -> Iterator[Servers]:
    mqtt_port, tls_port = services.free_port(), services.free_port()
    broker, ca = production_broker(compose_services, broker_root, mqtt_port, tls_port)
    influxd = services.influxd(tmp_path / "influxd", services.free_port())
    with services.running(broker, influxd):
        assert services.wait_for_port(tls_port), broker.log_path.read_text()
        assert broker.proc is not None
        if AS_ROOT:  # it loaded the key after dropping to the image's user
            assert effective_uid(broker.proc.pid) == pwd.getpwnam(BROKER_USER).pw_uid
        assert_healthy(compose_services["mosquitto"], mqtt_port)
        yield Servers(mqtt_port, tls_port, ca, influxd.port, pg_database, broker)


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


def kit_client(servers: Servers, username: str, password: str) -> mqtt.Client:
    """A kit on the TLS listener, checking the broker's certificate against the test CA.
    Its client id is not its username: the listener replaces it with the username
    (use_username_as_clientid), without which its account, bound to client id = kit_id,
    would be refused."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"not-{username}",
                         protocol=mqtt.MQTTv311)
    client.tls_set(ca_certs=str(servers.ca))
    client.username_pw_set(username, password)
    client.reconnect_delay_set(min_delay=1, max_delay=1)
    client.connect("127.0.0.1", servers.tls_port)
    client.loop_start()
    wait_for(client.is_connected, what=f"kit {username} connected through TLS")
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
    assert creds["mqtt_username"] == kit_id

    # control gave the broker the kit's account when it provisioned it: no reload, no file
    kit = kit_client(servers, creds["mqtt_username"], creds["mqtt_password"])
    try:
        an_hour_done = (int(time.time()) // 3600 - 1) * 3600 + 60  # the rollup sums it
        reading = {"v": 1, "kit_id": kit_id, "ts": an_hour_done, "seq": 1, "boot": 1,
                   "battery_v": 12.6, "soc": 81.0, "pv_w": 35.0, "load_w": 6.0,
                   "pv_wh_total": 1200.0, "load_wh_total": 640.0, "locked": False,
                   "credit_until": None, "temp_c": 31.0}
        influx = InfluxClient(f"http://127.0.0.1:{servers.influx_port}",
                              bridge_env["CIZO_INFLUX_DB"])
        with influx:
            # The bridge's account exists once control has converged the broker, and the
            # bridge logs in at its next retry: a retained status reaches it whenever it
            # subscribes, so its arrival says the bridge listens (on a first start a reading
            # published before the bridge's first session has nobody to be queued for).
            kit.publish(protocol.status_topic(kit_id), json.dumps({"v": 1, "online": True}),
                        qos=1, retain=True).wait_for_publish(5)
            wait_for(lambda: influx.query(
                f"SELECT * FROM {STATUS_MEASUREMENT} WHERE kit_id = '{kit_id}'"),
                timeout_s=20, what="the kit's status in InfluxDB")
            kit.publish(protocol.telemetry_topic(kit_id), json.dumps(reading),
                        qos=1).wait_for_publish(5)
            # the bridge wrote it with its own InfluxDB login into the database compose names
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


def test_the_broker_stops_on_a_key_its_user_cannot_read(
    broker_root: Path, compose_services: dict[str, dict[str, Any]],
) -> None:
    """The ownership above is what makes the TLS listener load: with the key as openssl
    writes it (root's, 0600) the broker, run as root, has dropped to ``mosquitto`` before
    loading it and exits. Not as root, the key is made unreadable to its own owner."""
    broker, _ = production_broker(compose_services, broker_root, services.free_port(),
                                  services.free_port())
    key = broker_root / "certs" / "server.key"
    if AS_ROOT:
        os.chown(key, 0, 0)
        key.chmod(0o600)
    else:
        key.chmod(0o000)
    # run to its end (it opens its plain listener before it reads the key, so waiting for
    # a port would race); a broker that starts anyway runs on and times out
    done = subprocess.run(broker.argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode != 0
    assert "Unable to load server key file" in done.stdout + done.stderr
