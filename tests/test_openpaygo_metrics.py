"""The OpenPAYGO Metrics door (POST /dd) with the openpaygo library's MetricsRequestHandler
playing the device (firmware_sim.metrics_device), against the real app, a real influxd and
the ledger on SQLite and PostgreSQL: readings land in kit_telemetry like MQTT kits', the
answer carries the ledger's active-until time and the pending tokens, and every bad
request is refused with its code, stores nothing and is counted in /metrics."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import openpaygo
import pytest
from openpaygo.metrics_shared import OpenPAYGOMetricsShared
from sqlalchemy import select

from control.api import create_app
from control.fleet import jobs
from control.ledger.models import Account, Kit, KitMetrics, KitToken
from control.payments import receipts
from control.runtime import Runtime
from firmware_sim.metrics_device import (
    CONTENT_TYPES,
    build_request,
    decode_answer,
    encode,
    step_of,
)
from telemetry import rollups
from telemetry.influx import InfluxClient
from tests.api_support import Keys, TestClient, provision, serve_in_thread
from tests.payments_support import agent_payment, post_at_once, post_webhook, webhook_secret

pytestmark = pytest.mark.integration

SERIAL = "OPM-000001"


def reading(ts: int, **over: Any) -> dict[str, Any]:
    return {"ts": ts, "battery_v": 12.9, "soc": 77, "pv_w": 41.5, "load_w": 9, "pv_wh_total":
            1200.5, "load_wh_total": 640, "temp_c": 30.5, "locked": False, **over}


@dataclass
class Device:
    """A Metrics device as its maker flashed it: serial, key, counters."""

    serial: str
    key: str
    request_count: int = 0
    token_count: int = 0
    used_counts: list[int] = field(default_factory=list)

    def request(self, now: int, *, n: int = 4, rc: int | None = None, **kw: Any
                ) -> dict[str, Any]:
        self.request_count = rc if rc is not None else self.request_count + 1
        steps = [step_of(reading(now - 900 * i)) for i in range(n)]
        return build_request(self.serial, self.key, steps=steps, timestamp=now,
                             request_count=self.request_count, token_count=self.token_count,
                             **kw)


def post(client: TestClient, request: dict[str, Any] | bytes, encoding: str = "json",
         content_type: str | None = None) -> Any:
    body = request if isinstance(request, bytes) else encode(request, encoding)  # type: ignore[arg-type]
    ctype = CONTENT_TYPES[encoding] if content_type is None else content_type  # type: ignore[index]
    return client.post("/dd", content=body, headers={"content-type": ctype} if ctype else {})


def answer_of(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 201, resp.text
    out: dict[str, Any] = decode_answer(resp.content, resp.headers["content-type"])
    return out


def stored(rt: Runtime, kit_id: str) -> list[dict[str, Any]]:
    with InfluxClient.from_settings(rt.settings) as c:
        return c.query(f"SELECT * FROM kit_telemetry WHERE kit_id = '{kit_id}'")


def counted(client: TestClient, outcome: str) -> int:
    text = client.get("/metrics").text
    line = f'cizo_openpaygo_metrics_requests_total{{outcome="{outcome}"}} '
    found = [ln for ln in text.splitlines() if ln.startswith(line)]
    return int(found[0].split()[-1]) if found else 0


@pytest.fixture(name="device")
def device_fixture(rt: Runtime, client: TestClient, keys: Keys, influxd: Any,
                   influx_db: str) -> Device:
    rt.settings.influx_url = f"http://127.0.0.1:{influxd.port}"
    rt.settings.influx_db = influx_db
    creds = provision(client, keys.admin, SERIAL, kind="openpaygo_metrics")
    assert creds["kind"] == "openpaygo_metrics" and len(creds["openpaygo_key"]) == 32
    return Device(SERIAL, creds["openpaygo_key"])


@pytest.mark.parametrize("encoding", ["json", "cbor"])
def test_condensed_request_stores_readings_like_mqtt_kits_and_gets_a_signed_answer(
        rt: Runtime, client: TestClient, keys: Keys, device: Device, encoding: str) -> None:
    now = int(rt.clock.now())
    request = device.request(now)
    answer = answer_of(post(client, request, encoding))
    with rt.db.session() as s:
        kit = s.get(Kit, SERIAL)
        assert kit is not None and kit.metrics_request_count == 1
        assert kit.metrics_request_ts == now and kit.keypad_only
        until = s.scalar(select(Account.credit_until).where(Account.kit_id == SERIAL))
    assert until is None and answer["auts"] == 0  # the deposit buys no days: locked
    # the answer is signed with the device's key over what it carries (spec: data auth)
    expected = OpenPAYGOMetricsShared.generate_response_signature_from_data(
        serial_number=SERIAL, request_count=1, timestamp=now, secret_key=device.key,
        data={"active_until_timestamp": answer["auts"], "token_list": answer.get("tkl")})
    assert answer["a"] == expected
    rows = stored(rt, SERIAL)
    assert sorted(r["time"] for r in rows) == [now - 2700, now - 1800, now - 900, now]
    row = rows[-1]
    assert row["kit_id"] == SERIAL and row["soc"] == 77 and row["battery_v"] == 12.9
    assert row["pv_w"] == 41.5 and row["load_wh_total"] == 640 and row["locked"] is False
    assert row["seq"] == 1 and row["boot"] == 0 and row["temp_c"] == 30.5
    assert counted(client, "ok") == 1
    kits = client.get("/v1/kits", headers=Keys.auth(keys.operator)).json()["items"]
    assert [k["kind"] for k in kits if k["kit_id"] == SERIAL] == ["openpaygo_metrics"]
    export = client.get("/v1/exports/kits.csv", params={"columns": "kit_id,kind"},
                        headers=Keys.auth(keys.operator))
    assert f"{SERIAL},openpaygo_metrics" in export.text.splitlines()


def test_simple_request_on_timestamp_alone_with_data_auth(
        rt: Runtime, client: TestClient, device: Device) -> None:
    now = int(rt.clock.now())
    first = build_request(SERIAL, device.key, steps=[step_of(reading(now - 60))],
                          timestamp=now, request_count=None, condensed=False, auth="da",
                          asks="asl")
    assert "serial_number" in first and "rc" not in first
    answer = answer_of(post(client, first))
    assert answer["asl"] == 0 and "auts" not in answer  # no credit yet
    assert [r["time"] for r in stored(rt, SERIAL)] == [now - 60]
    again = build_request(SERIAL, device.key, steps=[step_of(reading(now - 30))],
                          timestamp=now, request_count=None, condensed=False, auth="da")
    resp = post(client, again)
    assert resp.status_code == 409 and resp.json()["code"] == "replay"


def test_every_bad_request_is_refused_with_its_code_stores_nothing_and_is_counted(
        rt: Runtime, client: TestClient, keys: Keys, device: Device) -> None:
    now = int(rt.clock.now())
    taken = device.request(now - 3600, n=1)
    answer_of(post(client, taken))
    before = len(stored(rt, SERIAL))
    provision(client, keys.admin, "MQTT-KIT-1")  # a kit, but not a Metrics device
    limit = rt.settings.metrics_max_body_bytes
    forged = device.request(now)
    forged["a"] = "ra" + "0" * 16
    tampered = device.request(now)
    tampered["hd"][0][1] = 5  # the state of charge changed after signing
    other = Device("MQTT-KIT-1", device.key).request(now)
    cases: list[tuple[str, Any, str | None, int, str]] = [
        ("bad signature", forged, None, 401, "bad_signature"),
        ("data changed after signing", tampered, None, 401, "bad_signature"),
        ("no signature", {k: v for k, v in device.request(now).items() if k != "a"}, None,
         401, "missing_signature"),
        ("replay", taken, None, 409, "replay"),
        ("unknown serial", Device("NOPE-1", device.key).request(now), None, 404,
         "unknown_serial"),
        ("an MQTT kit's serial", other, None, 404, "unknown_serial"),
        # the public endpoints' one body path (control.api.bodies) refuses these
        ("not JSON", b'{"sn":"' + SERIAL.encode() + b'",', None, 400, "body_not_json"),
        ("bad UTF-8", b'{"sn":"\xff\xfe"}', None, 400, "body_not_utf8"),
        ("not an object", b"[1,2,3]", None, 422, "body_not_object"),
        ("NaN", b'{"sn":"x","rc":NaN}', None, 400, "body_not_finite"),
        ("too deep", b'{"sn":' + b"[" * 50 + b"]" * 50 + b"}", None, 400, "body_too_deep"),
        ("oversized", b'{"sn":"' + b"x" * limit + b'"}', None, 413, "body_too_large"),
        ("wrong content type", device.request(now), "text/plain", 415,
         "unsupported_media_type"),
        ("no content type", device.request(now), "", 415, "unsupported_media_type"),
        # the door's own: deeper than a device's data ever is, or CBOR JSON cannot say
        ("deep for a device", b'{"sn":' + b"[" * 7 + b"]" * 7 + b"}", None, 400,
         "malformed_body"),
        ("CBOR bytes", b"\xa1\x62sn\x43abc", "application/cbor", 400, "malformed_body"),
        ("CBOR not an object", b"\x83\x01\x02\x03", "application/cbor", 400,
         "malformed_body"),
        ("unknown data format", {**device.request(now), "df": 99}, None, 400,
         "unknown_data_format"),
        ("no count, no time", {"sn": SERIAL, "d": [0], "a": "sa0"}, None, 400,
         "missing_request_count"),
    ]
    for name, body, ctype, status, code in cases:
        seen = counted(client, code)
        resp = post(client, body, content_type=ctype)
        assert (resp.status_code, resp.json().get("code")) == (status, code), (name, resp.text)
        assert resp.json()["detail"], name
        assert counted(client, code) == seen + 1, name
    assert len(stored(rt, SERIAL)) == before  # nothing stored by any of them
    with rt.db.session() as s:
        kit = s.get(Kit, SERIAL)
        assert kit is not None and kit.metrics_request_count == taken["rc"]
    assert counted(client, "ok") == 1


def test_a_reading_out_of_contract_refuses_the_whole_request(
        rt: Runtime, client: TestClient, device: Device) -> None:
    now = int(rt.clock.now())
    steps = [step_of(reading(now)), step_of(reading(now - 900, soc=140))]  # soc > 100 %
    request = build_request(SERIAL, device.key, steps=steps, timestamp=now, request_count=1)
    resp = post(client, request)
    assert resp.status_code == 422 and resp.json()["code"].startswith("bad_reading.")
    short = build_request(SERIAL, device.key, steps=[{"battery_voltage": 12.0, "timestamp": now}],
                          timestamp=now, request_count=2)
    resp = post(client, short)
    assert (resp.status_code, resp.json()["code"]) == (422, "bad_reading.missing_variable")
    assert stored(rt, SERIAL) == []
    with rt.db.session() as s:
        kit = s.get(Kit, SERIAL)
        assert kit is not None and kit.metrics_request_count is None  # a retry may reuse it


def test_a_payment_reaches_the_device_as_a_token_on_its_next_request(
        rt: Runtime, client: TestClient, device: Device) -> None:
    rt.on_credit(receipts.on_credit)  # as control.main does: the receipt issues the token
    now = int(rt.clock.now())
    first = answer_of(post(client, device.request(now)))
    # the deposit's days, as an activation token the device has not entered yet
    for token in first.get("tkl", []):
        enter(device, token)
    secret = webhook_secret(rt)
    r = post_webhook(client, secret, agent_payment("AGT-OPM-1", 700, reference=SERIAL))
    assert r.status_code in (200, 201), r.text
    with rt.db.session() as s:
        issued = s.scalars(select(KitToken).where(KitToken.payment_id.is_not(None))).one()
        assert issued.kit_id == SERIAL and issued.delivered_at is None
        until = s.scalar(select(Account.credit_until).where(Account.kit_id == SERIAL))
    answer = answer_of(post(client, device.request(now + 60)))
    assert answer["tkl"] == [issued.token] and answer["auts"] == until
    value, ttype = enter(device, issued.token)
    assert (ttype, value) == (openpaygo.TokenType.ADD_TIME, 7)
    with rt.db.session() as s:
        tok = s.get(KitToken, issued.id)
        assert tok is not None and tok.delivered_at is not None
    # entered: nothing more to deliver; an answer that was lost is sent again by count
    assert answer_of(post(client, device.request(now + 120)))["tkl"] == []
    lost = Device(SERIAL, device.key, request_count=device.request_count,
                  token_count=device.token_count - 1)
    assert answer_of(post(client, lost.request(now + 240)))["tkl"] == [issued.token]


def enter(device: Device, token: str) -> tuple[Any, Any]:
    """The device decodes a token from the answer (openpaygo.decode_token)."""
    value, ttype, count, used = openpaygo.decode_token(
        token=str(token), secret_key=device.key, count=device.token_count,
        used_counts=device.used_counts)
    assert ttype not in (openpaygo.TokenType.INVALID, openpaygo.TokenType.ALREADY_USED)
    device.token_count = max(device.token_count, int(count))
    device.used_counts = list(used or [])
    return value, ttype


def test_the_replay_guard_survives_a_restart(rt: Runtime, client: TestClient,
                                             device: Device) -> None:
    now = int(time.time())
    request = device.request(now, rc=41)
    server = serve_in_thread(create_app(rt))
    try:
        r = httpx.post(f"{server.url}/dd", content=json.dumps(request),
                       headers={"content-type": "application/json"})
        assert r.status_code == 201, r.text
    finally:
        server.stop()
    again = Runtime.build(rt.settings, clock=rt.clock)  # a new process on the same ledger
    server = serve_in_thread(create_app(again))
    try:
        r = httpx.post(f"{server.url}/dd", content=json.dumps(request),
                       headers={"content-type": "application/json"})
        assert (r.status_code, r.json()["code"]) == (409, "replay")
        r = httpx.post(f"{server.url}/dd", content=json.dumps(device.request(now + 1)),
                       headers={"content-type": "application/json"})
        assert r.status_code == 201, r.text
    finally:
        server.stop()
        again.close()


def test_a_swapped_device_stays_a_metrics_device_with_a_new_key(
        rt: Runtime, client: TestClient, keys: Keys, device: Device) -> None:
    r = client.post(f"/v1/kits/{SERIAL}/swap", json={"new_kit_id": "OPM-000002",
                                                     "reason": "faulty"},
                    headers=Keys.auth(keys.support))
    assert r.status_code == 200, r.text
    creds = r.json()["credentials"]
    assert creds["kind"] == "openpaygo_metrics" and len(creds["openpaygo_key"]) == 32
    now = int(rt.clock.now())
    answer_of(post(client, Device("OPM-000002", creds["openpaygo_key"]).request(now)))
    resp = post(client, device.request(now))  # the old one is decommissioned
    assert (resp.status_code, resp.json()["code"]) == (404, "unknown_serial")


def test_influxdb_away_is_a_503_that_keeps_nothing(
        rt: Runtime, client: TestClient, device: Device) -> None:
    now = int(rt.clock.now())
    request = device.request(now)
    influx_url = rt.settings.influx_url
    rt.settings.influx_url = "http://127.0.0.1:9"  # nothing listens there
    try:
        resp = post(client, request)
    finally:
        rt.settings.influx_url = influx_url
    assert (resp.status_code, resp.json()["code"]) == (503, "storage_unavailable")
    with rt.db.session() as s:
        kit = s.get(Kit, SERIAL)
        assert kit is not None and kit.metrics_request_count is None
    answer_of(post(client, request))  # the same request, once InfluxDB is back
    assert len(stored(rt, SERIAL)) == 4


def test_two_copies_racing_one_is_taken(rt: Runtime, device: Device) -> None:
    request = device.request(int(rt.clock.now()))
    server = serve_in_thread(create_app(rt))
    try:
        answers = post_at_once(server.url, "/dd", 4, content=json.dumps(request),
                               headers={"content-type": "application/json"})
    finally:
        server.stop()
    assert sorted(status for status, _ in answers) == [201, 409, 409, 409]
    assert len(stored(rt, SERIAL)) == 4


def test_a_device_is_on_the_kit_page_and_in_the_analytics(
        rt: Runtime, client: TestClient, keys: Keys, device: Device) -> None:
    now = int(rt.clock.now())
    answer_of(post(client, device.request(now, n=8)))
    detail = client.get(f"/v1/kits/{SERIAL}", headers=Keys.auth(keys.operator)).json()
    assert detail["last_telemetry"]["soc"] == 77 and detail["last_seen"] is not None
    later = now + 2 * 3600  # the readings' hours are complete
    assert rollups.ensure_tiers(rt.settings)
    rollups.run_rollups(rt.settings, later)
    findings = jobs.run_analytics(rt.settings, rt.db, later)
    assert findings is not None  # None only when another process holds the job's lease
    with rt.db.session() as s:
        found = s.get(KitMetrics, SERIAL)
        assert found is not None and found.energy_wh_30d is not None
    assert [f for f in findings if f.kit_id == SERIAL and f.kind == "silent"] == []
