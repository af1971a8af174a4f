"""The chaos month's platform and its schedule of kills (docs/chaos.md).

``ChaosRun`` starts every component as its own process through ``cizo.services``
(``ManagedProcess``: Mosquitto, influxd, a private PostgreSQL cluster, two control
processes, two bridges on one ``$share`` group, the PayGate and MTN MoMo simulators with
their fault modes on), a round-robin proxy in front of the control API, and a simulated
fleet (``firmware_sim.driver.FleetDriver``) on one shared accelerated clock. While the month
runs, a seeded ``schedule`` SIGKILLs components (the whole process group: a power cut) and
restarts them after a short outage. When the month is over every component is up again;
``checks.verify`` then compares what the simulators and the kits did with what the ledger
and InfluxDB hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

from cizo import compact, services
from cizo.settings import Settings
from control.ledger.db import migrate
from control.ledger.secrets import generate_secret_key
from firmware_sim.customers import PaymentOptions
from firmware_sim.driven_kit import DrivenKit
from firmware_sim.driver import FleetDriver
from firmware_sim.scenario import (
    KeypadSpec,
    NetworkSpec,
    PlanSpec,
    ProtocolSpec,
    Scenario,
    build_plan,
)
from tests.chaos import checks
from tests.chaos.proxy import RoundRobinProxy
from tests.chaos.shared_clock import SharedClock
from tests.fleet_support import kit_mismatches, provision_fleet

log = logging.getLogger(__name__)

ADMIN_KEY = "chaos-admin-key-0123456789abcdef"
PAYGATE_TOKEN = "chaos-paygate-token"
RESEND_AFTER_S = 6 * 3_600  # the control processes' re-send delay (simulated seconds)
PAY_BACKLOG_S = 1_200.0  # at most this long for the customers' payments due by the end
HEAL_STEPS = 4  # at the end, at most this many re-send delays pass for the kits to agree
# the control processes' default (the chaos run does not set it)
POLL_BACKOFF_MAX_S = float(Settings.model_fields["payment_poll_max_backoff_s"].default)
# a reading the broker acknowledged this long before its SIGKILL may not be saved yet
# (Mosquitto's ``autosave_interval 1``, plus the time a save takes under load)
BROKER_UNSAVED_S = 2.0
SUBSCRIBE_MARGIN_S = 0.5  # from a bridge's CONNACK to its SUBACK, on a loaded machine
# Real seconds before a bridge saw the broker go that its replay request reaches back:
# Mosquitto's unsaved acknowledgements (BROKER_UNSAVED_S) and the time to notice the loss.
REPLAY_MARGIN_REAL_S = 5.0
KINDS = ("mosquitto", "influxd", "postgres", "control", "bridge", "paygate", "momo")
# the simulators' fault modes: slow, failing and hanging status calls, duplicated and
# late (out-of-order) callbacks, PayGate's drifting formats
SIM_FAULTS: dict[str, dict[str, Any]] = {
    "paygate": {"duplicate_callbacks": 1, "redeliver_fraction": 0.2, "status_latency_s": 0.02,
                "status_error_rate": 0.05, "status_timeout_rate": 0.01, "status_hang_s": 3.0,
                "format_drift": True, "approve_after_s": 0.3},
    "momo": {"duplicate_callbacks": 1, "redeliver_fraction": 0.2, "status_latency_s": 0.02,
             "status_error_rate": 0.05, "status_timeout_rate": 0.01, "status_hang_s": 3.0,
             "approve_after_s": 0.3},
}


@dataclass(frozen=True)
class ChaosConfig:
    kits: int = 500
    days: int = 30
    month_real_s: float = 360.0  # how long the simulated month takes on the wall clock
    kills: int = 36
    seed: int = 2026
    keypad_share: float = 0.1
    v2_share: float = 0.2  # kits provisioned with kit contract v2 (docs/protocol.md)
    momo_share: float = 0.3
    telemetry_interval_h: float = 6.0
    down_s: tuple[float, float] = (0.5, 4.0)  # how long a killed component stays down
    settle_s: float = 240.0  # after the month: at most this long for everything to agree


@dataclass(frozen=True)
class Kill:
    at_s: float  # real seconds after the month starts
    target: str  # component name (control-a, bridge-b, postgres, ...)
    down_s: float


def schedule(cfg: ChaosConfig, targets: list[str]) -> list[Kill]:
    """The seeded kills: every component at least once, the rest drawn at random, spread
    over the month (not in its first or last twentieth)."""
    rng = random.Random(f"{cfg.seed}:chaos")
    names = list(targets) + [rng.choice(targets) for _ in range(max(0, cfg.kills - len(targets)))]
    rng.shuffle(names)
    span = cfg.month_real_s
    times = sorted(rng.uniform(0.05 * span, 0.92 * span) for _ in names)
    return [Kill(t, n, rng.uniform(*cfg.down_s)) for t, n in zip(times, names, strict=True)]


@dataclass
class Component:
    name: str
    kind: str
    proc: services.ManagedProcess
    kills: int = 0
    restarts: int = 0
    down_since: float | None = None


class ChaosRun:
    """The platform of a chaos month, its fleet and its kills."""

    def __init__(self, cfg: ChaosConfig, workdir: Path,
                 say: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.dir = workdir
        self.say = say
        self.components: dict[str, Component] = {}
        self.kill_log: list[dict[str, Any]] = []
        self.proxy: RoundRobinProxy | None = None
        self.pg_dir: Path | None = None
        self.scenario = Scenario(
            name="chaos", kits=cfg.kits, kit_id_prefix="CH-", days=cfg.days,
            speed=cfg.days * 86_400 / cfg.month_real_s,
            telemetry_interval_s=cfg.telemetry_interval_h * 3_600, keepalive_s=30,
            drift_ppm=30,
            payments={"daily": 0.1, "weekly": 0.35, "late": 0.2, "stops": 0.15, "early": 0.1,
                      "never": 0.1},
            plan=PlanSpec(deposit_fcfa=2_000, daily_rate_fcfa=100, total_price_fcfa=6_000),
            network=NetworkSpec(drop_rate_per_day=0.1, outage_s=(1_800, 6 * 3_600),
                                reconnect_base_s=0.2, reconnect_cap_s=3.0),
            keypad=KeypadSpec(share=cfg.keypad_share, with_mqtt=0.5, delay_h=(0.5, 6.0),
                              source="receipt"),
            protocols=ProtocolSpec(v2_share=cfg.v2_share),
        )
        self.plan = build_plan(self.scenario, cfg.seed)
        self.clock: SharedClock | None = None
        self.driver: FleetDriver | None = None
        self.ports: dict[str, int] = {}
        self.database_url = ""
        self.notify_file = self.dir / "sms.jsonl"
        self._stop_chaos = threading.Event()
        self.sent: dict[str, dict[int, float]] = {}  # kit -> reading ts -> first sent
        # each Mosquitto outage (monotonic): from its kill until a bridge subscribed again
        self.broker_outages: list[list[float]] = []
        self._bridges_at_kill: dict[str, tuple[int, bool, int]] = {}
        self.time_advanced_s = 0.0  # simulated time let pass at the end (re-sends)

    # --- the platform -------------------------------------------------------------------

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.clock = SharedClock.create(self.dir / "clock.json", self.scenario.start_ts,
                                        self.scenario.speed, paused=True)
        names = ("postgres", "mqtt", "influx", "influx_rpc", "paygate", "momo", "api",
                 "control-a", "control-b", "bridge-a", "bridge-b")
        self.ports = {n: services.free_port() for n in names}
        # its own directory under /tmp: as root, the server runs as user postgres, who may
        # not enter the run's directory (pytest's tmp_path is private to root)
        self.pg_dir = Path(tempfile.mkdtemp(prefix="cizo-chaos-pg-"))
        pg = services.postgres(self.pg_dir, self.ports["postgres"])
        self._add("postgres", "postgres", pg)
        admin = f"postgresql://postgres@127.0.0.1:{self.ports['postgres']}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE cizo")
        self.database_url = \
            f"postgresql+psycopg://postgres@127.0.0.1:{self.ports['postgres']}/cizo"
        migrate(self.database_url)
        self._add("mosquitto", "mosquitto",
                  services.mosquitto(self.dir / "mosquitto", self.ports["mqtt"]))
        self._add("influxd", "influxd", services.influxd(
            self.dir / "influxdb", self.ports["influx"], self.ports["influx_rpc"]))
        httpx.post(f"http://127.0.0.1:{self.ports['influx']}/query",
                   params={"q": "CREATE DATABASE cizo"}).raise_for_status()
        self.proxy = RoundRobinProxy(self.ports["api"],
                                     [self.ports["control-a"], self.ports["control-b"]])
        self.proxy.start()
        env = self.env()
        for sim in ("paygate", "momo"):
            self._add(sim, sim, self._child(sim, sim, self.ports[sim], {
                **env, "CHAOS_SIM_PORT": str(self.ports[sim]),
                "CHAOS_SIM_JOURNAL": str(self.dir / f"{sim}.journal"),
                "CHAOS_SIM_SEED": str(self.cfg.seed),
                "CHAOS_SIM_FAULTS": json.dumps(SIM_FAULTS[sim]),
                "CHAOS_CALLBACK_URL": f"{self.proxy.url}/v1/payments/paygate"}))
        for name in ("control-a", "control-b"):
            self._add(name, "control", self._child(name, "control", self.ports[name], {
                **env, "CIZO_API_PORT": str(self.ports[name]), "CIZO_MQTT_CLIENT_ID": name,
                "CIZO_DATA_DIR": str(self.dir / name)}))
        for name in ("bridge-a", "bridge-b"):
            self._add(name, "bridge", self._child(name, "bridge", self.ports[name], {
                **env, "CIZO_BRIDGE_CLIENT_ID": name, "CIZO_BRIDGE_SHARED_GROUP": "bridges",
                "CIZO_BRIDGE_KIT_REGISTRY": "true",
                "CIZO_BRIDGE_METRICS_PORT": str(self.ports[name]),
                "CIZO_DATA_DIR": str(self.dir / name)}))
        for c in self.components.values():
            if not c.proc.running:
                c.proc.start(timeout_s=90)
        self._wait_api()

    def env(self) -> dict[str, str]:
        """What every Python child reads (``CIZO_*`` as ``cizo control`` / ``cizo bridge``
        read them), plus the shared clock."""
        assert self.clock is not None and self.proxy is not None
        p = self.ports
        env = {k: v for k, v in os.environ.items() if not k.startswith("CIZO_")}
        return env | {
            "CHAOS_CLOCK_FILE": str(self.clock.path),
            "CIZO_LOG_LEVEL": "WARNING",
            "CIZO_MQTT_HOST": "127.0.0.1", "CIZO_MQTT_PORT": str(p["mqtt"]),
            "CIZO_CONTROL_SHARED_GROUP": "control",
            "CIZO_INFLUX_URL": f"http://127.0.0.1:{p['influx']}", "CIZO_INFLUX_DB": "cizo",
            "CIZO_DATABASE_URL": self.database_url,
            "CIZO_ADMIN_API_KEY": ADMIN_KEY,
            "CIZO_SECRET_KEY": self._secret_key(),
            "CIZO_PAYGATE_URL": f"http://127.0.0.1:{p['paygate']}",
            "CIZO_PAYGATE_AUTH_TOKEN": PAYGATE_TOKEN, "CIZO_PAYGATE_TIMEOUT_S": "2",
            "CIZO_MOMO_URL": f"http://127.0.0.1:{p['momo']}", "CIZO_MOMO_TIMEOUT_S": "2",
            "CIZO_PUBLIC_BASE_URL": self.proxy.url,
            "CIZO_NOTIFY_FILE": str(self.notify_file),
            "CIZO_SWEEP_INTERVAL_S": "0.5", "CIZO_COMMAND_RESEND_AFTER_S": str(RESEND_AFTER_S),
            "CIZO_PAYMENT_POLL_INTERVAL_S": "1",
            # the bridges' replay request reaches back this far on the accelerated clock
            "CIZO_BRIDGE_REPLAY_MARGIN_S": str(int(self.scenario.speed * REPLAY_MARGIN_REAL_S)),
        }

    def _secret_key(self) -> str:
        path = self.dir / "secret_key"
        if not path.exists():
            path.write_text(generate_secret_key())
        return path.read_text().strip()

    def _child(self, name: str, role: str, port: int, env: dict[str, str]
               ) -> services.ManagedProcess:
        root = Path(__file__).resolve().parents[2]
        return services.ManagedProcess(
            name, [sys.executable, "-m", "tests.chaos.child", role], port, root,
            self.dir / f"{name}.log", env=env)

    def _add(self, name: str, kind: str, proc: services.ManagedProcess) -> None:
        self.components[name] = Component(name, kind, proc)
        if kind in ("postgres", "mosquitto", "influxd"):
            proc.start(timeout_s=60)

    def _wait_api(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise services.ServiceStartError("the control API did not become ready")

    @property
    def api_url(self) -> str:
        assert self.proxy is not None
        return self.proxy.url

    def stop(self) -> None:
        self._stop_chaos.set()
        for c in reversed(list(self.components.values())):
            c.proc.crash()  # the checks are done: nothing left to flush
        if self.proxy is not None:
            self.proxy.stop()
        if self.pg_dir is not None:
            shutil.copy(self.pg_dir / "postgres.log", self.dir / "postgres.log")
            shutil.rmtree(self.pg_dir, ignore_errors=True)

    # --- the kills ----------------------------------------------------------------------

    def kill(self, name: str) -> None:
        c = self.components[name]
        c.proc.crash()
        c.kills += 1
        c.down_since = time.monotonic()
        if c.kind == "mosquitto":
            self.broker_outages.append([c.down_since, math.inf])
            self._bridges_at_kill = self._bridges()

    def revive(self, name: str) -> None:
        c = self.components[name]
        if c.proc.running:
            return
        for attempt in range(5):
            try:
                c.proc.start(timeout_s=90)
                break
            except (services.ServiceStartError, services.PortInUseError) as exc:
                if attempt == 4:
                    raise
                self.say(f"chaos: {name} did not come back yet ({exc}); again")
                time.sleep(1)
        c.restarts += 1
        c.down_since = None
        if c.kind == "mosquitto" and self.broker_outages:
            outage, before = self.broker_outages[-1], self._bridges_at_kill
            threading.Thread(target=self._until_a_bridge_is_back, args=(outage, before),
                             name="chaos-bridges-back", daemon=True).start()

    def _bridges(self) -> dict[str, tuple[int, bool, int]]:
        """Each live bridge's (restarts, connected, broker connections so far), read from
        its /metrics (a bridge that does not answer is left out)."""
        out = {}
        for name, c in self.components.items():
            if c.kind != "bridge":
                continue
            try:
                text = httpx.get(f"http://127.0.0.1:{self.ports[name]}/metrics",
                                 timeout=1).text
            except httpx.HTTPError:
                continue
            found = re.search(r"^cizo_bridge_connects_total (\d+)", text, re.M)
            out[name] = (c.restarts, "\ncizo_bridge_connected 1" in text,
                         int(found.group(1)) if found else 0)
        return out

    def _until_a_bridge_is_back(self, outage: list[float],
                                before: dict[str, tuple[int, bool, int]]) -> None:
        """Ends ``outage`` when a bridge has connected to the restarted broker (a new
        connection, or a bridge restarted since the kill), plus the moment its SUBSCRIBE
        takes: the ``$share`` group is subscribed again from then on."""
        while not self._stop_chaos.is_set():
            for name, (restarts, connected, connects) in self._bridges().items():
                was = before.get(name)
                if connected and (was is None or restarts != was[0] or connects > was[2]):
                    outage[1] = time.monotonic() + SUBSCRIBE_MARGIN_S
                    return
            time.sleep(0.1)

    def run_schedule(self, kills: list[Kill], t0: float) -> None:
        """The chaos thread: each kill at its time, its restart after its outage."""
        pending: list[tuple[float, str, str]] = []  # (when, "kill"|"revive", name)
        for k in kills:
            pending.append((t0 + k.at_s, "kill", k.target))
            pending.append((t0 + k.at_s + k.down_s, "revive", k.target))
        pending.sort()
        for when, what, name in pending:
            if self._stop_chaos.wait(max(0.0, when - time.monotonic())):
                return
            try:
                if what == "kill":
                    if self.components[name].proc.running:
                        self.kill(name)
                        assert self.clock is not None
                        self.kill_log.append({"t": round(time.monotonic() - t0, 1),
                                              "target": name, "sim": self.clock.now()})
                        self.say(f"chaos: SIGKILL {name} (day {self._sim_day():.1f})")
                else:
                    self.revive(name)
            except Exception as exc:  # the run goes on: the checks tell
                self.say(f"chaos: {what} {name} failed: {exc!r}")

    def revive_all(self) -> None:
        for name in self.components:
            self.revive(name)

    def _sim_day(self) -> float:
        assert self.clock is not None
        return (self.clock.now() - self.scenario.start_ts) / 86_400

    # --- the fleet ----------------------------------------------------------------------

    def provision(self) -> None:
        with httpx.Client(base_url=self.api_url, timeout=60,
                          headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as api:
            self.identities = provision_fleet(api, self.plan, self.scenario.plan)

    def make_driver(self) -> FleetDriver:
        assert self.clock is not None
        driver = FleetDriver(
            self.plan, self.clock, host="127.0.0.1", port=self.ports["mqtt"],
            identities=self.identities, ramp_s=min(5.0, self.cfg.kits / 200),
            payments=PaymentOptions(self.api_url, ADMIN_KEY, outbox=self.notify_file,
                                    momo_share=self.cfg.momo_share, retries=20, concurrency=32,
                                    retry_wait_s=0.5))
        driver.sim_end = None  # the kits stay up after the month, for the checks
        for kit in driver.kits:
            track_sends(kit, self.sent.setdefault(kit.kit_id, {}))
        self.driver = driver
        return driver


def reading_times(payload: bytes) -> list[int]:
    """The timestamps of the readings in one telemetry message: a v1 JSON object, or a v2
    CBOR message of several readings."""
    if payload[:1] == b"{":
        return [int(json.loads(payload)["ts"])]
    _header, readings = compact.decode_readings(payload)
    return [int(r["ts"]) for r in readings if isinstance(r, dict)]


def track_sends(kit: DrivenKit, times: dict[int, float]) -> None:
    """Note when each of the kit's readings (by its timestamp) is first handed to the link:
    the readings the checks expect, and when they went out."""
    send = kit._send_telemetry

    def tracked(payload: bytes, version: int | None = None) -> None:
        before = kit.counters.telemetry_sent
        send(payload, version)
        if kit.counters.telemetry_sent > before:
            now = time.monotonic()
            for ts in reading_times(payload):
                times.setdefault(ts, now)

    kit._send_telemetry = tracked  # type: ignore[method-assign]


def copy_logs(run: ChaosRun, dest: Path) -> None:
    """Keep the components' logs of a failed run."""
    dest.mkdir(parents=True, exist_ok=True)
    for log_file in run.dir.glob("*.log"):
        shutil.copy(log_file, dest / log_file.name)


# --- the month ------------------------------------------------------------------------------


def _accounts(api: httpx.Client) -> dict[str, dict[str, Any]]:
    """Every kit's account as the API lists it, page by page (``next_cursor``, or
    ``offset`` up to ``total`` where the API pages by offset)."""
    out: dict[str, dict[str, Any]] = {}
    params: dict[str, Any] = {"limit": 500}
    while True:
        r = api.get("/v1/kits", params=params)
        r.raise_for_status()
        page = r.json()
        out |= {k["kit_id"]: k for k in page["items"]}
        if page.get("next_cursor"):
            params = {"limit": 500, "cursor": page["next_cursor"]}
        elif page["items"] and len(out) < page.get("total", 0):
            params = {"limit": 500, "offset": len(out)}
        else:
            return out


def _codes(api: httpx.Client, kits: list[Any]) -> dict[str, list[dict[str, Any]]]:
    return {k.kit_id: api.get(f"/v1/kits/{k.kit_id}/tokens", params={"limit": 500}
                              ).json()["items"] for k in kits}


async def _until(what: str, ok: Callable[[], bool], timeout_s: float, say: Callable[[str], None]
                 ) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if await asyncio.to_thread(ok):
                return True
        except (httpx.HTTPError, OSError) as exc:
            say(f"chaos: {what}: {exc!r}; again")
        await asyncio.sleep(1.0)
    say(f"chaos: gave up waiting: {what}")
    return False


def run_month(cfg: ChaosConfig, workdir: Path, say: Callable[[str], None] = print
              ) -> dict[str, Any]:
    """Start everything, play the month with its kills, bring everything back, check.
    Returns the figures (``checks``) with the kills and timings."""

    started = time.monotonic()
    run = ChaosRun(cfg, workdir, say)
    try:
        run.start()
        say(f"chaos: platform up in {time.monotonic() - started:.0f} s "
            f"({', '.join(run.components)}); provisioning {cfg.kits} kits")
        run.provision()
        kills = schedule(cfg, list(run.components))
        say(f"chaos: {len(kills)} kills planned over a {cfg.days}-day month of "
            f"{cfg.month_real_s:.0f} s real")
        api = httpx.Client(base_url=run.api_url, timeout=30,
                           headers={"Authorization": f"Bearer {ADMIN_KEY}"})

        async def month() -> dict[str, Any]:
            assert run.clock is not None
            driver = run.make_driver()
            await driver.start()
            t0 = time.monotonic()
            run.clock.resume()
            chaos = threading.Thread(target=run.run_schedule, args=(kills, t0),
                                     name="chaos", daemon=True)
            chaos.start()
            end = run.scenario.end_ts
            while run.clock.now() < end:
                await asyncio.sleep(5.0)
                s = driver.summary()
                down = [c.name for c in run.components.values() if not c.proc.running]
                say(f"chaos: day {run._sim_day():5.1f}  kits online {s.online}/{s.kits}  "
                    f"payments {s.payments_made} ({s.payments_failed} failed)  "
                    f"readings {s.telemetry_sent}  kills {len(run.kill_log)}  "
                    f"down {','.join(down) or '-'}")
            run.clock.pause()
            month_s = time.monotonic() - t0
            await asyncio.to_thread(chaos.join, 60)
            await asyncio.to_thread(run.revive_all)
            say(f"chaos: month over in {month_s:.0f} s; every component up; settling")
            t1 = time.monotonic()
            assert driver.pay_task is not None
            planned = sum(len(k.plan.payments) for k in driver.kits)
            deadline = time.monotonic() + PAY_BACKLOG_S  # a loaded machine pays behind time
            while not driver.pay_task.done() and time.monotonic() < deadline:
                await asyncio.wait({driver.pay_task}, timeout=10)
                say(f"chaos: settling: customers paid {driver.payments_made}/{planned} "
                    f"payments due by the month's end")
            def all_credited() -> bool:
                return bool(checks.pending_at_simulators(run.dir) == 0 and checks.payments(
                    run.database_url, run.dir)["payments_lost"] == 0)

            # A payment whose callback was lost is found by the poll job, whose next check
            # backs off in simulated time (up to payment_poll_max_backoff_s): with the clock
            # frozen it may never come, so that delay is let pass, a few times at most.
            paid = False
            for _ in range(HEAL_STEPS):
                paid = await _until("every confirmed payment credited", all_credited,
                                    cfg.settle_s / HEAL_STEPS, say)
                if paid:
                    break
                run.clock.advance(POLL_BACKOFF_MAX_S + 60)
                run.time_advanced_s += POLL_BACKOFF_MAX_S + 60
                say("chaos: confirmed payments not yet credited; the clock moves on by the "
                    "payment poll's longest back-off")
            driver.settle()

            def kits_wrong() -> list[str]:
                return kit_mismatches(driver.kits, _accounts(api),
                                      _codes(api, driver.keypad_kits))

            # A command published into a broker that was then killed, or an ack read by a
            # control process that died before recording it, is repaired by the sweep's
            # re-send (6 simulated hours later): with the clock frozen that never comes,
            # so it is let pass at once, a few times, until every kit agrees.
            converged = False
            for _ in range(HEAL_STEPS):
                converged = await _until("every kit as its account says",
                                         lambda: not kits_wrong(), cfg.settle_s / HEAL_STEPS,
                                         say)
                if converged:
                    break
                run.clock.advance(RESEND_AFTER_S + 60)
                run.time_advanced_s += RESEND_AFTER_S + 60
                say(f"chaos: {len(kits_wrong())} kits not yet as their account says; "
                    f"the clock moves on by a re-send delay")
            influx_url = f"http://127.0.0.1:{run.ports['influx']}"
            bridge_dirs = [run.dir / "bridge-a", run.dir / "bridge-b"]

            def readings_now() -> dict[str, Any]:
                return checks.readings(run.sent, checks.influx_times(influx_url, "cizo"),
                                       checks.dead_letters(bridge_dirs),
                                       [(a - BROKER_UNSAVED_S, b)
                                        for a, b in run.broker_outages])

            def readings_in() -> bool:
                # a reading still in a kit's buffer was never sent, one in flight is
                # counted as sent: either way the comparison below stays exact
                got = readings_now()
                return bool(got["readings_lost"] == 0 and got["readings_doubled"] == 0)

            stored_ok = await _until("every reading stored", readings_in, cfg.settle_s, say)
            settle_s = time.monotonic() - t1
            wrong = kits_wrong()
            result: dict[str, Any] = {
                **checks.payments(run.database_url, run.dir),
                **readings_now(),
                "unconverged": len(wrong), "unconverged_kits": wrong[:10],
                "kits_holding_readings": sum(bool(k.buffer or k.conn.inflight)
                                             for k in driver.kits if k.has_modem),
                "settled": paid and converged and stored_ok,
                "month_real_s": round(month_s, 1), "settle_real_s": round(settle_s, 1),
                "end_time_advanced_h": run.time_advanced_s / 3_600,
            }
            result |= checks.kills_amid_traffic(
                run.database_url, [k["sim"] for k in run.kill_log],
                window_s=run.scenario.speed * 1.0)  # a real second either side
            summary = driver.summary()
            result |= {"kits": summary.kits, "keypad_kits": len(driver.keypad_kits),
                       "payments_made": summary.payments_made,
                       "payments_failed": summary.payments_failed,
                       "commands_applied": summary.commands_applied,
                       "link_drops": summary.link_drops, "reconnects": summary.reconnects,
                       "telemetry_replayed": summary.replayed}
            await driver.stop()
            return result

        result = asyncio.run(month())
        api.close()
    finally:
        run.stop()
    per_kind = Counter(run.components[k["target"]].kind for k in run.kill_log)
    return {"kills": len(run.kill_log), "kills_by_kind": dict(sorted(per_kind.items())),
            **result,
            "lost": result["payments_lost"] + result["readings_lost"],
            "lost_unexplained": result["payments_lost"] + result["readings_lost_other"],
            "doubled": result["payments_doubled"] + result["readings_doubled"],
            "total_real_s": round(time.monotonic() - started, 1)}
