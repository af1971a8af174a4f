"""Scenarios: TOML/YAML loading, seed determinism, misbehaviour, clocks, data budget, a
small fleet with faults on a real broker (last will, buffered backlog, jittered reconnects),
and keypad kits typing the OpenPAYGO codes the control service issues for their payments."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
import uuid
from collections import Counter
from pathlib import Path

import openpaygo
import pytest
from paho.mqtt import subscribe

from cizo import protocol
from cizo.clock import FrozenClock
from cizo.settings import Settings
from control.commands import tokens
from control.payments import receipts
from firmware_sim.clocks import AcceleratedClock, DriftingClock
from firmware_sim.driven_kit import identity_for
from firmware_sim.driver import FleetDriver
from firmware_sim.firmware import KitFirmware
from firmware_sim.fleet_summary import summary_text
from firmware_sim.keypad import token_in_text
from firmware_sim.scenario import (
    DAY,
    FADE_STOP_DAYS,
    KeypadSpec,
    NetworkSpec,
    PlanSpec,
    RegionOutage,
    Scenario,
    build_plan,
    load_scenario,
    payment_schedule,
)
from firmware_sim.wire import OPENPAYGO_METRICS_KB, monthly_budget, pings_per_month
from payment_sim.paygate_wire import PAID
from tests.fleet_support import controlled_fleet, keypad_problems

TOML = """
name = "lome-pilot"
kits = 50
days = 10
sizes = { S = 0.6, M = 0.3, L = 0.1 }
regions = { Lome = 0.7, Kara = 0.3 }
misbehaviour = { tamper = 0.1, never_ack = 0.05 }
[keypad]
share = 0.2
delay_h = [0.5, 2]
[network]
drop_rate_per_day = 0.5
[[network.region_outages]]
region = "Kara"
start_day = 2
hours = 6
"""

YAML = """
name: lome-pilot
kits: 50
days: 10
sizes: {S: 0.6, M: 0.3, L: 0.1}
regions: {Lome: 0.7, Kara: 0.3}
misbehaviour: {tamper: 0.1, never_ack: 0.05}
keypad: {share: 0.2, delay_h: [0.5, 2]}
network:
  drop_rate_per_day: 0.5
  region_outages:
    - {region: Kara, start_day: 2, hours: 6}
"""


def test_toml_and_yaml_give_the_same_scenario(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(TOML)
    (tmp_path / "s.yaml").write_text(YAML)
    assert load_scenario(tmp_path / "s.toml") == load_scenario(tmp_path / "s.yaml")


def test_same_seed_same_fleet_and_events_other_seed_differs(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(TOML)
    sc = load_scenario(tmp_path / "s.toml")
    a, b, c = build_plan(sc, 1), build_plan(sc, 1), build_plan(sc, 2)
    assert a == b and a.events == b.events and len(a.events) > 50
    assert a.kits != c.kits
    kara = [k for k in a.kits if k.region == "Kara"]
    start = sc.start_ts + 2 * 86_400
    assert kara and all((start, start + 6 * 3600) in k.outages for k in kara)
    assert {k.behaviour for k in a.kits} >= {"daily", "weekly"}
    assert {k.size for k in a.kits} == {"S", "M", "L"}
    # keypad kits: the same ones for the same seed, both kinds, about the share asked for
    assert [k.keypad for k in a.kits] == [k.keypad for k in b.kits]
    assert [k.keypad for k in a.kits] != [k.keypad for k in c.kits]
    assert {k.keypad for k in a.kits} == {None, "only", "with_mqtt"}
    assert 4 <= sum(k.keypad is not None for k in a.kits) <= 18


def test_keypad_kits_come_from_their_own_stream() -> None:
    """Adding keypad kits changes no other draw, and a larger share keeps the smaller's kits."""
    base = Scenario(kits=200, days=7)
    none = build_plan(base, 7)
    ten = build_plan(base.model_copy(update={"keypad": KeypadSpec(share=0.1)}), 7)
    half = build_plan(base.model_copy(update={"keypad": KeypadSpec(share=0.5)}), 7)
    assert all(k.keypad is None for k in none.kits) and none.events == ten.events
    assert [dataclasses.replace(k, keypad=None) for k in ten.kits] == list(none.kits)
    picked_ten = {k.kit_id for k in ten.kits if k.keypad}
    picked_half = {k.kit_id for k in half.kits if k.keypad}
    assert 5 <= len(picked_ten) <= 40 and picked_ten < picked_half


def fading(seed: int, days: float = 120) -> list[tuple[float, int]]:
    """One "fades" customer's payments as (day, days bought), from a sale at 0."""
    plan = PlanSpec()
    out = payment_schedule("fades", plan, 0.0, days * DAY, random.Random(seed))
    return [(p.at / DAY, p.amount_fcfa // plan.daily_rate_fcfa) for p in out]


def test_a_fading_customer_is_seeded_and_each_seed_its_own() -> None:
    assert fading(5) == fading(5)
    assert len({tuple(fading(s)) for s in range(20)}) == 20
    # fixed points: a weekly payer whose strain began at once (top-ups of 5, 4, 3, 3 days,
    # paid 2, 3, 5 days after the last ran out), and a daily payer strained from day 24
    assert [(round(d, 1), n) for d, n in fading(0)] == [
        (0.7, 7), (7.7, 5), (14.7, 4), (21.7, 3), (29.7, 3)]
    assert [(round(d, 1), n) for d, n in fading(1)] == [
        *((d + 0.4, 1) for d in range(24)), (26.4, 1), (30.4, 1), (34.4, 1), (39.4, 1),
        (46.4, 1)]


def test_a_fading_customer_pays_less_and_later_then_stops() -> None:
    """A day or a week at a time and on time at first; once strained, the k-th top-up buys
    habit-2-k to habit-k days (at least 1) and the next payment comes k to k+2 days after it
    ran out; nothing is paid from a day in [35, 80)."""
    first_strained = []
    habits: Counter[int] = Counter()
    for seed in range(300):
        pays = fading(seed)
        days = [d for d, _ in pays]
        habit = pays[0][1]
        habits[habit] += 1
        assert days[0] < 1 and days[-1] < FADE_STOP_DAYS[1]
        k = 0
        for i, (day, bought) in enumerate(pays):
            on_time = i + 1 == len(pays) or abs(days[i + 1] - day - bought) < 1e-6
            if k == 0 and bought == habit and on_time:
                continue  # still paying its habit, on time
            k += 1
            if k == 1:
                first_strained.append(day)
            assert max(1, habit - 2 - k) <= bought <= max(1, habit - k)
            if i + 1 < len(pays):
                late = days[i + 1] - day - bought
                assert k - 1e-9 <= late <= k + 2 + 1e-9
        assert k >= 1, f"seed {seed}: never strained"
        # the payment that did not come was due on or after the earliest stop day
        assert days[-1] + pays[-1][1] + k + 2 >= FADE_STOP_DAYS[0]
    assert set(habits) == {1, 7} and min(habits.values()) > 100
    # the first strained top-up comes anywhere from the first days to about day 65
    assert min(first_strained) < 7 and max(first_strained) > 50


def test_fades_is_offered_but_not_in_the_default_mix() -> None:
    """A scenario may ask for it; the default mix (and so every seeded fleet built on it) is
    unchanged."""
    assert "fades" not in Scenario().payments
    sc = Scenario(kits=60, days=90, payments={"weekly": 1.0, "fades": 1.0})
    plan = build_plan(sc, 4)
    faders = [k for k in plan.kits if k.behaviour == "fades"]
    assert 15 <= len(faders) <= 45
    for k in faders:
        assert k.payments and k.payments[-1].at < sc.start_ts + FADE_STOP_DAYS[1] * DAY


def test_the_code_is_read_from_each_kind_of_sms() -> None:
    """What the customer reads: our receipt, token and owned texts (as the notifier renders
    them) give the code back; a receipt without one gives none."""
    settings = Settings()
    code = "048213397"
    values = {"kit_id": "TG-SIM-000123", "amount_fcfa": 700, "days": 7,
              "days_text": "7 jours ajoutés.", "credit_end": "31/01/2026 à 14:05",
              "token": code, "token_text": f" Code clavier : {code}.", "daily_rate_fcfa": 100}
    for name in ("receipt", "token", "owned"):
        assert token_in_text(receipts.render(settings, name, "d1", values)) == code, name
    assert token_in_text(receipts.render(settings, "receipt", "d1",
                                       values | {"token_text": ""})) is None


@pytest.mark.parametrize("bad", [
    {"sizes": {"XL": 1.0}},
    {"payments": {"sometimes": 1.0}},
    {"misbehaviour": {"explodes": 0.1}},
    {"network": {"region_outages": [{"region": "Nowhere", "start_day": 1, "hours": 1}]}},
    {"unknown_key": 1},
])
def test_bad_scenarios_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Scenario.model_validate(bad)


def test_drifting_clock_and_paused_accelerated_clock() -> None:
    base = FrozenClock(1_767_225_600)
    kit = DriftingClock(base, drift_ppm=100, offset_s=2)
    base.advance(86_400)
    assert kit.now() - base.now() == pytest.approx(2 + 8.64)
    acc = AcceleratedClock(1_767_225_600, speed=1000)
    acc.pause()
    t = acc.now()
    assert acc.now() == t and acc.paused
    acc.resume()
    assert not acc.paused and acc.real_seconds(1000) == 1.0


def test_an_accelerated_clock_stops_at_its_end_running_or_paused() -> None:
    start = 1_767_225_600
    acc = AcceleratedClock(start, speed=1e6, until=start + 60)  # a minute in 60 µs
    time.sleep(0.01)  # 10,000 s simulated, far past the end
    assert acc.now() == start + 60
    acc.pause()
    assert acc.now() == start + 60
    acc.resume()
    time.sleep(0.01)
    assert acc.now() == start + 60


def test_tamper_and_stuck_sensor() -> None:
    clock = FrozenClock(1_767_225_600 + 20 * 3600)
    fw = KitFirmware("K1", "11" * 32, clock)
    fw.tamper = True
    fw.telemetry()
    clock.advance(600)
    tele = fw.telemetry()
    assert tele["locked"] is True and tele["load_w"] > 0  # usage while locked
    fw.stuck_sensor = True
    first = fw.telemetry()
    for _ in range(5):
        clock.advance(3600)
        again = fw.telemetry()
    assert {k: again[k] for k in ("soc", "battery_v", "pv_w", "load_w", "temp_c")} == {
        k: first[k] for k in ("soc", "battery_v", "pv_w", "load_w", "temp_c")}
    assert again["load_wh_total"] > first["load_wh_total"]  # counters still move


def test_monthly_budget_arithmetic() -> None:
    assert pings_per_month(900, 300) == 2 * 2880
    assert pings_per_month(900, 1200) == 0
    b = monthly_budget(mqtt_bytes_out=1000, mqtt_bytes_in=500, packets_out=10, packets_in=5,
                       connects=1, sim_seconds=86_400, keepalive_s=1200,
                       report_interval_s=900, avg_publish_bytes=300)
    assert b.mqtt_kb == pytest.approx(45.0)
    assert b.total_kb > b.mqtt_kb and b.compact_total_kb < b.total_kb
    assert b.vs_openpaygo == pytest.approx(b.total_kb / OPENPAYGO_METRICS_KB)


def test_small_fleet_with_faults_on_a_real_broker(mosquitto) -> None:
    """Outages fire the last will, readings are buffered with their original timestamps
    and delivered on reconnect, misbehaving kits send what they are told to."""
    sc = Scenario(kits=12, days=1, speed=86_400 / 12, telemetry_interval_s=1800,
                  keepalive_s=30, regions={"A": 0.5, "B": 0.5},
                  misbehaviour={"malformed": 1.0, "wrong_kit_id": 1.0},
                  network=NetworkSpec(region_outages=[
                      RegionOutage(region="A", start_day=0.3, hours=4)],
                      reconnect_base_s=0.1, reconnect_cap_s=1.0))
    plan = build_plan(sc, 5)
    clock = AcceleratedClock(sc.start_ts, sc.speed)
    received: list[tuple[str, bytes]] = []

    async def run() -> FleetDriver:
        driver = FleetDriver(plan, clock, host="127.0.0.1", port=mosquitto.port)
        from firmware_sim.mqtt_async import MqttConnection

        async def on_msg(topic: str, payload: bytes, retained: bool) -> None:
            received.append((topic, payload))

        sub = MqttConnection("127.0.0.1", mosquitto.port, "scenario-sub", clean_session=True,
                             on_message=on_msg)
        await sub.connect()
        await sub.subscribe("kits/+/#", 1)
        await driver.run(progress_every_s=0.5)
        await asyncio.sleep(0.5)
        await sub.disconnect()
        return driver

    driver = asyncio.run(run())
    s = driver.summary()
    region_a = [k for k in driver.kits if k.plan.region == "A"]
    assert region_a and s.link_drops >= len(region_a) and s.reconnects >= len(region_a)
    assert s.buffered_total > 0 and s.buffered_now == 0
    wills = [p for t, p in received if t.endswith("/status") and json.loads(p)["online"] is False]
    assert len(wills) >= len(region_a)  # the broker announced each lost kit
    tele = [json.loads(p) for t, p in received if t.endswith("/telemetry")
            and p.startswith(b"{") and b'"ts"' in p]
    # buffered readings arrive late but keep the time they were taken: ts not monotone
    # in arrival order for region A kits
    for k in region_a:
        ts = [m["ts"] for m in tele if m["kit_id"] == k.kit_id]
        assert ts == sorted(ts) and len(ts) >= 40
    wrong = [m for m in tele if m["kit_id"].endswith("X")]
    assert wrong and s.misbehaviours > 0
    malformed = [p for t, p in received if t.endswith("/telemetry")]
    assert any(_is_malformed(p) for p in malformed)
    retained = subscribe.simple(  # type: ignore[no-untyped-call]
        protocol.status_topic(driver.kits[0].kit_id), hostname="127.0.0.1",
        port=mosquitto.port, retained=True)
    assert json.loads(retained.payload)["online"] is False  # clean stop says offline
    assert identity_for("K", 1) == identity_for("K", 1)


def _is_malformed(payload: bytes) -> bool:
    try:
        protocol.parse_telemetry("x", payload, 2e9)
    except protocol.ContractError as exc:
        return exc.reason != "kit_id_mismatch"
    return False


def test_codes_are_typed_in_order_after_their_delay_and_once(tmp_path: Path) -> None:
    """The customer's side of the keypad, without servers: codes read from the SMS file
    (a half-written last line waits), typed in the order received after the scenario's
    delay, each once; ``settle`` types the rest at once."""
    sc = Scenario(kits=3, days=2, keypad=KeypadSpec(share=1.0, with_mqtt=0.0,
                                                    delay_h=(1.0, 2.0)))
    plan = build_plan(sc, 1)
    clock = FrozenClock(sc.start_ts)
    driver = FleetDriver(plan, clock, host="127.0.0.1", port=1)
    kit, other = driver.kits[0], driver.kits[1]
    assert kit.keypad is not None and not kit.has_modem
    key = tokens.openpaygo_key(kit.identity.command_secret)
    count, add3 = openpaygo.generate_token(secret_key=key, count=0, value=3)
    count, add2 = openpaygo.generate_token(secret_key=key, count=count, value=2)
    outbox = tmp_path / "sms.jsonl"
    lines = [{"kind": "receipt", "kit_id": kit.kit_id, "text": f"reçu. Code clavier : {add3}."},
             {"kind": "receipt", "kit_id": "NOT-OURS", "text": f"Code clavier : {add2}."},
             {"kind": "token", "kit_id": kit.kit_id, "text": f"code {kit.kit_id} : {add3}."}]
    body = "".join(json.dumps(m) + "\n" for m in lines)
    partial = json.dumps({"kind": "receipt", "kit_id": kit.kit_id, "text": f"Code : {add2}"})
    outbox.write_text(body + partial[:20], encoding="utf-8")
    offset = driver.keypads.read_outbox(outbox, 0)
    assert offset == len(body.encode()) and len(kit.codes_due) == 1  # the repeat is ignored
    with outbox.open("a", encoding="utf-8") as fh:
        fh.write(partial[20:] + "\n")
    clock.advance(600)
    assert driver.keypads.read_outbox(outbox, offset) > offset and len(kit.codes_due) == 2
    (due3, _), (due2, _) = kit.codes_due
    assert sc.start_ts + 3600 <= due3 <= due2 <= sc.start_ts + 600 + 7200
    kit.type_due_codes(clock.now())
    assert kit.counters.tokens_entered == 0 and kit.firmware.locked  # not yet
    clock.advance(due3 - clock.now())
    kit.type_due_codes(clock.now())
    assert kit.counters.tokens_accepted == 1 and not kit.firmware.locked
    driver.settle()
    assert kit.counters.tokens_accepted == 2 and not kit.codes_due
    assert kit.firmware.credit_until == sc.start_ts + 5 * 86_400
    assert other.counters.tokens_entered == 0  # another kit's SMS is not ours
    kit.type_code(add3)  # typed again by mistake: refused, nothing changes
    assert kit.counters.tokens_rejected == 1
    assert kit.firmware.credit_until == sc.start_ts + 5 * 86_400


ADMIN = "keypad-admin-key-0123456789abcdef"
PAYGATE_TOKEN = "keypad-paygate-token"


def test_keypad_kits_type_the_codes_support_reads_out(mosquitto, tmp_path: Path) -> None:
    """Four kits, two simulated days, paying daily through the control API: a kit with no
    modem is unlocked by the codes it types alone, to the credit end the API shows; a keypad
    kit that also gets the MQTT commands converges once (not credited twice); a plain kit
    types nothing. The modemless kit was given 30 h of credit before the run: it types an
    activation code first. Run again, keypads resume from the codes already issued."""
    # the run ends at 18:00 on day 1, after both payments and before their codes' end (the
    # chain's whole days put it at midnight or later: a token's days are rounded)
    sc = Scenario(name="keypad", kits=4, kit_id_prefix=f"K{uuid.uuid4().hex[:4].upper()}-",
                  days=1.75, speed=2 * 86_400 / 5, telemetry_interval_s=6 * 3600,
                  keepalive_s=30, payments={"daily": 1.0},
                  plan=PlanSpec(deposit_fcfa=500, daily_rate_fcfa=100, total_price_fcfa=50_000),
                  keypad=KeypadSpec(share=0.6, with_mqtt=0.5, delay_h=(0.5, 2.0),
                                    source="support"),
                  network=NetworkSpec(reconnect_base_s=0.1, reconnect_cap_s=1.0))
    plan = build_plan(sc, 3)
    assert [k.keypad for k in plan.kits] == ["with_mqtt", "only", None, None]
    assert all(len(k.payments) == 2 for k in plan.kits)
    # provisioning and activation happen at the scenario's start (the clock is paused)
    with controlled_fleet(mosquitto, tmp_path, plan, admin_key=ADMIN,
                          paygate_token=PAYGATE_TOKEN, approve_after_s=0.1) as fleet:
        paygate = fleet.paygate
        only_id = plan.kits[1].kit_id
        r = fleet.api.post(f"/v1/kits/{only_id}/set-credit-until", json={
            "credit_until": int(sc.start_ts) + 30 * 3600, "reason": "installed with credit"})
        assert r.status_code == 200, r.text

        def problems(driver: FleetDriver) -> list[str]:
            return keypad_problems(driver.kits, fleet.accounts(),
                                   fleet.codes(driver.keypad_kits))

        async def run() -> FleetDriver:
            driver = fleet.driver(ramp_s=0.2)
            await driver.start()
            # flagged; the kit with credit typed its activation code (1 day: 30 h is
            # nearer one day than two on its chain), the other needs none: still locked
            only, mqtt = driver.kits[1], driver.kits[0]
            assert only.counters.tokens_accepted == 1 and not only.firmware.locked
            assert only.firmware.credit_until == sc.start_ts + 86_400
            assert mqtt.counters.tokens_entered == 0 and mqtt.firmware.locked
            await fleet.run_to(sc.end_ts, 0.05)
            await fleet.settle(driver, 30)
            assert len(paygate.sim.by_ref) == 8
            assert all(t.state == PAID for t in paygate.sim.by_ref.values())
            await fleet.converge(lambda: problems(driver), 30,
                                 "kits where their accounts and codes put them")
            await driver.stop()
            again = fleet.driver()
            await again.setup_keypads()
            for old, new in zip(driver.keypad_kits, again.keypad_kits, strict=True):
                assert old.keypad is not None and new.keypad is not None
                assert (new.keypad.count, new.keypad.chain_until) == (
                    old.keypad.count, old.keypad.chain_until)
                assert new.counters.tokens_entered == 0  # no new activation code
            return driver

        driver = asyncio.run(run())
        s = driver.summary()
        print("\n" + summary_text(s))
        assert problems(driver) == [] and s.payments_made == 8 and s.payments_failed == 0
        for k in driver.kits:
            # both payments' credit outlasts the run: every kit is unlocked at the end
            assert not k.firmware.locked and k.firmware.credit_until is not None
            assert k.firmware.credit_until > sc.end_ts, k.kit_id
            if k.plan.keypad is None:
                assert k.counters.tokens_entered == 0
                continue
            codes = 3 if k.plan.keypad == "only" else 2  # the activation code, then 2 paid
            assert k.counters.tokens_accepted == codes and k.counters.tokens_rejected == 0
            if k.plan.keypad == "only":  # no modem: only its keypad could unlock it
                assert k.wire.connects == 0 and k.counters.commands_received == 0
            else:  # it got the MQTT unlocks too, and did not add them to the codes'
                assert k.counters.commands_applied >= 2
                assert k.firmware.credit_until < sc.start_ts + 3 * 86_400 + 43_200
        assert s.keypad_kits == 2 and s.tokens_entered == 5 and s.tokens_accepted == 5
        assert "tokens entered     5 (5 accepted, 0 rejected) on 2 keypad kits" \
            in summary_text(s)


def test_a_settling_kit_inside_a_planned_outage_sleeps_instead_of_spinning() -> None:
    """At the end of a run (``settle``, clock paused) an outage no longer applies: a kit
    planned inside one must still sleep between rounds. It used to compute a wait of 0 from
    the outage's past start and loop without ever yielding, freezing the whole fleet."""
    sc = Scenario(kits=1, days=2, keypad=KeypadSpec(share=1.0, with_mqtt=0.0))
    plan = build_plan(sc, 1)
    clock = FrozenClock(sc.start_ts + 86_400)
    driver = FleetDriver(plan, clock, host="127.0.0.1", port=1)
    kit = driver.kits[0]
    kit.plan = dataclasses.replace(kit.plan, outages=((sc.start_ts + 80_000,
                                                       sc.start_ts + 90_000),))
    driver.settle()
    rounds = 0
    in_outage = kit.in_outage

    def counting(t: float) -> float | None:
        nonlocal rounds
        rounds += 1
        return in_outage(t)

    kit.in_outage = counting  # type: ignore[method-assign]

    async def live_a_little() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(kit.run(stop))
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(live_a_little())
    assert 1 <= rounds <= 3  # one round per TICK_REAL_S (0.5 s), not thousands


def test_a_kit_whose_link_drops_as_it_moves_to_v2_subscribes_there_on_reconnect(
        mosquitto) -> None:
    """A "protocol" command applied just as the link drops: the kit's subscription to its
    v2 command topic was never made, so its next connect must make it, although the
    broker kept its (v1) session. It used to trust that session and stay deaf to every
    later command while the server, told v2 by its status, sent only there (seen in the
    month under load: an unlock re-sent 13 times, never received)."""
    from firmware_sim.mqtt_async import MqttConnection

    sc = Scenario(kits=1, days=1, kit_id_prefix=f"P{uuid.uuid4().hex[:4].upper()}-")
    plan = build_plan(sc, 1)
    driver = FleetDriver(plan, AcceleratedClock(sc.start_ts, 1.0), host="127.0.0.1",
                         port=mosquitto.port)
    kit = driver.kits[0]
    assert kit.has_modem and kit.firmware.protocol == 1

    async def run() -> int:
        await kit.connect()  # v1, a persistent session subscribed to kits/{id}/cmd
        kit.firmware.protocol = protocol.V2  # what the applied "protocol" command does
        kit.conn.abort()  # ...and the link drops before the kit says so
        await kit._announce_once()
        await kit.connect()
        assert kit.conn.session_present
        server = MqttConnection("127.0.0.1", mosquitto.port, f"srv-{uuid.uuid4().hex[:6]}",
                                clean_session=True)
        await server.connect()
        server.publish(protocol.cmd_topic(kit.kit_id, protocol.V2), b"\xa0", 1)
        deadline = time.monotonic() + 5
        while kit.counters.commands_received == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await server.disconnect()
        await kit.stop()
        return kit.counters.commands_received

    assert asyncio.run(run()) == 1
