"""A fleet scenario with OpenPAYGO Metrics devices: simulated devices post their readings to
the real control service's /dd over HTTP on their schedule (one in CBOR, one in JSON) beside
an MQTT kit, the customers pay daily, and each device ends where its account says, having
entered every token the answers carried; its readings are in kit_telemetry."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from firmware_sim.driver import FleetDriver
from firmware_sim.fleet_summary import summary_text
from firmware_sim.scenario import MetricsSpec, NetworkSpec, PlanSpec, Scenario, build_plan
from payment_sim.paygate_wire import PAID
from telemetry.influx import InfluxClient
from tests.fleet_support import controlled_fleet, keypad_problems

ADMIN = "metrics-admin-key-0123456789abcdef"
PAYGATE_TOKEN = "metrics-paygate-token"


def test_metrics_devices_report_over_http_and_take_their_tokens(
        mosquitto: Any, influxd: Any, influx_db: str, tmp_path: Path) -> None:
    sc = Scenario(name="metrics", kits=3, kit_id_prefix=f"M{uuid.uuid4().hex[:4].upper()}-",
                  days=1.75, speed=2 * 86_400 / 5, telemetry_interval_s=900,
                  keepalive_s=30, payments={"daily": 1.0},
                  plan=PlanSpec(deposit_fcfa=500, daily_rate_fcfa=100, total_price_fcfa=50_000),
                  metrics=MetricsSpec(share=0.67, every_s=3 * 3600, cbor=0.5),
                  network=NetworkSpec(reconnect_base_s=0.1, reconnect_cap_s=1.0))
    plan = build_plan(sc, 12)
    assert [(k.kind, k.metrics_encoding) for k in plan.kits[:2]] == [
        ("openpaygo_metrics", "cbor"), ("openpaygo_metrics", "json")]
    assert plan.kits[2].kind == "mqtt"
    with controlled_fleet(mosquitto, tmp_path, plan, admin_key=ADMIN,
                          paygate_token=PAYGATE_TOKEN, approve_after_s=0.1,
                          influx_url=f"http://127.0.0.1:{influxd.port}",
                          influx_db=influx_db) as fleet:
        paygate = fleet.paygate

        def problems(driver: FleetDriver) -> list[str]:
            return keypad_problems(driver.kits, fleet.accounts(), {})

        async def run() -> FleetDriver:
            driver = fleet.driver(ramp_s=0.2)
            await driver.start()
            await fleet.run_to(sc.end_ts, 0.05)
            await fleet.settle(driver, 30)
            assert len(paygate.sim.by_ref) == 6
            assert all(t.state == PAID for t in paygate.sim.by_ref.values())
            for k in driver.metrics_kits:  # the last payment reaches them on their next post
                await k.post_metrics(fleet.clock.now())
            await fleet.converge(lambda: problems(driver), 30,
                                 "kits where their accounts put them")
            await driver.stop()
            return driver

        driver = asyncio.run(run())
        s = driver.summary()
        print("\n" + summary_text(s))
        assert s.payments_made == 6 and s.payments_failed == 0
        assert (s.metrics_kits, s.metrics_refused) == (2, 0) and s.metrics_requests >= 6
        assert "openpaygo metrics  " in summary_text(s)
        codes = fleet.codes(driver.metrics_kits)
        metrics_text = fleet.api.get("/metrics").text
    assert len(driver.metrics_kits) == 2
    with InfluxClient.from_settings(fleet.settings) as influx:
        for k in driver.metrics_kits:
            link = k.metrics
            assert link is not None
            # no MQTT at all; every post answered, signed, every token entered once
            assert k.wire.connects == 0 and link.counters.refused == 0
            assert link.counters.bad_answers == 0 and link.counters.requests >= 3
            assert len(codes[k.kit_id]) == link.counters.tokens_received >= 1
            assert k.counters.tokens_accepted == len(codes[k.kit_id])
            assert k.counters.tokens_rejected == 0
            assert not k.firmware.locked and k.firmware.credit_until is not None
            assert k.firmware.credit_until > sc.end_ts
            rows = influx.query(f"SELECT count(soc) FROM kit_telemetry "
                                f"WHERE kit_id = '{k.kit_id}'")
            assert rows and rows[0]["count"] == k.counters.telemetry_sent == \
                link.counters.steps_sent > 0
    mqtt_kit = driver.kits[2]
    assert mqtt_kit.metrics is None and mqtt_kit.counters.telemetry_sent > 0
    requests = sum(k.metrics.counters.requests for k in driver.metrics_kits if k.metrics)
    assert f'cizo_openpaygo_metrics_requests_total{{outcome="ok"}} {requests}' in metrics_text
    assert metrics_text.count("cizo_openpaygo_metrics_requests_total{") == 1  # none refused
