"""Pure parts of the bridge: fast path vs the contract's parser, the spool, the
conflict record, the dead-letter store and the Prometheus rendering."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from broker_bridge.bridge import BridgeStats
from broker_bridge.deadletter import DeadLetter, DeadLetterStore
from broker_bridge.dedup import DUPLICATE_SEQ, NEW, REPEAT, TS_CONFLICT, RecentReadings
from broker_bridge.fastpath import fast_telemetry
from broker_bridge.metrics import render
from broker_bridge.spool import Spool
from cizo import protocol
from cizo_cli.main import main as cli_main
from telemetry.schema import encode_line, line_kit_id

NOW = 1_750_000_000.0


def reading(**over: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "v": 1, "kit_id": "KIT-1", "ts": int(NOW) - 60, "seq": 7, "boot": 2,
        "battery_v": 12.75, "soc": 64.5, "pv_w": 41.0, "load_w": 6, "pv_wh_total": 1200.25,
        "load_wh_total": 800.0, "locked": False, "credit_until": None, "temp_c": 31.5,
    }
    msg.update(over)
    return msg


VALID = [reading(), reading(locked=True, credit_until=int(NOW) + 86400),
         reading(kit_id="TG a,b=c"), reading(soc=100, battery_v=0, temp_c=-40),
         reading(extra_field="ignored"), reading(pv_wh_total=1e12)]
INVALID = [
    reading(v=2), reading(v=True), reading(soc=100.5), reading(battery_v=-0.1),
    reading(soc=True), reading(soc="64"), reading(seq=-1), reading(seq=1.0), reading(ts=1.5),
    reading(ts=int(NOW) + 3600), reading(ts=1_000_000_000), reading(locked=0),
    reading(credit_until=True), reading(credit_until=1.5), reading(kit_id="OTHER"),
    reading(kit_id="A" * 65), reading(kit_id="back\\slash"), reading(temp_c=121),
    reading(pv_w=10_001), reading(boot=-1),
]


def payloads() -> list[bytes]:
    out = [json.dumps(m).encode() for m in VALID + INVALID]
    out += [b"not json", b"[1]", b" " + json.dumps(reading()).encode(),
            json.dumps(reading()).replace('"soc": 64.5', '"soc": NaN').encode(),
            json.dumps(reading()).replace('"soc": 64.5', '"soc": 1e999').encode(),
            json.dumps(reading()).encode().replace(b"KIT-1", b"KIT-\xff"),
            json.dumps({k: v for k, v in reading().items() if k != "temp_c"}).encode(),
            json.dumps(reading(pad="x" * 5000)).encode()]
    return out


@pytest.mark.parametrize("payload", payloads())
def test_fast_path_agrees_with_the_contract_parser(payload: bytes) -> None:
    topic_kit = json.loads(payload)["kit_id"] if payload.startswith(b"{") and \
        b"\xff" not in payload else "KIT-1"
    if topic_kit == "OTHER":
        topic_kit = "KIT-1"
    try:
        tele = protocol.parse_telemetry(topic_kit, payload, NOW)
        expected: tuple[str, int, int, int] | None = (encode_line(tele), tele.ts, tele.boot,
                                                      tele.seq)
    except (protocol.ContractError, ValueError):
        expected = None
    fast = fast_telemetry(topic_kit, payload, NOW)
    if expected is None:
        assert fast is None  # the fast path never accepts what the contract refuses
    elif fast is not None:  # it may defer (None) but never disagree
        assert fast == expected


def test_fast_path_takes_the_plain_valid_readings() -> None:
    for msg in VALID:
        assert fast_telemetry(msg["kit_id"], json.dumps(msg).encode(), NOW) is not None


def test_line_kit_id_reads_back_escaped_tags() -> None:
    tele = protocol.parse_telemetry("TG a,b=c", json.dumps(reading(kit_id="TG a,b=c")).encode(),
                                    NOW)
    assert line_kit_id(encode_line(tele)) == "TG a,b=c"


# --- spool ------------------------------------------------------------------------------------


def test_spool_replays_oldest_first_across_segments_and_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10_000, segment_bytes=10)
    for i in range(5):
        assert spool.append(f"line {i}".encode())
    assert spool.records == 5 and len(list(tmp_path.glob("*.spool"))) == 5
    assert spool.peek() == b"line 0"
    spool.commit()
    assert spool.peek() == b"line 1"  # not committed: replayed again after a crash
    spool.close()
    again = Spool(tmp_path, max_bytes=10_000, segment_bytes=10)
    got = []
    while (body := again.peek()) is not None:
        got.append(body)
        again.commit()
    assert got == [f"line {i}".encode() for i in range(1, 5)]
    assert again.records == 0 and again.size_bytes == 0 and not list(tmp_path.glob("*.spool"))


def test_spool_is_bounded_and_says_so(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=100)
    assert spool.append(b"x" * 80)
    assert not spool.append(b"y" * 20)  # 8-byte header: would exceed 100
    assert spool.records == 1 and spool.size_bytes == 88
    assert spool.peek() == b"x" * 80
    spool.commit()
    assert spool.append(b"y" * 20)  # room again once replayed


def test_spool_cuts_a_torn_tail_on_open(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10_000)
    assert spool.append(b"first") and spool.append(b"second")
    spool.close()
    seg = next(tmp_path.glob("*.spool"))
    seg.write_bytes(seg.read_bytes()[:-3])  # a crash mid-write of the second record
    again = Spool(tmp_path, max_bytes=10_000)
    assert again.records == 1 and again.peek() == b"first"
    assert again.append(b"third")
    again.commit()
    assert again.peek() == b"third"


# --- conflict record --------------------------------------------------------------------------


def test_recent_readings_tell_redelivery_from_conflict() -> None:
    r = RecentReadings(max_entries=3)
    assert r.check("K", 100, 1, 1, digest=11) == NEW
    assert r.check("K", 100, 1, 1, digest=11) == REPEAT
    assert r.check("K", 100, 1, 1, digest=12) == TS_CONFLICT
    assert r.check("K", 101, 1, 1, digest=13) == DUPLICATE_SEQ
    assert r.check("K", 101, 2, 1, digest=13) == NEW  # new boot: seq restarts
    assert r.check("J", 100, 1, 1, digest=99) == NEW  # another kit
    assert r.check("K", 102, 1, 2, digest=14) == NEW
    assert len(r) == 3  # bounded: the oldest (K, 100) is forgotten
    assert r.check("K", 100, 1, 1, digest=12) == NEW


# --- dead letters -------------------------------------------------------------------------------


def test_deadletter_store_filters_and_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    store = DeadLetterStore(tmp_path / "dl", max_rows=1_000, bridge="b1")
    now = time.time()
    letters = [DeadLetter(now, f"KIT-{i % 3}", ["not_json", "ts_conflict"][i % 2], f"d{i}",
                          f"kits/KIT-{i % 3}/telemetry", b"x" * (10 + i)) for i in range(12)]
    assert store.add_many(letters) == 12
    assert store.counts() == {"not_json": 6, "ts_conflict": 6}
    got = store.list(kit_id="KIT-1", reason="ts_conflict")
    assert [d.detail for d in got] == ["d7", "d1"]  # newest first
    assert got[0].bridge == "b1" and got[0].payload == b"x" * 17
    store.close()

    monkeypatch.setenv("CIZO_BRIDGE_DEADLETTER_DIR", str(tmp_path / "dl"))
    assert cli_main(["deadletter", "list", "--kit", "KIT-2", "--reason", "not_json",
                     "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["detail"] for r in rows] == ["d8", "d2"]
    assert rows[0]["kit_id"] == "KIT-2" and rows[0]["payload"] == "x" * 18
    assert cli_main(["deadletter", "stats", "--kit", "KIT-0"]) == 0
    assert sorted(capsys.readouterr().out.split()) == sorted(
        ["not_json", "2", "ts_conflict", "2"])


def test_deadletter_store_is_bounded(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path, max_rows=1_000, payload_bytes=4)
    for _ in range(3):
        store.add_many([DeadLetter(0.0, "K", "not_json", "", "t", b"abcdefgh")] * 600)
    assert store.total() <= 1_000 + 600
    row = store.list(limit=1)[0]
    assert row.payload == b"abcd" and row.payload_size == 8


# --- metrics text -----------------------------------------------------------------------------


def test_render_prometheus_text() -> None:
    stats = BridgeStats(messages_in=10, written=7, acked=9, rejected={"not_json": 2, 'a"b': 1},
                        rejected_total=3, batches=2, write_retries=1, last_write_latency_s=0.25,
                        last_batch_lines=5, queue_depth=1, connected=True, spooled=4,
                        spool_bytes=300, spool_records=1, lag_s=0.5, influx_up=False)
    text = render(stats)
    lines = set(text.splitlines())
    for expected in ["cizo_bridge_messages_in_total 10", "cizo_bridge_written_total 7",
                     'cizo_bridge_rejected_total{reason="not_json"} 2',
                     'cizo_bridge_rejected_total{reason="a\\"b"} 1',
                     "cizo_bridge_spool_bytes 300", "cizo_bridge_write_latency_seconds 0.25",
                     "cizo_bridge_lag_seconds 0.5", "cizo_bridge_influx_up 0",
                     "# TYPE cizo_bridge_written_total counter"]:
        assert expected in lines, expected
