"""From the provider's callback to the kit's ``applied`` ack, with the fleet connected.

Starts a private Mosquitto, a fresh PostgreSQL database, the PayGate simulator and the real
control app (one uvicorn process: HTTP API, MQTT link, scheduler, receipts to a file), then
connects a fleet of simulated kits (one MQTT client each). Simulated customers pay pending
PayGate intents at a fixed rate (round robin over the kits); the simulator marks each paid and
sends its callback; control confirms it with the simulator's status API, credits it, issues
and publishes the signed unlock; the kit applies it and acks.

For every payment: t0 = the moment the simulator settled it and fired the callback, t1 = the
first ``applied`` ack from that kit carrying a credit end at least the one this payment
bought (seen by an MQTT subscriber in this process, same clock). Prints p50/p99/max of
t1 - t0 and how many payments were never seen applied. Goal: p99 under 1 s.

Env: CIZO_BENCH_UNLOCK_KITS (250), CIZO_BENCH_UNLOCK_RATE (50 payments/s),
CIZO_BENCH_UNLOCK_SECONDS (20), CIZO_TEST_PG_ADMIN_URL. Last line: one JSON object.
"""

from __future__ import annotations

import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import insert, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cizo import services
from cizo.clock import SystemClock
from cizo.settings import Settings
from control.ledger import accounts as ledger
from control.ledger import credit
from control.ledger.accounts import SYSTEM
from control.ledger.db import migrate
from control.ledger.models import Account, LedgerEntry, Payment
from control.ledger.secrets import generate_secret_key
from control.runtime import Runtime
from firmware_sim import KitIdentity, SimKit
from payment_sim.paygate import PayGateSimConfig, run_in_thread

PG_ADMIN = os.environ.get("CIZO_TEST_PG_ADMIN_URL",
                          "postgresql://postgres@127.0.0.1:5432/postgres")
KITS = int(os.environ.get("CIZO_BENCH_UNLOCK_KITS", "250"))
RATE = float(os.environ.get("CIZO_BENCH_UNLOCK_RATE", "50"))
SECONDS = float(os.environ.get("CIZO_BENCH_UNLOCK_SECONDS", "20"))
TOKEN = "bench-unlock-paygate-token"
PLAN = credit.Plan(deposit_fcfa=2000, daily_rate_fcfa=100, total_price_fcfa=500_000)
GOAL_P99_MS = 1000.0


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def serve_control(port: int) -> None:
    """Child process: the production app from CIZO_* env on one uvicorn server."""
    import uvicorn

    from control.main import build_app

    app = build_app(Settings(), migrate_db=False)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                ws="none")


class AckWatcher:
    """Every ack of every kit, stamped with this process's perf_counter on arrival."""

    def __init__(self, port: int) -> None:
        self.acks: queue.Queue[tuple[float, str, dict[str, Any]]] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4()}")
        ready = threading.Event()

        def on_message(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
            self.acks.put((time.perf_counter(), m.topic.split("/")[1], json.loads(m.payload)))

        self.client.on_message = on_message
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_connect = lambda c, *a: c.subscribe("kits/+/cmd/ack", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("ack watcher could not subscribe")

    def drain(self) -> list[tuple[float, str, dict[str, Any]]]:
        out = []
        while True:
            try:
                out.append(self.acks.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 1)


def main() -> int:
    if os.environ.get("CIZO_BENCH_SERVE"):
        serve_control(int(os.environ["CIZO_BENCH_SERVE"]))
        return 0
    total = int(RATE * SECONDS)
    workdir = Path(tempfile.mkdtemp(prefix="cizo-unlock-"))
    name = f"cizo_bench_unlock_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rpartition("/")[0] + f"/{name}"
    mqtt_port, api_port = services.free_port(), services.free_port()
    broker = services.mosquitto(workdir / "mqtt", mqtt_port)
    broker.start()
    proc: subprocess.Popen[bytes] | None = None
    fleet: list[SimKit] = []
    watcher: AckWatcher | None = None
    pg = None
    try:
        migrate(url)
        settings = Settings(database_url=url, secret_key=generate_secret_key(),
                            mqtt_port=mqtt_port, sim_telemetry_interval_s=60.0,
                            mqtt_keepalive_s=60)
        rt = Runtime.build(settings, SystemClock())
        say(f"provisioning {KITS} kits and {total} PayGate intents ...")
        creds = []
        with rt.db.session() as s:
            for i in range(KITS):
                creds.append(ledger.provision_kit(
                    s, kit_id=f"UL{i:05d}", desco_id="default", phone_e164=f"+2289{i:07d}",
                    plan=PLAN, box=rt.box, now=rt.clock.now(), actor=SYSTEM))
        api = f"http://127.0.0.1:{api_port}"
        pg = run_in_thread(PayGateSimConfig(auth_token=TOKEN, outcome="never",
                                            callback_url=f"{api}/v1/payments/paygate"))
        with rt.db.session() as s:
            acct_ids = {k: i for k, i in s.execute(select(Account.kit_id, Account.id))}
        rows: list[dict[str, Any]] = []
        now = rt.clock.now()
        for i in range(total):
            kit = creds[i % KITS].kit_id
            amount = 100 * (1 + i % 5)
            ident = f"CIZO-{kit}-{uuid.uuid4().hex[:12]}"
            phone = f"2289{i % KITS:07d}"
            out = pg.sim.create({"auth_token": TOKEN, "phone_number": phone[3:],
                                 "amount": amount, "description": f"CIZO kit {kit}",
                                 "identifier": ident, "network": "TMONEY"})
            rows.append({"desco_id": "default", "account_id": acct_ids[kit],
                         "requested_fcfa": amount, "phone": "+" + phone, "status": "pending",
                         "created_at": now, "updated_at": now, "kind": "payment",
                         "currency": "XOF", "reference": kit, "check_attempts": 0,
                         "next_check_at": None, "provider": "paygate", "provider_ref": ident,
                         "network": "TMONEY", "tx_reference": str(out["tx_reference"])})
        with rt.db.session() as s:
            s.execute(insert(Payment), rows)
        assert settings.secret_key is not None
        env = {**os.environ, "CIZO_DATABASE_URL": url,
               "CIZO_SECRET_KEY": settings.secret_key.get_secret_value(),
               "CIZO_MQTT_PORT": str(mqtt_port), "CIZO_API_PORT": str(api_port),
               "CIZO_PAYGATE_URL": pg.url, "CIZO_PAYGATE_AUTH_TOKEN": TOKEN,
               "CIZO_MQTT_CLIENT_ID": f"control-{uuid.uuid4().hex[:6]}",
               "CIZO_DATA_DIR": str(workdir), "CIZO_SWEEP_INTERVAL_S": "1",
               "CIZO_PAYMENT_POLL_INTERVAL_S": "3600", "CIZO_BENCH_SERVE": str(api_port)}
        log = workdir / "control.log"
        proc = subprocess.Popen([sys.executable, __file__], env=env, stdout=log.open("wb"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{api}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"control did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        watcher = AckWatcher(mqtt_port)
        say(f"connecting {KITS} simulated kits ...")
        for c in creds:
            sim_kit = SimKit(KitIdentity(c.kit_id, None, None, c.command_secret), settings,
                             rt.clock)
            sim_kit.start()
            fleet.append(sim_kit)
        deadline = time.monotonic() + 60
        while sum(k.connected for k in fleet) < KITS:
            if time.monotonic() > deadline:
                raise RuntimeError("the fleet did not connect")
            time.sleep(0.2)
        time.sleep(2.0)  # let the online statuses and first readings settle
        watcher.drain()
        say(f"fleet connected; customers pay {total} intents at {RATE:g}/s ...")
        t_start = time.perf_counter()
        r = httpx.post(f"{pg.url}/_sim/pay_pending", json={"rate_per_s": RATE,
                                                           "count": total}, timeout=30)
        r.raise_for_status()
        acks: list[tuple[float, str, dict[str, Any]]] = []
        deadline = time.monotonic() + SECONDS + 30
        while time.monotonic() < deadline:
            time.sleep(1.0)
            acks += watcher.drain()
            applied = sum(1 for _, _, a in acks if a.get("result") == "applied")
            say(f"  {time.perf_counter() - t_start:5.1f} s: {applied} applied acks")
            if applied >= total and time.perf_counter() - t_start > SECONDS:
                break
        acks += watcher.drain()
        with rt.db.session() as s:
            credited = s.execute(
                select(Payment.provider_ref, Account.kit_id, LedgerEntry.credit_until_after)
                .join(LedgerEntry, LedgerEntry.payment_id == Payment.id)
                .join(Account, Account.id == Payment.account_id)).all()
        by_kit: dict[str, list[tuple[float, int | None]]] = {}
        for t, kit_id, a in acks:
            if a.get("result") == "applied":
                by_kit.setdefault(kit_id, []).append((t, a.get("credit_until")))
        lat: list[float] = []
        missing = 0
        sim = pg.sim
        for ref, kit_id, until in credited:
            tx = sim.by_identifier[ref]
            t0 = tx.settled_perf
            if t0 is None:  # never settled: cannot have been applied for this payment
                missing += 1
                continue
            hit = next((t for t, cu in by_kit.get(kit_id, [])
                        if t >= t0 and cu is not None and until is not None and cu >= until),
                       None)
            if hit is None:
                missing += 1
            else:
                lat.append((hit - t0) * 1000)
        stats = httpx.get(f"{api}/healthz", timeout=5).status_code
        result = {
            "bench": "unlock_latency", "database": "postgresql", "kits": KITS,
            "rate_per_s": RATE, "payments": total, "credited": len(credited),
            "applied_seen": len(lat), "missing": missing,
            "p50_ms": pct(lat, 0.50) if lat else None, "p99_ms": pct(lat, 0.99) if lat else None,
            "max_ms": round(max(lat), 1) if lat else None,
            "mean_ms": round(statistics.mean(lat), 1) if lat else None,
            "goal_p99_ms": GOAL_P99_MS, "control_healthy": stats == 200,
        }
        print(json.dumps(result))
        return 0
    finally:
        for k in fleet:
            k.stop(timeout_s=1)
        if watcher is not None:
            watcher.close()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if pg is not None:
            pg.stop()
        broker.stop()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    raise SystemExit(main())
