"""The broker's doors at growing fleet sizes: how long closing and opening one takes.

For each size N: a private Mosquitto with the dynamic-security plugin and a SQLite ledger
of N kits. Measures the first reconcile of an empty broker (every account created), then,
with kits connected, how long after the call a revocation and a rotation cut the kit's
open session and how long a kit provisioned in the ledger waits for its first accepted
login, then a reconcile that finds nothing to change. Limit: a cut within 5 s (the
requirement). Mosquitto 2.0's plugin rewrites its whole JSON file on every change, on the
broker's only thread, so every figure but the no-op grows with N.

Env: CIZO_BENCH_DOORS_KITS (comma-separated sizes, default 250,500,1000).
Last line: one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cizo import services
from cizo.settings import Settings
from control.ledger.db import Database, migrate
from control.ledger.models import Kit
from control.ledger.secrets import SecretBox, generate_secret_key, new_kit_login
from control.security import broker_auth

LIMIT_CUT_S = 5.0
ADMIN_PW = "bench-admin-password"


class KitSession:
    """One kit's MQTT connection; ``cut`` is set when the broker disconnects it."""

    def __init__(self, port: int, kit_id: str, password: str) -> None:
        self.accepted = threading.Event()
        self.answered = threading.Event()
        self.cut = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=kit_id)
        self.client.username_pw_set(kit_id, password)
        self.client.reconnect_delay_set(60, 60)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_a: self.cut.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.answered.wait(10)

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            self.accepted.set()
        self.answered.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _timed_cut(session: KitSession, act: Any) -> float:
    t0 = time.perf_counter()
    act()
    if not session.cut.wait(60):
        return float("inf")
    return time.perf_counter() - t0


def one_size(n: int, root: Path) -> dict[str, Any]:
    url = f"sqlite:///{root / 'ledger.db'}"
    migrate(url)
    db = Database(url)
    box = SecretBox(generate_secret_key())
    login = new_kit_login(box)  # one password for all: hashing N passwords is not measured
    with db.session() as s:
        s.add_all(Kit(id=f"B{i:06d}", desco_id="default", mqtt_username=f"B{i:06d}",
                      mqtt_password_hash=login.hashed, mqtt_password_enc=login.encrypted,
                      secret_enc="-", cmd_seq=0, created_at=0.0, online=False)
                  for i in range(n))
    port = services.free_port()
    broker = services.mosquitto_with_doors(root / "mosquitto", port, admin_user="cizo-admin",
                                           admin_password=ADMIN_PW)
    dynsec = root / "mosquitto" / "dynamic-security.json"
    broker.start()
    settings = Settings(mqtt_port=port, database_url=url, broker_admin_password=ADMIN_PW,
                        broker_timeout_s=3600)
    doors = broker_auth.BrokerDoors(settings, db, box)
    sessions: list[KitSession] = []
    try:
        t0 = time.perf_counter()
        filled = doors.reconcile()
        fill_s = time.perf_counter() - t0
        revoked = KitSession(port, "B000000", login.password)
        rotated = KitSession(port, "B000001", login.password)
        sessions += [revoked, rotated]
        assert revoked.accepted.is_set() and rotated.accepted.is_set()

        def revoke() -> None:
            broker_auth.revoke_kit(db, "B000000", time.time())
            doors.converge_kits(["B000000"])

        def rotate() -> None:
            broker_auth.rotate_kit_password(db, box, "B000001")
            doors.converge_kits(["B000001"])

        revoke_s = _timed_cut(revoked, revoke)
        rotate_s = _timed_cut(rotated, rotate)
        new = new_kit_login(box)
        with db.session() as s:
            s.add(Kit(id="B-NEW", desco_id="default", mqtt_username="B-NEW",
                      mqtt_password_hash=new.hashed, mqtt_password_enc=new.encrypted,
                      secret_enc="-", cmd_seq=0, created_at=0.0, online=False))
        t0 = time.perf_counter()
        doors.converge_kits(["B-NEW"])
        fresh = KitSession(port, "B-NEW", new.password)
        sessions.append(fresh)
        provision_s = time.perf_counter() - t0 if fresh.accepted.is_set() else float("inf")
        t0 = time.perf_counter()
        noop = doors.reconcile()
        noop_s = time.perf_counter() - t0
        return {
            "kits": n, "fill_s": round(fill_s, 2), "created": filled.created,
            "revoke_cut_s": round(revoke_s, 3), "rotate_cut_s": round(rotate_s, 3),
            "provision_login_s": round(provision_s, 3), "noop_reconcile_s": round(noop_s, 3),
            "noop_changes": noop.created + noop.updated + noop.deleted,
            "dynsec_file_kb_per_kit": round(dynsec.stat().st_size / 1024 / (n + 1), 2),
        }
    finally:
        for session in sessions:
            session.close()
        broker.stop()
        db.dispose()


def main() -> None:
    sizes = [int(x) for x in os.environ.get("CIZO_BENCH_DOORS_KITS", "250,500,1000").split(",")]
    results = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="cizo-doors-") as tmp:
            r = one_size(n, Path(tmp))
        results.append(r)
        ok = max(r["revoke_cut_s"], r["rotate_cut_s"]) <= LIMIT_CUT_S
        print(f"{n:>7} kits: first reconcile {r['fill_s']:.1f} s; revoke cuts in "
              f"{r['revoke_cut_s']:.3f} s, rotate in {r['rotate_cut_s']:.3f} s "
              f"(limit {LIMIT_CUT_S:.0f} s: {'ok' if ok else 'OVER'}); provisioned kit in "
              f"{r['provision_login_s']:.3f} s; no-op reconcile {r['noop_reconcile_s']:.3f} s "
              f"({r['noop_changes']} changes); {r['dynsec_file_kb_per_kit']} KB per kit",
              flush=True)
    print(json.dumps({"bench": "broker_doors", "limit_cut_s": LIMIT_CUT_S,
                      "sizes": results}))


if __name__ == "__main__":
    main()
