"""Ingest benchmark: the bridge against a bare paho subscriber on the same queued messages.

Run from the repository root: ``.venv/bin/python bench/ingest.py`` (no arguments). It
starts a private Mosquitto and influxd, then:

1. creates persistent sessions (bare subscriber, one bridge, two bridges of a ``$share``
   group) and publishes N v1 telemetry messages from 10,000 kits at QoS 1, so every
   session has the same N messages queued before anything drains them (the publisher is
   not what is measured);
2. (a) a bare paho subscriber (separate process, QoS 1, same Receive Maximum as the
   bridge) drains its N messages: the Python-client limit on this machine;
   (b) one bridge process (``python -m cizo_cli bridge``) drains its N and writes them to
   InfluxDB; done when its ``/metrics`` shows N written; the points are then counted in
   InfluxDB: ``lost`` = N - counted;
   (c) two bridge processes sharing the load through ``$share/bench/...``;
   (v2) one bridge process drains the same N readings sent in kit contract v2, four to a
   message (N/4 messages): readings/s against (b)'s v1 messages/s (goal: at least 2x),
   ``v2_lost`` = N - counted;
3. bad-input flood: the good messages' rate for G good messages queued alone, then for
   10,000 bad messages followed by G good ones;
4. reconnect storm: S messages queued while the bridge is away, drained by a fresh bridge
   process: drain time and the process's peak RSS (VmHWM).

Environment knobs (defaults are the documented sizes): CIZO_BENCH_N (200000),
CIZO_BENCH_KITS (10000), CIZO_BENCH_GOOD (20000), CIZO_BENCH_BAD (10000),
CIZO_BENCH_STORM (100000), CIZO_BENCH_PROFILE=1 (runs bridge (b) under cProfile and
prints its top functions). The last line is one JSON object of the figures.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cizo import compact, services  # noqa: E402

N = int(os.environ.get("CIZO_BENCH_N", "200000"))
KITS = int(os.environ.get("CIZO_BENCH_KITS", "10000"))
GOOD = int(os.environ.get("CIZO_BENCH_GOOD", "20000"))
BAD = int(os.environ.get("CIZO_BENCH_BAD", "10000"))
STORM = int(os.environ.get("CIZO_BENCH_STORM", "100000"))
PROFILE = os.environ.get("CIZO_BENCH_PROFILE") == "1"
RECEIVE_MAXIMUM = 10_000  # what the bridge asks for by default (2 x 5000-line batches)
FILTERS = ["kits/+/telemetry", "kits/+/status"]
V2_FILTERS = ["k/+/t", "k/+/s"]
SESSION_EXPIRY_S = 3600


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- messages ---------------------------------------------------------------------------

_TEMPLATE = ('{"v":1,"kit_id":"%s","ts":%d,"seq":%d,"boot":1,"battery_v":12.%02d,'
             '"soc":%d.5,"pv_w":41.0,"load_w":6.5,"pv_wh_total":%d.25,"load_wh_total":800.0,'
             '"locked":false,"credit_until":null,"temp_c":31.5}')


def good_messages(count: int, base_ts: int, tag: str) -> list[tuple[str, bytes]]:
    """``count`` readings spread over KITS kits, each (kit, ts) distinct."""
    out = []
    for i in range(count):
        kit = f"{tag}{i % KITS:05d}"
        n = i // KITS
        out.append((f"kits/{kit}/telemetry",
                    (_TEMPLATE % (kit, base_ts + n, n, i % 100, i % 100, 1000 + n)).encode()))
    return out


V2_READINGS = 4  # a v2 message: the hour's four 15-minute readings


def v2_messages(readings: int, base_ts: int, tag: str) -> list[tuple[str, bytes]]:
    """``readings`` readings over KITS kits, four to a v2 message, each (kit, ts) distinct."""
    out = []
    for i in range(readings // V2_READINGS):
        kit = f"{tag}{i % KITS:05d}"
        first = i // KITS * V2_READINGS
        rows = [{"ts": base_ts + n, "seq": n, "boot": 1, "battery_v": 12 + (i % 100) / 100,
                 "soc": i % 100 + 0.5, "pv_w": 41.0, "load_w": 6.5, "pv_wh_total": 1000.25 + n,
                 "load_wh_total": 800.0, "locked": False, "credit_until": None,
                 "temp_c": 31.5} for n in range(first, first + V2_READINGS)]
        out.append((f"k/{kit}/t", compact.encode_readings(rows)))
    return out


def bad_messages(count: int, tag: str) -> list[tuple[str, bytes]]:
    kinds = [b"not json", b'{"v":1,"kit_id":"X"}', b'{"v":1,"soc":NaN}', b"[1,2]"]
    return [(f"kits/{tag}{i % KITS:05d}/telemetry", kinds[i % len(kinds)])
            for i in range(count)]


# --- MQTT helpers -------------------------------------------------------------------------


def _client(client_id: str | None = None) -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or "",
                       protocol=mqtt.MQTTv5)


def create_session(port: int, client_id: str, group: str | None = None,
                   topics: list[str] = FILTERS) -> None:
    """A persistent session subscribed like the bridge, then disconnected."""
    c = _client(client_id)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = SESSION_EXPIRY_S
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    c.connect("127.0.0.1", port, clean_start=True, properties=props)
    c.loop_start()
    filters = [f"$share/{group}/{f}" if group else f for f in topics]
    c.subscribe([(f, SubscribeOptions(qos=1)) for f in filters])
    if not done.wait(10):
        raise RuntimeError("subscribe timed out")
    c.disconnect()
    c.loop_stop()


def publish(port: int, messages: list[tuple[str, bytes]], what: str) -> float:
    """Publish at QoS 1 with a wide in-flight window; returns messages/s."""
    c = _client()
    c.max_inflight_messages_set(2000)
    c.max_queued_messages_set(0)
    acked = [0]
    lock = threading.Lock()
    all_done = threading.Event()
    # paho scans every queued message on each PUBACK: keep at most the in-flight window
    # handed to it, or publishing N messages costs N^2.
    window = threading.BoundedSemaphore(2000)

    def on_publish(*args: Any) -> None:
        window.release()
        with lock:
            acked[0] += 1
            if acked[0] == len(messages):
                all_done.set()

    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    started = time.monotonic()
    for i, (topic, payload) in enumerate(messages):
        window.acquire()
        c.publish(topic, payload, qos=1)
        if i % 50_000 == 49_999:
            progress(f"  published {i + 1:,}/{len(messages):,} {what}")
    if not all_done.wait(600):
        raise RuntimeError(f"publish of {what} incomplete: {acked[0]}/{len(messages)}")
    rate = len(messages) / (time.monotonic() - started)
    c.disconnect()
    c.loop_stop()
    return rate


# --- (a) bare subscriber (child process) ---------------------------------------------------


def bare_subscriber(port: int, client_id: str, expected: int) -> None:
    """Drain ``expected`` queued messages, auto-ack (QoS 1); print JSON timings."""
    c = _client(client_id)
    count = [0]
    first = [0.0]
    done = threading.Event()

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if count[0] == 0:
            first[0] = time.monotonic()
        count[0] += 1
        if count[0] >= expected:
            done.set()

    c.on_message = on_message
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 0  # done with the session after this
    props.ReceiveMaximum = RECEIVE_MAXIMUM
    c.connect("127.0.0.1", port, clean_start=False, properties=props)
    c.loop_start()
    ok = done.wait(600)
    end = time.monotonic()
    c.disconnect()
    c.loop_stop()
    print(json.dumps({"count": count[0], "seconds": end - first[0], "ok": ok,
                      "cpu_s": time.process_time()}))


def run_bare(port: int, client_id: str, expected: int) -> tuple[float, int, float]:
    """(messages/s, messages received, CPU seconds of the subscriber process)."""
    out = subprocess.run([sys.executable, __file__, "--bare", str(port), client_id,
                          str(expected)], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["count"] / result["seconds"], int(result["count"]), float(result["cpu_s"])


# --- bridges (child processes) --------------------------------------------------------------


_STARTED: list[BridgeProc] = []  # stopped in main's finally, whatever happens


class BridgeProc:
    def __init__(self, workdir: Path, mqtt_port: int, influx_port: int, db: str,
                 client_id: str, group: str | None = None, profile: Path | None = None) -> None:
        self.metrics_port = services.free_port()
        env = dict(os.environ)
        env.update({
            "CIZO_MQTT_PORT": str(mqtt_port),
            "CIZO_INFLUX_URL": f"http://127.0.0.1:{influx_port}",
            "CIZO_INFLUX_DB": db,
            "CIZO_BRIDGE_CLIENT_ID": client_id,
            "CIZO_BRIDGE_METRICS_PORT": str(self.metrics_port),
            "CIZO_DATA_DIR": str(workdir / client_id),
            "CIZO_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        })
        if group:
            env["CIZO_BRIDGE_SHARED_GROUP"] = group
        argv = [sys.executable, "-m", "cizo_cli", "bridge"]
        if profile is not None:  # sampling profiler: every thread, no instrumentation cost
            py_spy = str(Path(sys.executable).with_name("py-spy"))
            argv = [py_spy, "record", "--format", "raw", "--rate", "250", "--nonblocking",
                    "-o", str(profile), "--", *argv]
        self.log = (workdir / f"{client_id}.log").open("wb")
        self.profiled = profile is not None
        self.proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.peak_rss_kb = 0
        _STARTED.append(self)

    def metrics(self) -> dict[str, float]:
        try:
            text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return {}
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def sample_rss(self) -> None:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return
        m = re.search(r"VmHWM:\s+(\d+) kB", status)
        if m:
            self.peak_rss_kb = max(self.peak_rss_kb, int(m.group(1)))

    def stop(self) -> None:
        if self.proc.poll() is not None:
            self.log.close()
            return
        self.sample_rss()
        if self.profiled:  # py-spy writes its output on SIGINT; the bridge stops on it too
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def drain(bridges: list[BridgeProc], expected_written: int, what: str,
          metric: str = "cizo_bridge_written_total") -> float:
    """Seconds from the first message in to ``expected_written`` written (all bridges)."""
    first: float | None = None
    deadline = time.monotonic() + 900
    last_report = 0.0
    while time.monotonic() < deadline:
        ms = [b.metrics() for b in bridges]
        for b in bridges:
            b.sample_rss()
        now = time.monotonic()
        got_in = sum(m.get("cizo_bridge_messages_in_total", 0) for m in ms)
        written = sum(m.get(metric, 0) for m in ms)
        if first is None and got_in > 0:
            first = now
        if written >= expected_written and first is not None:
            return now - first
        if now - last_report > 5:
            last_report = now
            progress(f"  {what}: in {got_in:,.0f}, written {written:,.0f}/{expected_written:,}")
        for b in bridges:
            if b.proc.poll() is not None:
                raise RuntimeError(f"bridge exited with {b.proc.returncode} during {what}")
        time.sleep(0.02)
    raise RuntimeError(f"{what}: timed out")


def influx_count(port: int, db: str) -> int:
    r = httpx.post(f"http://127.0.0.1:{port}/query",
                   params={"db": db, "q": "SELECT count(seq) FROM kit_telemetry"}, timeout=60)
    series = r.json()["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


def print_profile(path: Path, top: int = 25) -> None:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or ("writer" not in stack and "_thread_main" not in stack):
            continue  # only the two busy threads (network + writer), not idle waits
        count = int(count_s)
        frames = [re.sub(r" \(.*?/", " (", f) for f in stack.split(";")]
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for f in set(frames):
            incl[f] = incl.get(f, 0) + count
    print(f"--- profile: {total} samples of the network and writer threads", file=sys.stderr)
    for title, table in (("self", own), ("inclusive", incl)):
        print(f"--- top {top} by {title} time", file=sys.stderr)
        for name, count in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            print(f"{100 * count / max(1, total):6.1f}%  {name}", file=sys.stderr)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.monotonic()
    return fn(), time.monotonic() - t


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    try:
        return run()
    finally:
        for b in _STARTED:
            b.stop()


def run() -> int:
    base_ts = int(time.time()) - 3 * 86400
    with tempfile.TemporaryDirectory(prefix="cizo-bench-ingest-") as tmp:
        work = Path(tmp)
        broker = services.mosquitto(work / "mosquitto", services.free_port())
        influx = services.influxd(work / "influxd", services.free_port())
        with services.running(broker, influx):
            mport, iport = broker.port, influx.port
            progress(f"mosquitto :{mport}, influxd :{iport}; N={N:,} from {KITS:,} kits")
            for cid, group in [("bench-bare", None), ("bench-bridge-1", None),
                               ("bench-share-a", "bench"), ("bench-share-b", "bench")]:
                create_session(mport, cid, group)
            msgs = good_messages(N, base_ts, "K")
            pub_rate = publish(mport, msgs, "messages queued for 4 sessions")
            del msgs
            progress(f"published {N:,} at {pub_rate:,.0f}/s")
            # queued now, before any bridge subscribes the v1 sessions to v2 topics too
            create_session(mport, "bench-v2", topics=V2_FILTERS)
            publish(mport, v2_messages(N, base_ts + 500, "V"), "v2 messages queued")

            assert broker.proc is not None and influx.proc is not None
            servers = {"mosquitto": broker.proc.pid, "influxd": influx.proc.pid}

            def server_cpu() -> dict[str, float]:
                return {name: cpu_s(pid) for name, pid in servers.items()}

            progress("(a) bare paho subscriber draining...")
            before = server_cpu()
            bare_rate, bare_count, bare_cpu = run_bare(mport, "bench-bare", N)
            cpu_bare = {k: round(v - before[k], 1) for k, v in server_cpu().items()}
            progress(f"(a) bare subscriber: {bare_rate:,.0f} msg/s ({bare_count:,} received, "
                     f"{bare_cpu:.1f} CPU s)")

            progress("(b) one bridge process draining into InfluxDB...")
            prof = work / "bridge-profile.txt" if PROFILE else None
            before = server_cpu()
            b1 = BridgeProc(work, mport, iport, "bench1", "bench-bridge-1", profile=prof)
            secs1 = drain([b1], N, "1 bridge")
            cpu_bridge = {k: round(v - before[k], 1) for k, v in server_cpu().items()}
            cpu_bridge["bridge"] = round(cpu_s(b1.proc.pid), 1)
            b1.stop()
            counted1 = influx_count(iport, "bench1")
            bridge_rate = N / secs1
            lost = N - counted1
            progress(f"(b) bridge: {bridge_rate:,.0f} msg/s, counted {counted1:,} in InfluxDB, "
                     f"lost {lost}, peak RSS {b1.peak_rss_kb / 1024:.0f} MiB")
            progress(f"    CPU seconds: during (a) {cpu_bare}, during (b) {cpu_bridge}")
            if prof is not None:
                print_profile(prof)

            progress("(c) two bridge processes on $share/bench ...")
            pair = [BridgeProc(work, mport, iport, "bench2", f"bench-share-{x}", group="bench")
                    for x in "ab"]
            secs2 = drain(pair, N, "2 bridges")
            for b in pair:
                b.stop()
            counted2 = influx_count(iport, "bench2")
            two_rate = N / secs2
            progress(f"(c) 2 bridges: {two_rate:,.0f} msg/s, counted {counted2:,}")

            progress(f"(v2) one bridge draining {N:,} readings in {N // V2_READINGS:,} "
                     "v2 messages...")
            bv2 = BridgeProc(work, mport, iport, "benchv2", "bench-v2")
            secs_v2 = drain([bv2], N, "v2 bridge")
            bv2.stop()
            counted_v2 = influx_count(iport, "benchv2")
            v2_rate = N / secs_v2
            progress(f"(v2) bridge: {v2_rate:,.0f} readings/s ({v2_rate / V2_READINGS:,.0f} "
                     f"msg/s) = {v2_rate / bridge_rate:.2f}x the v1 {bridge_rate:,.0f} msg/s "
                     f"(goal >= 2x); counted {counted_v2:,}, lost {N - counted_v2}")

            progress(f"(3) flood: {GOOD:,} good alone, then {BAD:,} bad + {GOOD:,} good")
            create_session(mport, "bench-flood-0")
            publish(mport, good_messages(GOOD, base_ts + 1000, "G"), "good (no flood)")
            b = BridgeProc(work, mport, iport, "bench3a", "bench-flood-0")
            secs_plain = drain([b], GOOD, "good alone")
            b.stop()
            create_session(mport, "bench-flood-1")
            publish(mport, bad_messages(BAD, "B") + good_messages(GOOD, base_ts + 2000, "F"),
                    "bad then good")
            b = BridgeProc(work, mport, iport, "bench3b", "bench-flood-1")
            secs_flood = drain([b], GOOD, "good behind the flood")
            flood_metrics = b.metrics()
            b.stop()
            rejected = sum(v for k, v in flood_metrics.items()
                           if k.startswith("cizo_bridge_rejected_total"))
            good_plain, good_flood = GOOD / secs_plain, GOOD / secs_flood
            counted3 = influx_count(iport, "bench3b")
            progress(f"(3) good rate alone {good_plain:,.0f}/s, behind the flood "
                     f"{good_flood:,.0f}/s (time incl. the flood); {rejected:,.0f} rejected; "
                     f"{counted3:,} good counted")

            progress(f"(4) reconnect storm: {STORM:,} queued while the bridge is away")
            create_session(mport, "bench-storm")
            publish(mport, good_messages(STORM, base_ts + 3000, "S"), "storm backlog")
            b = BridgeProc(work, mport, iport, "bench4", "bench-storm")
            storm_s = drain([b], STORM, "storm")
            b.stop()
            counted4 = influx_count(iport, "bench4")
            storm_rss = b.peak_rss_kb / 1024
            progress(f"(4) storm drained in {storm_s:.1f} s, peak RSS {storm_rss:.0f} MiB, "
                     f"counted {counted4:,}")

    result = {
        "n": N, "kits": KITS,
        "bridge_msgs_per_s": round(bridge_rate),
        "bare_subscriber_msgs_per_s": round(bare_rate),
        "ratio": round(bridge_rate / bare_rate, 3),
        "lost": lost,
        "bridge_peak_rss_mib": round(b1.peak_rss_kb / 1024),
        "two_bridges_msgs_per_s": round(two_rate),
        "two_vs_one": round(two_rate / bridge_rate, 3),
        "two_bridges_lost": N - counted2,
        "v2_readings_per_s": round(v2_rate),
        "v2_vs_v1_msgs": round(v2_rate / bridge_rate, 2),
        "v2_lost": N - counted_v2,
        "publish_msgs_per_s": round(pub_rate),
        "cpu_s_during_bare": {**cpu_bare, "subscriber": round(bare_cpu, 1)},
        "cpu_s_during_bridge": cpu_bridge,
        # CPU per message, subscriber / bridge: the same ratio without the other load
        "cpu_ratio": round(bare_cpu / cpu_bridge["bridge"], 3),
        "good_msgs_per_s_alone": round(good_plain),
        "good_msgs_per_s_behind_flood": round(good_flood),
        "flood_bad": BAD, "flood_rejected": int(rejected), "flood_good_lost": GOOD - counted3,
        "storm_messages": STORM, "storm_drain_s": round(storm_s, 2),
        "storm_peak_rss_mib": round(storm_rss), "storm_lost": STORM - counted4,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--bare":
        bare_subscriber(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
        sys.exit(0)
    sys.exit(main())
