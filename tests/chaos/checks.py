"""What a chaos month must end with, read from each side's own records:

* money: every payment the simulators' journals (the providers' databases) say was paid is
  credited exactly once in the ledger, nothing is credited that they did not confirm, and
  every balance re-derives from the ledger entries (``control.ledger.check``);
* kits: every kit's firmware holds what its account says (``tests.fleet_support``);
* readings: the readings the kits sent (their own counters: each one handed to the link
  once, re-sent with DUP until acknowledged) equal the points in InfluxDB plus the
  bridges' dead letters, kit by kit.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from control.ledger import check as accounting
from control.ledger.db import Database
from control.ledger.models import Command, LedgerEntry, Payment
from payment_sim.paygate_wire import PAID, PENDING
from telemetry.schema import TELEMETRY_MEASUREMENT


def journal(path: Path, key: str) -> list[dict[str, Any]]:
    """A simulator's transactions, each in its last journalled state."""
    last: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                state = json.loads(line)
            except ValueError:
                continue  # a line torn by a SIGKILL in mid-write
            last[str(state[key])] = state
    return list(last.values())


def confirmed(workdir: Path) -> dict[tuple[str, str], int]:
    """(provider, provider_ref) -> amount, for every payment a simulator took money for."""
    paid = {("paygate", t["identifier"]): int(t["amount"])
            for t in journal(workdir / "paygate.journal", "tx_reference") if t["state"] == PAID}
    paid |= {("momo", t["reference_id"]): int(t["amount"])
             for t in journal(workdir / "momo.journal", "reference_id")
             if t["status"] == "SUCCESSFUL"}
    return paid


def pending_at_simulators(workdir: Path) -> int:
    paygate = journal(workdir / "paygate.journal", "tx_reference")
    momo = journal(workdir / "momo.journal", "reference_id")
    return len([t for t in paygate if t["state"] == PENDING]) + len(
        [t for t in momo if t["status"] == "PENDING"])


def payments(database_url: str, workdir: Path) -> dict[str, Any]:
    """Confirmed payments against the ledger: credited once, lost, doubled, wrong."""
    paid = confirmed(workdir)
    db = Database(database_url)
    try:
        with db.session() as s:
            rows = s.execute(
                select(Payment.provider, Payment.provider_ref, Payment.status,
                       Payment.amount_fcfa, func.count(LedgerEntry.id))
                .outerjoin(LedgerEntry, LedgerEntry.payment_id == Payment.id)
                .group_by(Payment.id)).all()
            problems = accounting.check_ledger(s)
    finally:
        db.dispose()
    once = lost = doubled = wrong = 0
    lost_refs: list[str] = []
    seen: set[tuple[str, str]] = set()
    for provider, ref, status, amount, entries in rows:
        key = (provider, ref)
        seen.add(key)
        want = paid.get(key)
        if entries > 1:
            doubled += entries - 1
        if status == "credited":
            if want is None or amount != want:
                wrong += 1
            elif entries == 1:
                once += 1
        elif want is not None:
            lost += 1
            lost_refs.append(f"{provider}:{ref} ({status})")
    missing = [f"{p}:{r} (no payment row)" for (p, r) in paid if (p, r) not in seen]
    return {"payments": len(paid), "credited_once": once, "payments_lost": lost + len(missing),
            "payments_doubled": doubled, "payments_wrong": wrong,
            "ledger_problems": len(problems),
            "payment_problems": (lost_refs + missing + [str(p) for p in problems])[:10]}


def influx_times(influx_url: str, db: str) -> dict[str, set[int]]:
    """The timestamps of kit telemetry points in InfluxDB, per kit."""
    r = httpx.get(f"{influx_url}/query", timeout=120, params={
        "db": db, "epoch": "s",
        "q": f"SELECT soc FROM {TELEMETRY_MEASUREMENT} GROUP BY kit_id"})
    r.raise_for_status()
    out: dict[str, set[int]] = {}
    for result in r.json().get("results", []):
        for series in result.get("series", []) or []:
            out[series["tags"]["kit_id"]] = {int(v[0]) for v in series["values"]}
    return out


def dead_letters(bridge_dirs: list[Path]) -> Counter[str]:
    """Telemetry the bridges refused and kept, per kit (read-only)."""
    out: Counter[str] = Counter()
    for d in bridge_dirs:
        for path in d.rglob("*.db"):
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                try:
                    rows = conn.execute("SELECT kit_id, count(*) FROM deadletter "
                                        "WHERE topic LIKE '%/telemetry' GROUP BY kit_id")
                except sqlite3.OperationalError:
                    continue  # another sqlite file (not the dead letters)
                for kit_id, n in rows:
                    out[str(kit_id)] += int(n)
    return out


def readings(sent: dict[str, dict[int, float]], stored: dict[str, set[int]],
             dead: Counter[str], broker_outages: list[tuple[float, float]]
             ) -> dict[str, Any]:
    """Kit by kit: every reading sent (kit id -> reading ts -> when it was first handed to
    the link, monotonic) is a point in InfluxDB or a dead letter; points no kit sent are
    doubled. A reading lost that was first sent during a Mosquitto outage (from just before
    its kill, while its last acknowledgements may be unsaved, until a bridge subscribed
    again) is counted apart (``readings_lost_broker_restart``): Mosquitto 2.0 does not
    restore ``$share`` subscriptions from its persistence, so until a bridge subscribes
    again a kit's reading is acknowledged and dropped unless the kits send it again on the
    bridges' replay request (docs/chaos.md): counted apart to tell what a failure was."""
    lost = doubled = at_restart = 0
    worst: list[str] = []
    for kit_id, times in sent.items():
        got = stored.get(kit_id, set())
        missing = [ts for ts in times if ts not in got]
        extra = len(got - times.keys())
        unexplained = max(0, len(missing) - dead.get(kit_id, 0))
        restart = sum(1 for ts in missing if any(
            start <= times[ts] <= end for start, end in broker_outages))
        at_restart += min(restart, unexplained)
        lost += unexplained
        doubled += extra + max(0, dead.get(kit_id, 0) - len(missing))
        if unexplained or extra:
            worst.append(f"{kit_id}: sent {len(times)}, stored {len(got)}, "
                         f"dead letters {dead.get(kit_id, 0)}, missing {sorted(missing)[:3]}")
    return {"readings_sent": sum(len(t) for t in sent.values()),
            "readings_stored": sum(len(t) for t in stored.values()),
            "dead_letters": sum(dead.values()),
            "readings_lost": lost, "readings_lost_broker_restart": at_restart,
            "readings_lost_other": lost - at_restart,
            "readings_doubled": doubled, "reading_problems": worst[:10]}


def kills_amid_traffic(database_url: str, kill_times: list[float], window_s: float
                       ) -> dict[str, int]:
    """How many kills landed while money was being credited and commands published: a
    payment credited, or a command sent, within ``window_s`` (simulated) of the kill."""
    db = Database(database_url)
    try:
        with db.session() as s:
            credited = sorted(t for t in s.scalars(select(Payment.credited_at)) if t)
            sent = sorted(t for t in s.scalars(select(Command.sent_at)) if t)
    finally:
        db.dispose()

    def near(times: list[float], t: float) -> bool:
        return any(abs(x - t) <= window_s for x in times)

    return {"kills_amid_payments": sum(near(credited, t) for t in kill_times),
            "kills_amid_commands": sum(near(sent, t) for t in kill_times)}
