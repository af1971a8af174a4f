"""The whole slice on real servers: a kit reports, a customer pays, the kit unlocks;
credit runs out, the kit locks. Real Mosquitto, real influxd, SQLite and PostgreSQL,
the real control app over HTTP, the PayGate simulator over HTTP, a simulated kit over MQTT.
Only the clock is ours: it is moved instead of waiting for days."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from paho.mqtt import subscribe

from broker_bridge import Bridge
from cizo import protocol, services
from cizo.clock import ManualClock
from cizo.settings import Settings
from control.ledger.secrets import generate_secret_key
from control.main import build_app
from firmware_sim import KitIdentity, SimKit
from payment_sim.paygate import PayGateHandle, PayGateSimConfig, run_in_thread
from tests.support import ServerThread, wait_for

ADMIN = "e2e-admin-key-0123456789abcdef"
PAYGATE_TOKEN = "e2e-paygate-token"
DAY = 86_400


@dataclass
class Stack:
    settings: Settings
    clock: ManualClock
    api: httpx.Client
    paygate: PayGateHandle
    influx_url: str

    def kit(self, kit_id: str) -> dict[str, Any]:
        r = self.api.get(f"/v1/kits/{kit_id}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def influxql(self, q: str) -> list[list[Any]]:
        r = httpx.get(f"{self.influx_url}/query", params={"db": self.settings.influx_db, "q": q})
        r.raise_for_status()
        result = r.json()["results"][0]
        return [row for series in result.get("series", []) for row in series["values"]]


@pytest.fixture
def stack(mosquitto, influxd, influx_db: str, database_url: str, tmp_path) -> Iterator[Stack]:
    api_port = services.free_port()
    run = uuid.uuid4().hex[:8]
    settings = Settings(
        mqtt_port=mosquitto.port, mqtt_client_id=f"control-{run}",
        influx_url=f"http://127.0.0.1:{influxd.port}", influx_db=influx_db,
        influx_flush_interval_s=0.1, database_url=database_url,
        api_port=api_port, admin_api_key=ADMIN, secret_key=generate_secret_key(),
        paygate_auth_token=PAYGATE_TOKEN, sweep_interval_s=0.5,
        sim_telemetry_interval_s=1.0, data_dir=tmp_path,
    )
    paygate = run_in_thread(PayGateSimConfig(
        auth_token=PAYGATE_TOKEN, approve_after_s=0.3,
        callback_url=f"http://127.0.0.1:{api_port}/v1/payments/paygate",
    ))
    settings = settings.model_copy(update={"paygate_url": paygate.url})
    clock = ManualClock()
    bridge = Bridge(settings, clock, client_id=f"bridge-{run}")
    app = build_app(settings, clock)
    try:
        with ServerThread(app, api_port) as server, httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
        ) as api:
            bridge.start()
            yield Stack(settings, clock, api, paygate, f"http://127.0.0.1:{influxd.port}")
            bridge.stop()
    finally:
        paygate.stop()


def provision(stack: Stack, kit_id: str) -> KitIdentity:
    r = stack.api.post("/v1/kits", json={
        "kit_id": kit_id, "phone": "+22890112233",
        "plan": {"deposit_fcfa": 5000, "daily_rate_fcfa": 100, "total_price_fcfa": 41_500},
    })
    assert r.status_code == 201, r.text
    c = r.json()
    return KitIdentity(c["kit_id"], c["mqtt_username"], c["mqtt_password"], c["command_secret"])


def command(stack: Stack, command_id: str) -> dict[str, Any]:
    r = stack.api.get(f"/v1/commands/{command_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_kit_reports_customer_pays_kit_unlocks_credit_ends_kit_locks(stack: Stack) -> None:
    kit_id = f"E2E{uuid.uuid4().hex[:8].upper()}"
    identity = provision(stack, kit_id)
    kit = SimKit(identity, stack.settings, stack.clock)
    kit.start()
    try:
        # 1. telemetry reaches InfluxDB and is read back with InfluxQL
        # a point's fields land in influxd one by one: a query racing the write can see
        # `locked` before `soc`, so wait for a whole point
        rows = wait_for(lambda: [r for r in stack.influxql(
            f"SELECT soc, locked FROM kit_telemetry WHERE kit_id = '{kit_id}'")
            if None not in r], what="telemetry in InfluxDB")
        assert rows[0][2] is True  # a new kit is locked until it is paid
        assert 0 <= rows[0][1] <= 100
        wait_for(lambda: stack.kit(kit_id)["online"], what="kit online")

        # 2. the customer pays 700 FCFA through PayGate: exactly 7 days, unlocked, applied
        r = stack.api.post("/v1/payments/intents", json={
            "kit_id": kit_id, "amount_fcfa": 700, "phone": "+22890112233",
            "network": "TMONEY"})
        assert r.status_code == 201, r.text
        identifier = r.json()["identifier"]
        paid_at = int(stack.clock.now())
        wait_for(lambda: stack.api.get(f"/v1/payments/{identifier}").json()["status"]
                 == "credited", what="payment credited")
        wait_for(lambda: stack.kit(kit_id)["locked"] is False, what="kit reports unlocked")
        state = stack.kit(kit_id)
        assert paid_at + 7 * DAY <= state["credit_until"] <= paid_at + 7 * DAY + 5
        assert state["paid_total_fcfa"] == 5700
        unlock = next(c for c in state["latest_commands"] if c["action"] == "unlock")
        wait_for(lambda: command(stack, unlock["id"])["status"] == "applied",
                 what="unlock applied")
        assert kit.firmware.credit_until == state["credit_until"]
        # the retained command on the kit's topic is signed with the kit's own secret
        retained = subscribe.simple(  # type: ignore[no-untyped-call]
            protocol.cmd_topic(kit_id), hostname="127.0.0.1", port=stack.settings.mqtt_port,
            retained=True)
        signed = json.loads(retained.payload)
        assert signed["id"] == unlock["id"] and signed["action"] == "unlock"
        assert protocol.verify(signed, identity.command_secret)

        # 3. a forged callback credits nothing; the real one delivered again credits once
        forged = {"tx_reference": 999, "identifier": "FORGED-1", "payment_reference": "X",
                  "amount": 100_000, "datetime": "2026-01-01T00:00:00Z",
                  "payment_method": "FLOOZ", "phone_number": "22890112233"}
        assert stack.api.post("/v1/payments/paygate", json=forged).status_code == 200
        tx = next(t for t in httpx.get(f"{stack.paygate.url}/_sim/transactions").json()
                  if t["identifier"] == identifier)
        replay = {k: tx[k] for k in ("tx_reference", "identifier", "payment_reference",
                                      "amount", "datetime", "payment_method", "phone_number")}
        assert stack.api.post("/v1/payments/paygate", json=replay).status_code == 200
        assert stack.kit(kit_id)["paid_total_fcfa"] == 5700
        assert stack.kit(kit_id)["credit_until"] == state["credit_until"]

        # 4. time passes beyond the credit end: the sweep locks the kit, the kit applies it
        stack.clock.advance(7 * DAY + 60)
        def lock_applied() -> bool:
            s = stack.kit(kit_id)
            return s["locked"] is True and any(
                c["action"] == "lock" and c["status"] == "applied" for c in s["latest_commands"])

        wait_for(lock_applied, what="lock applied")
        locked = stack.kit(kit_id)
        assert command(stack, unlock["id"])["status"] == "applied"  # applied is final
        assert locked["paid_total_fcfa"] == 5700
    finally:
        kit.stop()


def test_a_kit_moved_to_v2_by_a_command_keeps_reporting_and_obeying(stack: Stack) -> None:
    """``cizo up``'s fleet (``SimKit``): the ``protocol`` command moves the kit to v2, it
    says so in its v2 status, its readings arrive through the v2 topic (batched), and the
    next payment's unlock reaches it as a signed v2 command that it applies."""
    kit_id = f"E2V{uuid.uuid4().hex[:8].upper()}"
    kit = SimKit(provision(stack, kit_id), stack.settings, stack.clock)
    kit.start()
    try:
        wait_for(lambda: stack.kit(kit_id)["online"], what="kit online")
        r = stack.api.post(f"/v1/kits/{kit_id}/protocol", json={"version": 2})
        assert r.status_code in (200, 201), r.text
        switch = r.json()["id"]
        wait_for(lambda: command(stack, switch)["status"] == "applied", what="switch applied")
        assert kit.firmware.protocol == protocol.V2
        wait_for(lambda: stack.kit(kit_id)["protocol_version"] == 2,
                 what="the server follows the kit's v2 status")
        before = len(stack.influxql(f"SELECT soc FROM kit_telemetry WHERE kit_id = '{kit_id}'"))
        wait_for(lambda: len(stack.influxql(
            f"SELECT soc FROM kit_telemetry WHERE kit_id = '{kit_id}'")) >= before + 4,
            timeout_s=30, what="a v2 batch of readings in InfluxDB")

        r = stack.api.post("/v1/payments/intents", json={
            "kit_id": kit_id, "amount_fcfa": 300, "phone": "+22890112233",
            "network": "FLOOZ"})
        assert r.status_code == 201, r.text
        wait_for(lambda: stack.kit(kit_id)["locked"] is False, what="kit reports unlocked")
        unlock = next(c for c in stack.kit(kit_id)["latest_commands"]
                      if c["action"] == "unlock")
        wait_for(lambda: command(stack, unlock["id"])["status"] == "applied",
                 what="v2 unlock applied")
        assert kit.firmware.credit_until == stack.kit(kit_id)["credit_until"]
        assert kit.stats().commands_rejected == 0
    finally:
        kit.stop()
