"""Pure parts of the bridge: message decoding, the spool, the conflict record, the
dead-letter store and the Prometheus rendering."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
import pytest

from broker_bridge.deadletter import DeadLetter, DeadLetterStore
from broker_bridge.decoding import Decoder
from broker_bridge.dedup import DUPLICATE_SEQ, NEW, REPEAT, TS_CONFLICT, RecentReadings
from broker_bridge.metrics import render
from broker_bridge.rejects import LogLimiter, RejectCounters, Rejects
from broker_bridge.spool import Spool
from broker_bridge.stats import BridgeStats
from cizo import compact, protocol
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


class FixedClock:
    def now(self) -> float:
        return NOW


def decoder() -> Decoder:
    return Decoder(FixedClock(), Rejects(RejectCounters(), LogLimiter()), RecentReadings(100))


def message(topic: bytes, payload: bytes, mid: int = 1) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(mid, topic)
    msg.payload, msg.qos = payload, 1
    return msg


def test_decoding_a_reading_gives_its_line_and_ts() -> None:
    got = decoder().decode(message(b"kits/KIT-1/telemetry", json.dumps(reading()).encode(), 9),
                           epoch=3, received=1.5)
    tele = protocol.parse_telemetry("KIT-1", json.dumps(reading()).encode(), NOW)
    assert got.lines == (encode_line(tele),) and got.dead == ()
    assert (got.epoch, got.mid, got.qos, got.kit_id, got.ts, got.received) == (
        3, 9, 1, "KIT-1", int(NOW) - 60, 1.5)


def test_decoding_a_status_stamps_it_with_the_receipt_time() -> None:
    got = decoder().decode(message(b"kits/K_2/status", b'{"v":1,"online":true}'), 1, 0.0)
    assert got.lines == (f"kit_status,kit_id=K_2 online=true {int(NOW)}",) and got.dead == ()


@pytest.mark.parametrize(("topic", "payload", "reason"), [
    (b"kits/KIT-1/telemetry", b"not json", "not_json"),
    (b"kits/KIT-1/telemetry", json.dumps(reading(soc=101)).encode(), "invalid_field"),
    (b"kits/OTHER/telemetry", json.dumps(reading()).encode(), "kit_id_mismatch"),
    # a kit id outside the contract's pattern is refused at the topic, before any use
    (b"kits/a\\b/telemetry", json.dumps(reading(kit_id="a\\b")).encode(), "bad_topic"),
    (b"kits/KIT.1/telemetry", json.dumps(reading(kit_id="KIT.1")).encode(), "bad_topic"),
    (b"kits/K 2/status", b'{"v":1,"online":true}', "bad_topic"),
    (b"kits/KIT-1/cmd", b"{}", "bad_topic"),
    (b"elsewhere/KIT-1/telemetry", b"{}", "bad_topic"),
    (b"kits/\xff/telemetry", b"{}", "bad_topic"),
])
def test_decoding_refuses_with_the_reason_as_a_dead_letter(topic: bytes, payload: bytes,
                                                           reason: str) -> None:
    got = decoder().decode(message(topic, payload), 1, 0.0)
    assert got.lines == () and len(got.dead) == 1
    assert got.dead[0].reason == reason and got.dead[0].payload == payload


def test_decoding_refuses_a_conflicting_reading_and_rewrites_a_repeat() -> None:
    d = decoder()
    first = json.dumps(reading()).encode()
    assert d.decode(message(b"kits/KIT-1/telemetry", first), 1, 0.0).lines
    assert d.decode(message(b"kits/KIT-1/telemetry", first), 1, 0.0).lines
    other = json.dumps(reading(soc=1.0)).encode()
    got = d.decode(message(b"kits/KIT-1/telemetry", other), 1, 0.0)
    assert got.lines == () and [x.reason for x in got.dead] == [TS_CONFLICT]


def v2_message(count: int = 4, **over: Any) -> list[dict[str, Any]]:
    return [reading(ts=int(NOW) - 3600 + 900 * i, seq=7 + i, **over) for i in range(count)]


def test_a_v2_message_gives_one_line_per_reading_identical_to_v1s() -> None:
    readings = v2_message()
    got = decoder().decode(message(b"k/KIT-1/t", compact.encode_readings(readings)), 1, 0.0)
    v1_lines = tuple(encode_line(protocol.parse_telemetry("KIT-1", json.dumps(r).encode(), NOW))
                     for r in readings)
    assert got.lines == v1_lines and got.dead == ()  # a dashboard cannot tell them apart
    assert got.ts == readings[0]["ts"]


def test_a_v2_message_with_one_bad_reading_keeps_the_good_ones() -> None:
    readings = v2_message()
    payload = bytearray(compact.encode_readings(readings))
    rows = cbor2.loads(bytes(payload))
    rows[5][2][2] = 1500  # soc 150.0 %: out of range
    payload = bytearray(cbor2.dumps(rows))
    got = decoder().decode(message(b"k/KIT-1/t", bytes(payload)), 1, 0.0)
    assert len(got.lines) == 3 and " seq=9i," not in " ".join(got.lines)
    assert [(d.reason, d.payload) for d in got.dead] == [("invalid_field", bytes(payload))]
    assert "seq=9" in got.dead[0].detail and "soc" in got.dead[0].detail


@pytest.mark.parametrize(("payload", "reason"), [
    (b"\xff\x00", "not_cbor"),
    (cbor2.dumps({"v": 2}), "not_object"),
    (cbor2.dumps([3, 1, 1, int(NOW), None, [[0] * 8 + [False]]]), "wrong_version"),
    (cbor2.dumps([2, 1, 1, int(NOW), None, []]), "invalid_field"),
    (cbor2.dumps(cbor2.CBORTag(9999, 5)), "not_cbor"),
])
def test_a_v2_message_with_a_broken_envelope_is_refused_whole(payload: bytes,
                                                              reason: str) -> None:
    got = decoder().decode(message(b"k/KIT-1/t", payload), 1, 0.0)
    assert got.lines == () and [d.reason for d in got.dead] == [reason]


def test_a_v2_status_is_stored_like_a_v1_status() -> None:
    got = decoder().decode(message(b"k/K2/s", cbor2.dumps({"v": 2, "online": True})), 1, 0.0)
    assert got.lines == (f"kit_status,kit_id=K2 online=true {int(NOW)}",)
    v1_on_v2 = decoder().decode(message(b"k/K2/s", cbor2.dumps({"v": 1, "online": True})), 1, 0)
    assert [d.reason for d in v1_on_v2.dead] == ["wrong_version"]


def test_line_kit_id_reads_back_escaped_tags() -> None:
    # the contract allows no such id, but the line encoding must stay safe for any tag
    tele = protocol.parse_telemetry("KIT-1", json.dumps(reading()).encode(), NOW)
    tele = tele._replace(kit_id="TG a,b=c")
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


def test_spool_counts_match_its_segments_at_every_step(tmp_path: Path) -> None:
    """``records`` and ``size_bytes`` are read by the stats thread while the writer
    replays: each must be the truth after every step, a segment dropped included
    (read as sums over half-changed state they once showed 0 records with a segment of
    records still on disk)."""
    spool = Spool(tmp_path, max_bytes=10_000, segment_bytes=30)
    for i in range(7):
        assert spool.append(f"reading {i}".encode())

    def on_disk() -> tuple[int, int]:
        files = list(tmp_path.glob("*.spool"))
        return len(files), sum(f.stat().st_size for f in files)

    for left in range(7, 0, -1):
        assert spool.records == left and spool.size_bytes == on_disk()[1]
        assert spool.peek() is not None
        spool.commit()
    assert spool.records == 0 and spool.size_bytes == 0 and on_disk() == (0, 0)


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
