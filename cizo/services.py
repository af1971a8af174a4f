"""Start real Mosquitto, influxd (and PostgreSQL) processes on chosen ports in a private
directory.

Used by ``cizo up`` (the local stack), by the test fixtures (the compose check with
deploy/'s mosquitto.conf) and by the benchmarks, so all three run exactly the same
servers. Each server is a child process that the caller stops; nothing here touches the
system-wide services.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

log = logging.getLogger(__name__)


class PortInUseError(RuntimeError):
    """A port we were asked to listen on is already taken."""

    def __init__(self, name: str, port: int) -> None:
        super().__init__(
            f"port {port} for {name} is already in use on 127.0.0.1 "
            f"(choose another with --{name}-port or CIZO_{name.upper()}_PORT)"
        )
        self.name = name
        self.port = port


class ServiceStartError(RuntimeError):
    """A server did not come up; the message carries the tail of its log."""


_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()
_rng = random.Random()  # seeded from os.urandom: parallel test processes start apart


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _listen_range() -> range:
    """Ports to listen on: outside the kernel's ephemeral range and above well-known services.

    A port the kernel gives out for ``bind(0)`` or an outgoing connection can be taken
    again by any client socket between the moment we pick it and the moment the server
    binds it; ports outside that range can only be taken by another listener.
    """
    low, high = _ephemeral_range()
    if low - 10_000 >= 2_000:
        return range(10_000, low)
    return range(high + 1, 65_536)


def free_port() -> int:
    """A port nobody listens on, never handed out twice by this process.

    Picking with ``bind(0)`` twice in a row (a broker, then an influxd) can return
    the same port, and the second server then finds it taken; CI once failed so.
    """
    candidates = _listen_range()
    with _handed_out_lock:
        for _ in range(1_000):
            port = _rng.choice(candidates)
            if port not in _handed_out and port_is_free(port):
                _handed_out.add(port)
                return port
    raise RuntimeError(f"no free port found in {candidates.start}-{candidates.stop - 1}")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def ensure_free(name: str, port: int) -> None:
    if not port_is_free(port):
        raise PortInUseError(name, port)


def wait_for_port(port: int, timeout_s: float = 15.0, host: str = "127.0.0.1") -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


def find_binary(name: str, *extra_dirs: str) -> str:
    found = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *extra_dirs]))
    if not found:
        raise ServiceStartError(
            f"{name} is not installed (Debian package: "
            f"{'mosquitto' if name.startswith('mosquitto') else 'influxdb'}); run scripts/bootstrap"
        )
    return found


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class ManagedProcess:
    """A server child process with its log file; restartable for fault tests."""

    name: str
    argv: list[str]
    port: int
    workdir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    env: dict[str, str] | None = field(default=None, repr=False)  # None: this process's

    def start(self, timeout_s: float = 20.0) -> None:
        ensure_free(self.name, self.port)
        log_fh = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=self.workdir,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=self.env,
        )
        log_fh.close()
        if not self._ready(timeout_s):
            self.kill()
            raise ServiceStartError(
                f"{self.name} did not start on port {self.port}:\n{_tail(self.log_path)}"
            )
        log.info("%s started", self.name, extra={"port": self.port, "pid": self.proc.pid})

    def _ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                return False
            if wait_for_port(self.port, timeout_s=0.2):
                return True
        return False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def crash(self) -> None:
        """SIGKILL the server and every process it started (its session's process group),
        as a power cut would: no clean shutdown, nothing flushed (fault tests)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass(frozen=True)
class Listener:
    """An extra Mosquitto listener: kits' TLS port, optionally with client certs.

    ``username_as_clientid`` makes the broker replace a client's id with its username, so
    a kit cannot take over another kit's session. With ``require_certificate`` and
    ``identity_as_username`` the certificate's CN is the username (no password).
    """

    port: int
    certfile: Path | None = None
    keyfile: Path | None = None
    cafile: Path | None = None
    require_certificate: bool = False
    identity_as_username: bool = False
    username_as_clientid: bool = False

    def lines(self) -> list[str]:
        out = [f"listener {self.port} 127.0.0.1"]
        if self.certfile is not None and self.keyfile is not None:
            out += [f"certfile {self.certfile}", f"keyfile {self.keyfile}",
                    "tls_version tlsv1.2"]
        if self.cafile is not None:
            out.append(f"cafile {self.cafile}")
        if self.require_certificate:
            out.append("require_certificate true")
        if self.identity_as_username:
            out.append("use_identity_as_username true")
        if self.username_as_clientid:
            out.append("use_username_as_clientid true")
        return out


def mosquitto_config(
    *,
    port: int,
    data_dir: Path,
    allow_anonymous: bool = True,
    max_inflight: int = 100,
    max_queued: int = 1_000_000,
    listeners: tuple[Listener, ...] = (),
    username_as_clientid: bool = False,
    dynsec_file: Path | None = None,
) -> str:
    """A mosquitto.conf for a private broker.

    ``max_inflight_messages`` and ``max_queued_messages`` are raised deliberately from
    Mosquitto's defaults (20 and 1000): with the defaults a backlog after a network
    outage is silently dropped beyond 1000 messages per client (docs/telemetry.md).
    ``dynsec_file``: clients, roles and ACLs from the dynamic-security plugin, kept in this
    file (made by ``dynsec_init``) and changed at run time over its control topic.
    """
    lines = [
        # run as the invoking user: as root, Mosquitto would otherwise drop to user
        # "mosquitto", which cannot write this private data dir (persistence would be lost)
        f"user {pwd.getpwuid(os.getuid()).pw_name}",
        "per_listener_settings false",
        f"listener {port} 127.0.0.1",
        *(["use_username_as_clientid true"] if username_as_clientid else []),
        f"allow_anonymous {'true' if allow_anonymous else 'false'}",
        "persistence true",
        f"persistence_location {data_dir}/",
        "autosave_interval 1",
        f"max_inflight_messages {max_inflight}",
        f"max_queued_messages {max_queued}",
        # per client, so a backlog of large messages is bounded by bytes too (256 MiB)
        "max_queued_bytes 268435456",
        "max_packet_size 65536",
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "connection_messages false",
    ]
    if dynsec_file is not None:
        lines += [f"plugin {find_dynsec_plugin()}", f"plugin_opt_config_file {dynsec_file}"]
    for extra in listeners:  # after the global options: listener options follow "listener"
        lines += extra.lines()
    return "\n".join(lines) + "\n"


DYNSEC_PLUGIN = "mosquitto_dynamic_security.so"
_PLUGIN_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib",
                "/usr/local/lib")


def find_dynsec_plugin() -> Path:
    """Mosquitto's dynamic-security plugin (Debian's mosquitto package ships it)."""
    for d in _PLUGIN_DIRS:
        if (Path(d) / DYNSEC_PLUGIN).exists():
            return Path(d) / DYNSEC_PLUGIN
    raise FileNotFoundError(f"{DYNSEC_PLUGIN} not found in {', '.join(_PLUGIN_DIRS)} "
                            "(install mosquitto); run scripts/bootstrap")


def dynsec_init(path: Path, admin_user: str, admin_password: str) -> bool:
    """Create the plugin's file with its admin user, once: an existing file is kept (it
    holds every client the control service created). Returns whether it was created."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    ctrl = find_binary("mosquitto_ctrl", "/usr/bin")
    subprocess.run([ctrl, "dynsec", "init", str(path), admin_user, admin_password],
                   check=True, capture_output=True)
    path.chmod(0o600)
    return True


def mosquitto(workdir: Path, port: int, **config: object) -> ManagedProcess:
    """A private Mosquitto on ``port`` keeping its state under ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    conf = workdir / "mosquitto.conf"
    conf.write_text(mosquitto_config(port=port, data_dir=data, **config))  # type: ignore[arg-type]
    return mosquitto_with_config(workdir, conf, port)


def mosquitto_with_config(workdir: Path, conf: Path, port: int) -> ManagedProcess:
    """Mosquitto reading the configuration file ``conf`` (``mosquitto`` writes one; the
    compose check gives it deploy/'s, its paths and ports mapped), ready once ``port``
    listens; its log in ``workdir``."""
    binary = find_binary("mosquitto", "/usr/sbin")
    argv = [binary, "-c", str(conf)]
    return ManagedProcess("mqtt", argv, port, workdir, workdir / "mosquitto.log")


def mosquitto_with_doors(workdir: Path, port: int, *, admin_user: str, admin_password: str,
                         **config: object) -> ManagedProcess:
    """A private Mosquitto as production runs it: no anonymous clients, every account in
    the dynamic-security plugin (its file ``workdir/dynamic-security.json``, made once
    with the admin user), client id = username on its listener."""
    dynsec = workdir / "dynamic-security.json"
    dynsec_init(dynsec, admin_user, admin_password)
    return mosquitto(workdir, port, allow_anonymous=False, username_as_clientid=True,
                     dynsec_file=dynsec, **config)


def influxd_config(*, port: int, rpc_port: int, data_dir: Path) -> str:
    """influxd 1.x configuration for a private server.

    ``max-values-per-tag = 0``: the 1.x default (100,000) would refuse writes once more
    than 100,000 kits report, since ``kit_id`` is a tag (docs/telemetry.md).
    """
    return f"""reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{data_dir}/meta"

[data]
  dir = "{data_dir}/data"
  wal-dir = "{data_dir}/wal"
  query-log-enabled = false
  max-values-per-tag = 0
  max-series-per-database = 0

[monitor]
  store-enabled = false

[http]
  bind-address = "127.0.0.1:{port}"
  log-enabled = false
  max-body-size = 0

[continuous_queries]
  enabled = false
"""


@dataclass
class InfluxProcess(ManagedProcess):
    def _ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.port}/ping"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                return False
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=0.5).status_code == 204:
                    return True
            time.sleep(0.1)
        return False


def influxd(workdir: Path, port: int, rpc_port: int | None = None) -> InfluxProcess:
    """A private influxd 1.x on ``port`` keeping its data under ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "influxdb.conf"
    conf.write_text(
        influxd_config(port=port, rpc_port=rpc_port or free_port(), data_dir=workdir)
    )
    binary = find_binary("influxd", "/usr/bin")
    argv = [binary, "-config", str(conf)]
    return InfluxProcess("influx", argv, port, workdir, workdir / "influxd.log")


def _postgres_bin_dir() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if not found:
        raise ServiceStartError("PostgreSQL is not installed (Debian package: postgresql)")
    return found[-1].parent


@dataclass
class PostgresProcess(ManagedProcess):
    """Ready once it accepts connections (it listens before recovery is over)."""

    bindir: Path = Path("/usr/bin")

    def _ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                return False
            probe = subprocess.run([str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1",
                                    "-p", str(self.port), "-t", "1"], check=False)
            if probe.returncode == 0:
                return True
            time.sleep(0.1)
        return False


def postgres(workdir: Path, port: int) -> PostgresProcess:
    """A private PostgreSQL cluster on ``port`` (trust auth, user ``postgres``), created with
    initdb under ``workdir`` the first time: a server a fault test may SIGKILL, never the
    shared one. As root it runs as the ``postgres`` user (PostgreSQL refuses root)."""
    bindir = _postgres_bin_dir()
    data = workdir / "data"
    as_user: list[str] = []
    if os.getuid() == 0:
        as_user = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
    workdir.mkdir(parents=True, exist_ok=True)
    if os.getuid() == 0:
        shutil.chown(workdir, "postgres", "postgres")
    if not (data / "PG_VERSION").exists():
        made = subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A",
                               "trust", "-U", "postgres", "--no-sync"],
                              check=False, capture_output=True, text=True)
        if made.returncode != 0:
            raise ServiceStartError(f"initdb failed in {workdir} (as root, every directory "
                                    f"above it must be open to user postgres):\n"
                                    f"{made.stderr[-2000:]}")
    argv = [*as_user, str(bindir / "postgres"), "-D", str(data), "-p", str(port),
            "-k", str(workdir), "-c", "listen_addresses=127.0.0.1",
            "-c", "max_connections=300", "-c", "logging_collector=off"]
    return PostgresProcess("postgres", argv, port, workdir, workdir / "postgres.log",
                           bindir=bindir)


@contextlib.contextmanager
def running(*procs: ManagedProcess) -> Iterator[None]:
    """Start each process in order; stop them all in reverse order on exit."""
    started: list[ManagedProcess] = []
    try:
        for p in procs:
            p.start()
            started.append(p)
        yield
    finally:
        for p in reversed(started):
            p.stop()
