"""A chaos month: the whole platform in its own processes while a seeded schedule SIGKILLs
and restarts every component, then the proof that nothing was lost, doubled or left
unconverged (docs/chaos.md).

500 kits (a tenth with a keypad, half of those without a modem) live a 30-day month in
6 minutes of wall time on one shared accelerated clock; customers pay through PayGate and
MTN MoMo (a third by MoMo) via a round-robin proxy in front of two control processes; two
bridges share the telemetry on one ``$share`` group; a private PostgreSQL cluster (initdb
on a free port, never the shared one), Mosquitto, influxd and both payment simulators with
their fault modes on (slow, failing and hanging status calls, duplicated and late
callbacks). 36 kills, every component at least once. At the end: every payment the
simulators confirmed credited exactly once (balances re-derived from the ledger), every
kit in the state its account says, readings sent = points in InfluxDB + dead letters.

Env: CIZO_CHAOS_KITS (500), CIZO_CHAOS_DAYS (30), CIZO_CHAOS_MONTH_S (360), CIZO_CHAOS_KILLS
(36), CIZO_CHAOS_SEED (2026), CIZO_CHAOS_DIR (a temporary directory, removed unless the run
failed). Prints progress, then one JSON line: kills, payments, credited_once, lost,
doubled, unconverged, readings_sent, readings_stored and more.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chaos.orchestra import ChaosConfig, run_month


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM too: stop every component this run started


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    cfg = ChaosConfig(
        kits=int(os.environ.get("CIZO_CHAOS_KITS", "500")),
        days=int(os.environ.get("CIZO_CHAOS_DAYS", "30")),
        month_real_s=float(os.environ.get("CIZO_CHAOS_MONTH_S", "360")),
        kills=int(os.environ.get("CIZO_CHAOS_KILLS", "36")),
        seed=int(os.environ.get("CIZO_CHAOS_SEED", "2026")),
    )
    given = os.environ.get("CIZO_CHAOS_DIR")
    workdir = Path(given) if given else Path(tempfile.mkdtemp(prefix="cizo-chaos-"))

    def say(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    say(f"chaos month: {cfg} in {workdir}")
    result = run_month(cfg, workdir, say)
    ok = result["lost"] == 0 and result["doubled"] == 0 and result["unconverged"] == 0
    say(f"chaos month: {'PASS' if ok else 'FAIL'}: {result['kills']} kills "
        f"{result['kills_by_kind']}; payments {result['payments']} confirmed, "
        f"{result['credited_once']} credited once; readings sent {result['readings_sent']}, "
        f"stored {result['readings_stored']} + {result['dead_letters']} dead letters; "
        f"lost {result['lost']} ({result['readings_lost_broker_restart']} of them readings "
        f"first sent right after a Mosquitto restart), "
        f"{result['telemetry_replayed']} messages sent again on the bridges' replay requests, "
        f"doubled {result['doubled']}, "
        f"unconverged {result['unconverged']}")
    if ok and not given:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not ok:
        say(f"logs kept in {workdir}")
    print(json.dumps({"ok": ok, **result}), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
