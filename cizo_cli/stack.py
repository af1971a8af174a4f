"""``cizo up``: the whole platform on one machine, with a simulated fleet.

Starts, in order: Mosquitto and influxd (private instances under the data directory),
the PayGate simulator, the bridge, the control service; provisions the simulated kits
through the API; starts the fleet simulator and a stream of simulated customer
payments. Ctrl-C (or SIGTERM) stops every process it started, newest first.

The broker listens twice: plain MQTT, and TLS with a certificate from a local CA that
``cizo up`` generates into ``<data dir>/tls/`` on first start (``ca.crt`` is what a kit or
client must trust; ``--fleet-tls`` sends the simulated fleet through it). Both listeners
have the same doors.

The broker has the production doors: anonymous clients are refused, the client id is
the username, and Mosquitto's dynamic-security plugin holds the accounts, which the
ledger drives (control/security/broker_auth.py): the stack reconciles it once at start
(the bridge's and control's accounts, passwords generated into the data directory), and
the control service then opens each kit's door when it is provisioned and keeps the
broker reconciled.
"""

from __future__ import annotations

import json
import logging
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cizo import services
from cizo.production import development_secret_key, development_token
from cizo.settings import Settings
from control.cli.words import say

if TYPE_CHECKING:
    from cizo_cli.history import HistoryOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StackOptions:
    mqtt_port: int
    api_port: int
    influx_port: int
    paygate_port: int
    momo_port: int
    kits: int
    data_dir: Path
    fresh: bool = False
    pay_every_s: float = 15.0
    mqtt_tls_port: int = 18883
    fleet_tls: bool = False  # the simulated fleet connects through the TLS listener
    history: HistoryOptions | None = None  # a first start's simulated week (None: none)


# tunables a developer may override from the environment when running the local stack
DEV_DEFAULTS = {
    "CIZO_PAYGATE_AUTH_TOKEN": "dev-paygate-token",
    "CIZO_SWEEP_INTERVAL_S": "2",
    "CIZO_SIM_TELEMETRY_INTERVAL_S": "10",
    # rollups and analytics once at start: the dashboard has every figure at first open
    "CIZO_ANALYTICS_AT_START": "1",
    # the fleet page's figures at most 15 s old: the live fleet shows online within that
    "CIZO_FLEET_SUMMARY_INTERVAL_S": "15",
    # the first start's week of history has a reading an hour per kit
    # (history_telemetry_interval_s): no telemetry gap on every kit's timeline for it
    "CIZO_KIT_REPORT_INTERVAL_S": "3600",
}
# the simulated kits' plan: 5,000 FCFA down, 100 FCFA a day for a year
SIM_PLAN = {"deposit_fcfa": 5000, "daily_rate_fcfa": 100, "total_price_fcfa": 5000 + 365 * 100}


class StackError(RuntimeError):
    pass


def _persistent_secret(path: Path, make: str) -> str:
    """Development secrets survive restarts of the local stack (never used in production)."""
    if path.exists():
        return path.read_text().strip()
    path.write_text(make + "\n")
    path.chmod(0o600)
    return make


@dataclass(frozen=True)
class BrokerTls:
    """The local stack's TLS material: a CA and the broker's certificate, under ``dir``."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def cert(self) -> Path:
        return self.dir / "server.crt"

    @property
    def key(self) -> Path:
        return self.dir / "server.key"

    def ensure(self) -> BrokerTls:
        """Generate the CA and a server certificate for 127.0.0.1/localhost on first start;
        kept afterwards, so clients that trust ``ca.crt`` keep trusting the broker."""
        from control.security.pki import make_ca, make_server_cert

        if self.ca.exists() and self.cert.exists() and self.key.exists():
            return self
        ca = make_ca("CIZO local stack CA")
        ca.write(self.dir, "ca")
        make_server_cert(ca, ["127.0.0.1", "localhost"]).write(self.dir, "server")
        log.info("TLS: generated a local CA and broker certificate in %s", self.dir)
        return self


def mqtt_login_accepted(port: int, username: str | None, password: str | None,
                        timeout_s: float = 5.0, *, tls_ca: Path | None = None) -> bool | None:
    """Whether the broker accepts this login: True/False from its CONNACK, None if none came
    (``tls_ca``: over TLS, trusting that CA)."""
    verdict: list[bool] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2,
                         client_id=f"cizo-up-probe-{secrets.token_hex(4)}")
    if tls_ca is not None:
        client.tls_set(ca_certs=str(tls_ca))
    if username is not None:
        client.username_pw_set(username, password)

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: object,
                   _p: object) -> None:
        verdict.append(not getattr(reason, "is_failure", True))
        done.set()

    client.on_connect = on_connect
    try:
        client.connect("127.0.0.1", port)
    except OSError:
        return None
    client.loop_start()
    try:
        done.wait(timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    return verdict[0] if verdict else None


class Stack:
    def __init__(self, opts: StackOptions) -> None:
        self.opts = opts
        self.dir = opts.data_dir.resolve()
        self.procs: list[services.ManagedProcess] = []
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.stopping = threading.Event()
        self.broker_dir = self.dir / "mosquitto"
        self.tls = BrokerTls(self.dir / "tls")

    # --- environment shared by every child ------------------------------------------

    def env(self) -> dict[str, str]:
        admin_key = os.environ.get("CIZO_ADMIN_API_KEY") or _persistent_secret(
            self.dir / "admin_api_key", development_token())
        secret_key = os.environ.get("CIZO_SECRET_KEY") or _persistent_secret(
            self.dir / "secret_key", development_secret_key())
        o = self.opts
        env = {k: v for k, v in os.environ.items() if not k.startswith("CIZO_")}
        env.update({
            "CIZO_MQTT_HOST": "127.0.0.1",
            "CIZO_MQTT_PORT": str(o.mqtt_port),
            "CIZO_INFLUX_URL": f"http://127.0.0.1:{o.influx_port}",
            "CIZO_INFLUX_DB": "cizo",
            "CIZO_DATABASE_URL": os.environ.get(
                "CIZO_DATABASE_URL", f"sqlite:///{self.dir / 'ledger.db'}"),
            "CIZO_API_HOST": "127.0.0.1",
            "CIZO_API_PORT": str(o.api_port),
            "CIZO_ADMIN_API_KEY": admin_key,
            "CIZO_SECRET_KEY": secret_key,
            "CIZO_PAYGATE_URL": f"http://127.0.0.1:{o.paygate_port}",
            "CIZO_MOMO_URL": f"http://127.0.0.1:{o.momo_port}",  # MoMo simulator
            # the broker's admin and service accounts (control converges the broker)
            **{f"CIZO_BROKER_{role.upper()}_PASSWORD": pw
               for role, pw in self.broker_passwords().items()},
        })
        for name, default in DEV_DEFAULTS.items():
            env[name] = os.environ.get(name, default)
        return env

    # --- broker credentials ---------------------------------------------------------

    def broker_passwords(self) -> dict[str, str]:
        """The broker's admin, bridge and control passwords, generated once into the data
        dir (development only: production takes them from its secret store)."""
        return {role: _persistent_secret(self.dir / f"broker_{role}_password",
                                         development_token())
                for role in ("admin", "bridge", "control")}

    def broker_settings(self, env: dict[str, str]) -> Settings:
        return Settings(
            mqtt_port=self.opts.mqtt_port, database_url=env["CIZO_DATABASE_URL"],
            broker_admin_password=env["CIZO_BROKER_ADMIN_PASSWORD"],
            broker_bridge_password=env["CIZO_BROKER_BRIDGE_PASSWORD"],
            broker_control_password=env["CIZO_BROKER_CONTROL_PASSWORD"])

    def reconcile_broker(self, settings: Settings, secret_key: str) -> None:
        """The service accounts and every kit of an earlier run, before anyone connects."""
        from control.gateways.broker_admin import BrokerAdminError
        from control.ledger.db import Database
        from control.ledger.secrets import SecretBox
        from control.security.broker_auth import BrokerDoors

        db = Database(settings.database_url)
        try:
            outcome = BrokerDoors(settings, db, SecretBox(secret_key)).reconcile()
        except BrokerAdminError as exc:
            raise StackError(f"{exc} (the admin password is in {self.dir}; a fresh start: "
                             "--fresh)") from exc
        finally:
            db.dispose()
        if outcome.failed:
            raise StackError(f"the broker refused {len(outcome.failed)} accounts "
                             f"(see {self.broker_dir / 'mosquitto.log'})")

    def wait_kit_login(self, fleet: Path, timeout_s: float = 20) -> None:
        """A provisioned kit's login is accepted before the fleet starts."""
        kit = json.loads(fleet.read_text())[0]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if mqtt_login_accepted(self.opts.mqtt_port, kit["mqtt_username"],
                                   kit["mqtt_password"], timeout_s=2):
                return
            time.sleep(0.2)
        raise StackError(f"the broker refused kit {kit['kit_id']} after its provisioning "
                         f"(see {self.broker_dir / 'mosquitto.log'})")

    # --- lifecycle ------------------------------------------------------------------

    def check_ports(self) -> None:
        o = self.opts
        ports = {"mqtt": o.mqtt_port, "mqtt-tls": o.mqtt_tls_port, "api": o.api_port,
                 "influx": o.influx_port, "paygate": o.paygate_port, "momo": o.momo_port}
        taken = [f"{name} port {port}" for name, port in ports.items()
                 if not services.port_is_free(port)]
        if taken:
            raise StackError(
                "already in use on 127.0.0.1: " + ", ".join(taken)
                + " (choose others with " + "/".join(f"--{n}-port" for n in ports)
                + " or " + "/".join(f"CIZO_{n.upper()}_PORT" for n in ports) + ")"
            )

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log_path = self.dir / "logs" / f"{name}.log"
        with log_path.open("ab") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "cizo_cli", *args], env=env, stdout=fh,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.children.append((name, proc))
        return proc

    def start(self) -> dict[str, str]:
        o = self.opts
        if o.fresh and self.dir.exists():
            shutil.rmtree(self.dir)
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        self.check_ports()
        env = self.env()

        from control.ledger.db import migrate
        from control.security.broker_auth import BRIDGE_USER, CONTROL_USER

        migrate(env["CIZO_DATABASE_URL"])
        broker = self.broker_settings(env)
        assert broker.broker_admin_password is not None
        tls = self.tls.ensure()
        mqtt = services.mosquitto_with_doors(
            self.broker_dir, o.mqtt_port, admin_user=broker.broker_admin_username,
            admin_password=broker.broker_admin_password.get_secret_value(),
            # the kits' TLS door: the same accounts, and the client id is the username
            listeners=(services.Listener(o.mqtt_tls_port, certfile=tls.cert, keyfile=tls.key,
                                         username_as_clientid=True),))
        influx = services.influxd(self.dir / "influxdb", o.influx_port)
        for p in (mqtt, influx):
            p.start()
            self.procs.append(p)
        self.reconcile_broker(broker, env["CIZO_SECRET_KEY"])
        api = f"http://127.0.0.1:{o.api_port}"
        logins = {name: {**env, "CIZO_MQTT_USERNAME": user,
                         "CIZO_MQTT_PASSWORD": env[f"CIZO_BROKER_{name.upper()}_PASSWORD"]}
                  for name, user in (("bridge", BRIDGE_USER), ("control", CONTROL_USER))}
        # the bridge first: the history's readings go through it
        self.spawn("bridge", ["bridge"], logins["bridge"])
        if self.history_due():
            self.play_history(logins["control"])
        self.spawn("paygate-sim", ["paygate-sim", "--port", str(o.paygate_port),
                                   "--callback-url", f"{api}/v1/payments/paygate"], env)
        self.spawn("momo-sim", ["momo-sim", "--port", str(o.momo_port)], env)
        self.spawn("control", ["control"], logins["control"])
        self.wait_http(f"{api}/readyz", "control", timeout_s=60)
        self.wait_http(f"http://127.0.0.1:{o.paygate_port}/_sim/transactions", "paygate-sim")
        self.wait_http(f"http://127.0.0.1:{o.momo_port}/_sim/transactions", "momo-sim")
        fleet = self.provision(api, env["CIZO_ADMIN_API_KEY"])
        if fleet is not None:
            self.wait_kit_login(fleet)
            self.spawn("sim", ["sim", "--fleet", str(fleet)], self.fleet_env(env))
        return env

    def history_due(self) -> bool:
        """Only on a fresh state: kits provisioned by an earlier run have no past week."""
        h = self.opts.history
        return (h is not None and h.days > 0 and self.opts.kits > 0
                and not (self.dir / "fleet.json").exists())

    def play_history(self, control_env: dict[str, str]) -> None:
        """A simulated week before the fleet goes live (cizo_cli/history.py); its summary
        is kept in history.json."""
        from cizo_cli import history
        from firmware_sim.scenario import PlanSpec

        opts = self.opts
        assert opts.history is not None
        print(say("cizo up: playing {days} simulated days of history for {kits} kits "
                  "(about {seconds} s)...", days=f"{opts.history.days:g}", kits=opts.kits,
                  seconds=f"{opts.history.real_s:.0f}"), flush=True)
        fleet = self.fleet_env(control_env)
        tls_ca = self.tls.ca if opts.fleet_tls else None
        try:
            result = history.play(
                opts.history, env=control_env, data_dir=self.dir,
                mqtt_port=int(fleet["CIZO_MQTT_PORT"]), kits=opts.kits,
                plan=PlanSpec(**SIM_PLAN), tls_ca=tls_ca,
                provision=lambda api: self.provision(api, control_env["CIZO_ADMIN_API_KEY"])
                or self.dir / "fleet.json")
        except Exception as exc:
            raise StackError(f"the history run failed: {exc!r} "
                             f"(see {self.dir / 'logs' / 'history.log'})") from exc
        s = result.summary
        (self.dir / "history.json").write_text(json.dumps({
            "start": result.start, "end": result.end, "real_s": round(result.real_s, 1),
            "summary": s.as_dict()}, indent=1))
        print(say("cizo up: history played in {seconds} s: {readings} readings, "
                  "{payments} payments, {commands} commands applied",
                  seconds=f"{result.real_s:.0f}", readings=s.telemetry_sent,
                  payments=s.payments_made, commands=s.commands_applied), flush=True)

    def fleet_env(self, env: dict[str, str]) -> dict[str, str]:
        """The simulated fleet's environment: through the TLS listener if asked."""
        if not self.opts.fleet_tls:
            return env
        return {**env, "CIZO_MQTT_PORT": str(self.opts.mqtt_tls_port),
                "CIZO_MQTT_TLS_CA": str(self.tls.ca)}

    def wait_http(self, url: str, name: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_children()
            try:
                if httpx.get(url, timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise StackError(f"{name} did not answer at {url} within {timeout_s:.0f} s "
                         f"(see {self.dir / 'logs' / (name + '.log')})")

    def check_children(self) -> None:
        for name, proc in self.children:
            if proc.poll() is not None:
                raise StackError(f"{name} exited with code {proc.returncode} "
                                 f"(see {self.dir / 'logs' / (name + '.log')})")

    def provision(self, api: str, admin_key: str) -> Path | None:
        """Provision the simulated kits once; their credentials go to fleet.json."""
        fleet_file = self.dir / "fleet.json"
        if self.opts.kits <= 0:
            return None
        if fleet_file.exists():
            return fleet_file
        headers = {"Authorization": f"Bearer {admin_key}"}
        kits = []
        rng = random.Random(42)
        with httpx.Client(base_url=api, headers=headers, timeout=10) as client:
            for i in range(self.opts.kits):
                kit_id = f"SIM{i + 1:05d}"
                phone = f"+2289{rng.randrange(10**7):07d}"
                r = client.post("/v1/kits", json={
                    "kit_id": kit_id,
                    "phone": phone,
                    "plan": SIM_PLAN,
                })
                if r.status_code != 201:
                    raise StackError(f"provisioning {kit_id} failed: {r.status_code} {r.text}")
                body = r.json()
                creds = ("kit_id", "mqtt_username", "mqtt_password", "command_secret")
                kits.append({k: body[k] for k in creds} | {"phone": phone})
        fleet_file.write_text(json.dumps(kits, indent=1))
        fleet_file.chmod(0o600)
        return fleet_file

    def customers(self, api: str, admin_key: str) -> None:
        """Simulated customers: now and then one pays a few days through PayGate."""
        fleet_file = self.dir / "fleet.json"
        if self.opts.pay_every_s <= 0 or not fleet_file.exists():
            return
        kits = json.loads(fleet_file.read_text())
        rng = random.Random()
        headers = {"Authorization": f"Bearer {admin_key}"}
        with httpx.Client(base_url=api, headers=headers, timeout=10) as client:
            while not self.stopping.wait(self.opts.pay_every_s):
                kit = rng.choice(kits)
                try:
                    client.post("/v1/payments/intents", json={
                        "kit_id": kit["kit_id"], "amount_fcfa": rng.choice([100, 300, 700]),
                        "phone": kit["phone"],
                        "network": rng.choice(["FLOOZ", "TMONEY"]),
                    })
                except httpx.HTTPError as exc:
                    log.warning("simulated payment failed: %s", exc)

    def stop(self) -> None:
        self.stopping.set()
        for _name, proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in reversed(self.children):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", name)
                proc.kill()
                proc.wait()
        for p in reversed(self.procs):
            p.stop()


def run_stack(opts: StackOptions) -> int:
    stack = Stack(opts)

    def _stop(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    # also when started in the background of a script, where SIGINT comes in ignored:
    # "Press Ctrl-C to stop" (or kill -INT) must always stop everything
    signal.signal(signal.SIGINT, _stop)
    try:
        env = stack.start()
        api = f"http://127.0.0.1:{opts.api_port}"
        admin_key_source = (
            "$CIZO_ADMIN_API_KEY" if os.environ.get("CIZO_ADMIN_API_KEY")
            else say("in {path}", path=stack.dir / "admin_api_key")
        )
        print("\n" + say(
            "CIZO stack is up\n"
            "  API        {api}/v1   (docs {api}/docs)\n"
            "  dashboard  {api}/dashboard\n"
            "  broker     mqtt://127.0.0.1:{mqtt_port}\n"
            "             mqtts://127.0.0.1:{mqtt_tls_port}  (CA {ca})\n"
            "  fleet link {link}\n"
            "  influxdb   http://127.0.0.1:{influx_port}  (database cizo)\n"
            "  paygate    http://127.0.0.1:{paygate_port}  (simulator; MTN MoMo on "
            "{momo_port})\n"
            "  fleet      {kits} simulated kits\n"
            "  admin key  {admin_key}\n"
            "  logs       {logs}\n"
            "Press Ctrl-C to stop.",
            api=api, mqtt_port=opts.mqtt_port, mqtt_tls_port=opts.mqtt_tls_port,
            ca=stack.tls.ca, link="TLS" if opts.fleet_tls else say("plain"),
            influx_port=opts.influx_port, paygate_port=opts.paygate_port,
            momo_port=opts.momo_port, kits=opts.kits, admin_key=admin_key_source,
            logs=stack.dir / "logs"), flush=True)
        payer = threading.Thread(target=stack.customers, args=(api, env["CIZO_ADMIN_API_KEY"]),
                                 name="customers", daemon=True)
        payer.start()
        while True:
            stack.check_children()
            time.sleep(1)
    except KeyboardInterrupt:
        print("\n" + say("stopping..."), flush=True)
        return 0
    except (StackError, services.PortInUseError, services.ServiceStartError) as exc:
        print(f"cizo up: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        stack.stop()
        print(say("stopped every process cizo up started"), flush=True)
