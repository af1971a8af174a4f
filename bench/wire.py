"""What a kit really costs on the wire in a month, kit contract v1 against v2, measured.

Run from the repository root: ``.venv/bin/python bench/wire.py`` (no arguments). It:

1. starts ``cizo up`` (``python -m cizo_cli up --kits 0``: Mosquitto with its TLS
   listener and local CA, influxd, the bridge, the control service, the PayGate
   simulator) in a temporary directory, and provisions the kits through its API;
2. captures every TCP segment to and from the TLS listener on the loopback interface
   (``tcpdump -i lo`` with a port filter, Debian's ``tcpdump``; root or CAP_NET_RAW);
3. plays a simulated month (``firmware_sim.driver.FleetDriver`` on an accelerated clock)
   with three groups of kits, every kit through the TLS listener with its own broker
   login: **v1** (JSON, a message per 15-minute reading, keepalive 300 s), **v2** (CBOR,
   the hour's four readings per message, keepalive 5,400 s, persistent session, TLS
   session resumption) and **v2, no resumption** (every reconnect a full TLS handshake).
   Each kit drops its link about once a day (a 1 to 10-minute outage: the radio goes,
   no DISCONNECT) and its customer pays about weekly through the control API, which
   sends the kit its unlock command;
4. sums, per kit, the IPv4 total length of every captured segment both ways (IP and TCP
   headers with their options, TLS records, MQTT, and the bare ACKs, handshakes and
   FINs): headers are counted per segment as captured, not assumed. A segment belongs
   to the kit whose connection's local port it carries (each kit records its ports).

Keepalive pings run on the simulated clock (scenario ``keepalive_clock = "simulated"``),
so the accelerated month sends the pings a real month would. What acceleration cannot
reproduce: TCP's delayed-ACK timing (events are tens of milliseconds apart here, hours
on a kit, so an ACK may ride on a segment it would not in the field), loopback's 64 KB
MSS (a full TLS handshake's certificate flight is one segment here, two or three on a
1,500-byte link: ~100 bytes more a full handshake), and TLS session lifetime: OpenSSL
keeps a TLS 1.2 session 300 s by default and Mosquitto 2.0.11 does not change it, so a
kit reconnecting a day later would in practice do a full handshake; the "no resumption"
group measures that case.

The unlock latency is real time from a v2 kit's customer paying (``POST
/v1/payments/intents``; the PayGate simulator approves 2 s later) to the kit applying
the resulting command, over a connected link.

Environment knobs: CIZO_BENCH_WIRE_KITS (kits per group, default 6),
CIZO_BENCH_WIRE_DAYS (simulated days, default 30; figures are scaled to 30 days),
CIZO_BENCH_WIRE_REAL_S (real seconds the month takes, default 300). Last line: one JSON
object with ``v1_kb_per_kit_month``, ``v2_kb_per_kit_month``, ``v2_unlock_p99_s``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cizo import services  # noqa: E402
from cizo_cli.stack import mqtt_login_accepted  # noqa: E402
from firmware_sim.clocks import AcceleratedClock  # noqa: E402
from firmware_sim.customers import PaymentOptions  # noqa: E402
from firmware_sim.driven_kit import DrivenKit  # noqa: E402
from firmware_sim.driver import FleetDriver  # noqa: E402
from firmware_sim.kit import KitIdentity  # noqa: E402
from firmware_sim.mqtt_async import ResumingTLS  # noqa: E402
from firmware_sim.scenario import (  # noqa: E402
    NetworkSpec,
    PlanSpec,
    ProtocolSpec,
    Scenario,
    build_plan,
)

KITS = int(os.environ.get("CIZO_BENCH_WIRE_KITS", "6"))
DAYS = float(os.environ.get("CIZO_BENCH_WIRE_DAYS", "30"))
REAL_S = float(os.environ.get("CIZO_BENCH_WIRE_REAL_S", "300"))
MONTH_DAYS = 30
GOAL_KB = 375.0  # half the OpenPAYGO Metrics design point (750 KB a month)
UNLOCK_GOAL_S = 60.0
ADMIN_KEY = "bench-wire-admin-key-0123456789abcdef"
GROUPS = ("v1", "v2", "v2_no_resumption")


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class ForgetfulTLS(ResumingTLS):
    """A kit that never offers its last session: every reconnect a full handshake."""

    @property
    def session(self) -> None:
        return None

    @session.setter
    def session(self, _value: object) -> None:
        pass


# --- the stack ----------------------------------------------------------------------------


def start_stack(work: Path, ports: dict[str, int]) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CIZO_") and k not in ("LC_ALL", "LC_MESSAGES")}
    env["LANG"] = "en_US.UTF-8"  # the line waited for below is cizo up's English one
    env["CIZO_ADMIN_API_KEY"] = ADMIN_KEY
    log = (work / "up.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cizo_cli", "up", "--kits", "0", "--pay-every", "0",
         "--data-dir", str(work / "stack"),
         *[a for name, port in ports.items() for a in (f"--{name}-port", str(port))]],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while b"CIZO stack is up" not in (work / "up.log").read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("cizo up did not come up:\n"
                               + (work / "up.log").read_text()[-3000:])
        time.sleep(0.3)
    return proc


def stop_stack(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def provision(api: str, kit_ids: list[str]) -> list[KitIdentity]:
    out = []
    with httpx.Client(base_url=api, timeout=30,
                      headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
        for i, kit_id in enumerate(kit_ids):
            r = http.post("/v1/kits", json={
                "kit_id": kit_id, "phone": f"+2289{i:07d}",
                "plan": {"deposit_fcfa": 2_000, "daily_rate_fcfa": 100,
                         "total_price_fcfa": 100_000}})
            if r.status_code != 201:
                raise RuntimeError(f"provisioning {kit_id}: {r.status_code} {r.text}")
            b = r.json()
            out.append(KitIdentity(kit_id, b["mqtt_username"], b["mqtt_password"],
                                   b["command_secret"]))
    return out


# --- capture ------------------------------------------------------------------------------


def start_capture(pcap: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["tcpdump", "-i", "lo", "-n", "-U", "-s", "128", "-w", str(pcap),
         f"tcp port {port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    line = proc.stderr.readline()  # "listening on lo, ..." once the capture runs
    if b"listening" not in line:
        raise RuntimeError(f"tcpdump did not start: {line!r} (needs root or CAP_NET_RAW; "
                           "Debian package tcpdump)")
    return proc


def stop_capture(proc: subprocess.Popen[bytes]) -> str:
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=30)
    return err.decode(errors="replace").strip()


_LINK_HEADER = {1: 14, 113: 16, 276: 20, 101: 0, 0: 4}  # Ethernet, SLL, SLL2, raw, null


def bytes_by_port(pcap: Path, server_port: int) -> dict[int, int]:
    """IPv4 total length (IP + TCP headers + payload) of every segment, summed by the
    client side's port."""
    data = pcap.read_bytes()
    magic, = struct.unpack_from("<I", data)
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    linktype, = struct.unpack_from(endian + "I", data, 20)
    offset = _LINK_HEADER[linktype & 0x0FFFFFFF]
    out: dict[int, int] = defaultdict(int)
    pos = 24
    while pos + 16 <= len(data):
        _s, _us, incl, _orig = struct.unpack_from(endian + "IIII", data, pos)
        pkt = data[pos + 16: pos + 16 + incl]
        pos += 16 + incl
        ip = pkt[offset:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        total = struct.unpack_from("!H", ip, 2)[0]
        tcp = ip[(ip[0] & 0x0F) * 4:]
        src, dst = struct.unpack_from("!HH", tcp)
        out[dst if src == server_port else src] += total
    return out


# --- the month ----------------------------------------------------------------------------


def scenario() -> Scenario:
    start = time.time() - DAYS * 86_400  # readings in the past: the bridge takes them
    return Scenario(
        name="wire", kits=3 * KITS, kit_id_prefix=f"W{int(start) % 10_000:04d}-",
        start=start, days=DAYS, speed=DAYS * 86_400 / REAL_S,
        telemetry_interval_s=900, keepalive_s=300, drift_ppm=0,
        payments={"weekly": 1.0},
        plan=PlanSpec(deposit_fcfa=2_000, daily_rate_fcfa=100, total_price_fcfa=100_000),
        network=NetworkSpec(drop_rate_per_day=1.0, outage_s=(60, 600),
                            reconnect_base_s=0.05, reconnect_cap_s=0.5,
                            keepalive_clock="simulated"),
        protocols=ProtocolSpec(v2_keepalive_s=5_400),
    )


def group_of(i: int) -> str:
    return GROUPS[i // KITS]


async def play(sc: Scenario, identities: list[KitIdentity], host: str, port: int,
               ca: Path, api: str) -> FleetDriver:
    plan = build_plan(sc, seed=13)
    plan = dataclasses.replace(plan, kits=tuple(
        dataclasses.replace(kp, protocol=1 if group_of(i) == "v1" else 2,
                            misbehaviour=frozenset(), keypad=None)
        for i, kp in enumerate(plan.kits)))
    clock = AcceleratedClock(sc.start_ts, sc.speed)
    driver = FleetDriver(plan, clock, host=host, port=port, identities=identities,
                         payments=PaymentOptions(api, ADMIN_KEY), ramp_s=0.5, tls_ca=ca)
    for i, kit in enumerate(driver.kits):
        if group_of(i) == "v2_no_resumption":
            kit.conn.tls = ForgetfulTLS.trusting(str(ca))
    summary = await driver.run(progress_every_s=30)
    progress(f"month played: {summary.telemetry_sent} telemetry messages, "
             f"{summary.commands_applied} commands applied, {summary.reconnects} reconnects")
    return driver


def unlock_latencies(driver: FleetDriver, kits: list[DrivenKit]) -> list[float]:
    """Real seconds from each payment to the kit's next newly applied command."""
    paid = driver.payers.paid_at if driver.payers is not None else {}
    out = []
    for kit in kits:
        for t in paid.get(kit.kit_id, []):
            after = [a - t for a in kit.applied_at if a > t]
            if after:
                out.append(min(after))
    return out


def p99(values: list[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="cizo-bench-wire-") as tmp:
        work = Path(tmp)
        ports = {name: services.free_port()
                 for name in ("mqtt", "mqtt-tls", "api", "influx", "paygate")}
        stack = start_stack(work, ports)
        capture = None
        try:
            api = f"http://127.0.0.1:{ports['api']}"
            tls_port = ports["mqtt-tls"]
            ca = work / "stack" / "tls" / "ca.crt"
            sc = scenario()
            kit_ids = [f"{sc.kit_id_prefix}{i:06d}" for i in range(sc.kits)]
            identities = provision(api, kit_ids)
            deadline = time.monotonic() + 30  # cizo up syncs the broker's logins every 5 s
            while not mqtt_login_accepted(tls_port, identities[-1].mqtt_username,
                                          identities[-1].mqtt_password, tls_ca=ca):
                if time.monotonic() > deadline:
                    raise RuntimeError("the broker never accepted the provisioned kits")
                time.sleep(0.5)
            progress(f"cizo up: TLS listener :{tls_port}; {len(identities)} kits "
                     f"({KITS} per group), {DAYS:g} days in {REAL_S:g} s real")
            pcap = work / "wire.pcap"
            capture = start_capture(pcap, tls_port)
            driver = asyncio.run(play(sc, identities, "127.0.0.1", tls_port, ca, api))
            time.sleep(1.0)  # the last FINs and ACKs
            progress(f"tcpdump: {stop_capture(capture)}")
            capture = None
            by_port = bytes_by_port(pcap, tls_port)
        finally:
            if capture is not None:
                stop_capture(capture)
            stop_stack(stack)

    scale = MONTH_DAYS / DAYS
    result: dict[str, Any] = {"kits_per_group": KITS, "days": DAYS, "real_s": REAL_S}
    for g in GROUPS:
        kits = [k for i, k in enumerate(driver.kits) if group_of(i) == g]
        total = sum(by_port.get(p, 0) for k in kits for p in k.conn.local_ports)
        per_kit_kb = total / len(kits) * scale / 1000
        mqtt_kb = sum(k.wire.bytes_out + k.wire.bytes_in for k in kits) / len(kits) \
            * scale / 1000
        connects = sum(k.wire.connects for k in kits) / len(kits)
        resumed = sum(k.conn.tls_resumed for k in kits) / len(kits)
        result[f"{g}_kb_per_kit_month"] = round(per_kit_kb, 1)
        result[f"{g}_mqtt_kb_per_kit_month"] = round(mqtt_kb, 1)
        result[f"{g}_connects_per_kit"] = round(connects, 1)
        result[f"{g}_tls_resumed_per_kit"] = round(resumed, 1)
        print(f"{g:18s} {per_kit_kb:8.1f} KB per kit per month on the wire "
              f"(MQTT alone {mqtt_kb:.1f} KB; {connects:.0f} connections, "
              f"{resumed:.0f} TLS resumed)")
    v2_kits = [k for i, k in enumerate(driver.kits) if group_of(i) != "v1"]
    latencies = unlock_latencies(driver, v2_kits)
    unlock = p99(latencies)
    result["v2_unlock_p99_s"] = round(unlock, 2)
    result["v2_unlocks_measured"] = len(latencies)
    result["v1_kb_per_kit_month"] = result.pop("v1_kb_per_kit_month")
    result["v2_kb_per_kit_month"] = result.pop("v2_kb_per_kit_month")
    print(f"goal: v2 <= {GOAL_KB:.0f} KB per kit per month: "
          f"{'met' if result['v2_kb_per_kit_month'] <= GOAL_KB else 'NOT met'} "
          f"({result['v2_kb_per_kit_month']} KB; v1 {result['v1_kb_per_kit_month']} KB "
          f"in the same run)")
    print(f"goal: a payment applied on a connected v2 kit within {UNLOCK_GOAL_S:.0f} s p99: "
          f"{'met' if unlock <= UNLOCK_GOAL_S else 'NOT met'} ({unlock:.2f} s over "
          f"{len(latencies)} payments)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
