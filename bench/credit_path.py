"""CPU of the control's payment credit path alone, per payment, on PostgreSQL.

What bench/payments.py measures end to end includes HTTP servers, clients and simulators;
this one calls ``control.payments.providers.paygate.handle_paygate_callback`` directly, one
payment after another, in this process, against a fresh PostgreSQL database and the PayGate
simulator (status API answering at once), and prints the control's CPU milliseconds per
credited payment (process CPU, so the simulator's thread is included). The peer figure, same
run: the CPU of the bare PayGate status call every callback makes, so what the credit itself
costs is the difference. Useful to see what a change to the credit path costs without the
noise of a whole stack; run it on two trees for an A/B. CIZO_BENCH_CREDITS (default 2000)
payments; CIZO_BENCH_PROFILE=1 also prints the top functions (cProfile; CIZO_BENCH_PROFILE_SORT,
default cumulative).
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import sys
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from payments import PG_ADMIN, TOKEN, provision

from cizo.settings import Settings
from control.ledger.db import migrate
from control.ledger.models import Payment
from control.ledger.secrets import generate_secret_key
from control.payments.providers import paygate as payments
from control.runtime import Runtime
from payment_sim.paygate import PayGateSimConfig, run_in_thread
from payment_sim.paygate_wire import PAID

N = int(os.environ.get("CIZO_BENCH_CREDITS", "2000"))
KITS = 500


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> int:
    name = f"cizo_bench_credit_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rpartition("/")[0] + f"/{name}"
    handle = run_in_thread(PayGateSimConfig(auth_token=TOKEN, callback_url=None,
                                            outcome="never", seed=1))
    try:
        migrate(url)
        settings = Settings(database_url=url, secret_key=generate_secret_key(),
                            paygate_url=handle.url, paygate_auth_token=TOKEN,
                            notify_backend="log")
        rt = Runtime.build(settings)
        kits = provision(rt, KITS)
        say(f"{N} intents on {KITS} kits")
        idents: list[str] = []
        now = rt.clock.now()
        with rt.db.session() as s:
            for i in range(N):
                kit = kits[i % KITS]
                ident = f"CIZO-{kit}-{uuid.uuid4().hex[:12]}"
                out = handle.sim.create({"auth_token": TOKEN, "phone_number": "90000000",
                                         "amount": 700, "description": "bench",
                                         "identifier": ident, "network": "FLOOZ"})
                handle.sim.by_identifier[ident].state = PAID
                acct_id = i % KITS + 1
                s.add(Payment(desco_id="default", provider="paygate", provider_ref=ident,
                              account_id=acct_id, requested_fcfa=700, status="pending",
                              created_at=now, updated_at=now, currency="XOF",
                              reference=kit, check_attempts=0,
                              tx_reference=str(out["tx_reference"])))
                idents.append(ident)
        for ident in idents[:50]:  # warm-up: pools, statement caches
            payments.handle_paygate_callback(rt, {"identifier": ident})
        t0, c0 = time.perf_counter(), time.process_time()
        for ident in idents[50:200]:
            rt.paygate.status_by_identifier(ident)
        status_ms = 1000 * (time.process_time() - c0) / 150
        profile = cProfile.Profile() if os.environ.get("CIZO_BENCH_PROFILE") else None
        todo = idents[50:]
        t0, c0 = time.perf_counter(), time.process_time()
        if profile is not None:
            profile.enable()
        credited = sum(payments.handle_paygate_callback(rt, {"identifier": i}).credited
                       for i in todo)
        if profile is not None:
            profile.disable()
        cpu_ms = 1000 * (time.process_time() - c0) / len(todo)
        wall_ms = 1000 * (time.perf_counter() - t0) / len(todo)
        if profile is not None:
            order = os.environ.get("CIZO_BENCH_PROFILE_SORT", "cumulative")
            pstats.Stats(profile, stream=sys.stderr).sort_stats(order).print_stats(45)
        rt.db.dispose()
    finally:
        handle.stop(timeout_s=10)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    result = {"payments": len(todo), "credited": credited,
              "cpu_ms_per_payment": round(cpu_ms, 3),
              "status_call_cpu_ms": round(status_ms, 3),
              "credit_cpu_ms": round(cpu_ms - status_ms, 3),
              "wall_ms_per_payment": round(wall_ms, 3)}
    say(f"credit path: {result}")
    print(json.dumps(result))
    return 0 if credited == len(todo) else 1


if __name__ == "__main__":
    sys.exit(main())
