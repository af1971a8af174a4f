"""How many concurrent kit connections one simulator process holds, every kit publishing.

Default run: 10,000 kits, one fleet process (one asyncio event loop, each kit its own MQTT
session with its own client id), held for 60 s after the last one connected, every kit
publishing one telemetry reading every 10 s on its own schedule (random phase). A
subscriber at the broker (``kits/+/telemetry``, QoS 1, separate process thread) counts
what arrives; the figure of merit is messages expected (published by the kits) vs
received (none may be missing), plus the fleet process's CPU time and peak RSS and the
broker's. ``--procs N`` splits the kits over N fleet processes (beyond one process).

    .venv/bin/python bench/fleet.py                 # 10,000 kits, 1 process
    .venv/bin/python bench/fleet.py --kits 18000 --procs 2

The broker is a private Mosquitto (cizo.services.mosquitto); it inherits this shell's
``ulimit -n`` (one file descriptor per connection), raised here to the hard limit.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cizo import services


def _raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _proc_stats(pid: int) -> dict[str, float]:
    """CPU seconds and resident memory of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = 100.0
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            rss_kb = int(line.split()[1])
    return {"cpu_s": round(cpu, 1), "peak_rss_mb": round(rss_kb / 1024, 1)}


# --- worker: one fleet process -------------------------------------------------------------


async def _worker(args: argparse.Namespace) -> dict[str, object]:
    from firmware_sim.clocks import AcceleratedClock
    from firmware_sim.driver import FleetDriver
    from firmware_sim.scenario import Scenario, build_plan

    sc = Scenario(name="bench", kits=args.kits, kit_id_prefix=f"B{args.index}-", days=365,
                  speed=1.0, telemetry_interval_s=args.interval, keepalive_s=60,
                  payments={"never": 1.0})
    plan = build_plan(sc, seed=args.index)
    clock = AcceleratedClock(time.time(), 1.0)
    plan = plan.__class__(plan.scenario.model_copy(update={"start": _utc(clock.now())}),
                          plan.seed, plan.kits)
    driver = FleetDriver(plan, clock, host="127.0.0.1", port=args.port,
                         ramp_s=args.kits / args.connect_rate)
    cpu0 = time.process_time()
    t0 = time.monotonic()
    await driver.start()
    while driver.online < args.kits:
        if time.monotonic() - t0 > args.connect_timeout:
            break
        await asyncio.sleep(0.2)
    connect_s = time.monotonic() - t0
    connected = driver.online
    print(f"worker {args.index}: {connected}/{args.kits} connected in {connect_s:.1f}s, "
          f"holding {args.hold:.0f}s", file=sys.stderr, flush=True)
    min_online = connected
    hold_start = time.monotonic()
    sent_at_hold = driver.summary().telemetry_sent
    while time.monotonic() - hold_start < args.hold:
        await asyncio.sleep(1.0)
        min_online = min(min_online, driver.online)
    sent_in_hold = driver.summary().telemetry_sent - sent_at_hold
    driver.request_stop()
    await driver.stop()
    s = driver.summary()
    return {
        "kits": args.kits, "connected": connected, "min_online_during_hold": min_online,
        "connect_s": round(connect_s, 1), "telemetry_sent": s.telemetry_sent,
        "telemetry_sent_in_hold": sent_in_hold, "acked": s.messages_acked,
        "cpu_s": round(time.process_time() - cpu0, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "connect_failures": s.connect_failures,
    }


def _utc(t: float):  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC)


# --- main: broker, subscriber, workers -----------------------------------------------------


class Counter:
    def __init__(self, port: int) -> None:
        self.received = 0
        self.kits: set[str] = set()
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-counter",
                                  clean_session=True)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, 60)
        self.client.subscribe("kits/+/telemetry", qos=1)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received += 1
            self.kits.add(msg.topic.split("/")[1])

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kits", type=int, default=10_000, help="total kits (default 10000)")
    p.add_argument("--procs", type=int, default=1, help="fleet processes (default 1)")
    p.add_argument("--hold", type=float, default=60.0, help="seconds to hold (default 60)")
    p.add_argument("--interval", type=float, default=10.0, help="telemetry every N s")
    p.add_argument("--connect-rate", type=float, default=1000.0,
                   help="new connections per second per process while ramping up")
    p.add_argument("--connect-timeout", type=float, default=120.0)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    nofile = _raise_nofile()
    if args.worker:
        print(json.dumps(asyncio.run(_worker(args))), flush=True)
        return 0

    port = services.free_port()
    broker = services.mosquitto(Path(tempfile.mkdtemp(prefix="bench-fleet-")), port)
    broker.start()
    assert broker.proc is not None
    print(f"bench/fleet: {args.kits} kits in {args.procs} process(es), ulimit -n {nofile}, "
          f"broker on {port}, hold {args.hold:.0f}s, telemetry every {args.interval:g}s",
          flush=True)
    counter = Counter(port)
    per = [args.kits // args.procs + (1 if i < args.kits % args.procs else 0)
           for i in range(args.procs)]
    workers = [subprocess.Popen(
        [sys.executable, __file__, "--worker", "--index", str(i), "--kits", str(n),
         "--port", str(port), "--hold", str(args.hold), "--interval", str(args.interval),
         "--connect-rate", str(args.connect_rate),
         "--connect-timeout", str(args.connect_timeout)],
        stdout=subprocess.PIPE, text=True) for i, n in enumerate(per)]
    results = []
    started = time.monotonic()
    try:
        while any(w.poll() is None for w in workers):
            time.sleep(5)
            print(f"  {time.monotonic() - started:5.0f}s: subscriber received "
                  f"{counter.received} from {len(counter.kits)} kits", flush=True)
        for w in workers:
            out = (w.stdout.read() if w.stdout else "").strip().splitlines()
            if w.returncode != 0 or not out:
                raise SystemExit(f"worker failed with {w.returncode}")
            results.append(json.loads(out[-1]))
        sent = sum(r["telemetry_sent"] for r in results)
        deadline = time.monotonic() + 30
        while counter.received < sent and time.monotonic() < deadline:
            time.sleep(0.2)
        broker_stats = _proc_stats(broker.proc.pid)
    finally:
        counter.stop()
        broker.stop()
    connected = sum(r["connected"] for r in results)
    held = sum(r["min_online_during_hold"] for r in results)
    figures = {
        "kits": args.kits, "procs": args.procs, "connected": connected,
        "held_60s": held, "hold_s": args.hold, "interval_s": args.interval,
        "connect_s": max(r["connect_s"] for r in results),
        "telemetry_expected": sent, "telemetry_received": counter.received,
        "missing": sent - counter.received,
        "expected_per_hold": round(args.kits * args.hold / args.interval),
        "sent_in_hold": sum(r["telemetry_sent_in_hold"] for r in results),
        "kits_heard": len(counter.kits),
        "fleet_cpu_s": round(sum(r["cpu_s"] for r in results), 1),
        "fleet_peak_rss_mb": round(sum(r["peak_rss_mb"] for r in results), 1),
        "fleet_kb_per_kit": round(sum(r["peak_rss_mb"] for r in results) * 1024
                                  / max(1, args.kits), 1),
        "broker_cpu_s": broker_stats["cpu_s"], "broker_peak_rss_mb": broker_stats["peak_rss_mb"],
        "wall_s": round(time.monotonic() - started, 1),
        "connect_failures": sum(r["connect_failures"] for r in results),
    }
    print(json.dumps(figures), flush=True)
    return 0 if figures["missing"] == 0 and held == args.kits else 1


if __name__ == "__main__":
    sys.exit(main())
