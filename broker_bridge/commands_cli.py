"""``cizo deadletter list|stats``: what the bridge refused, for support.

Reads the dead-letter store named by the settings (``bridge_deadletter_dir``, default
``<data_dir>/deadletter``); works while bridges are running (SQLite WAL).
"""

from __future__ import annotations

import argparse
import json
import time

from broker_bridge.deadletter import DeadLetterStore


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    dl = sub.add_parser("deadletter", help="inspect messages the telemetry bridge refused")
    dl_sub = dl.add_subparsers(dest="deadletter_command", required=True, metavar="ACTION")
    ls = dl_sub.add_parser("list", help="newest refused messages first")
    ls.add_argument("--kit", help="only this kit id")
    ls.add_argument("--reason", help="only this reason (e.g. not_json, ts_conflict)")
    ls.add_argument("--since-s", type=float, help="only the last N seconds")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=_list)
    st = dl_sub.add_parser("stats", help="refused messages per reason")
    st.add_argument("--kit", help="only this kit id")
    st.set_defaults(func=_stats)


def _store() -> DeadLetterStore:
    from cizo.settings import load_settings

    settings = load_settings()
    directory = settings.bridge_deadletter_dir or settings.data_dir / "deadletter"
    return DeadLetterStore(directory, max_rows=settings.bridge_deadletter_max_rows)


def _list(args: argparse.Namespace) -> int:
    store = _store()
    try:
        since = time.time() - args.since_s if args.since_s is not None else None
        letters = store.list(kit_id=args.kit, reason=args.reason, since=since, limit=args.limit)
    finally:
        store.close()
    for d in letters:
        payload = d.payload.decode("utf-8", errors="replace")
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(d.received_at))
        if args.json:
            print(json.dumps({"id": d.id, "received_at": when, "kit_id": d.kit_id,
                              "reason": d.reason, "detail": d.detail, "topic": d.topic,
                              "payload": payload, "payload_size": d.payload_size,
                              "bridge": d.bridge}))
        else:
            print(f"{d.id}\t{when}\t{d.kit_id}\t{d.reason}\t{d.detail[:80]}\t{payload[:120]!r}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    store = _store()
    try:
        counts = store.counts(kit_id=args.kit)
    finally:
        store.close()
    for reason, count in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"{reason}\t{count}")
    return 0
