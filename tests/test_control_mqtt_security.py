"""Command security end to end over a real Mosquitto: the simulated kit refuses forged, replayed,
expired and other-kit commands; a secret rotates without travelling; a support unlock is
seen applied; a swapped-out kit's retained command is cleared."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from cizo import protocol as p
from cizo import services
from cizo.clock import SystemClock
from cizo.settings import Settings
from control.api import create_app
from control.commands.mqtt_link import MqttLink
from control.ledger import credit
from control.ledger.accounts import SYSTEM, ProvisionedKit, provision_kit
from control.ledger.db import migrate
from control.ledger.models import Command, Kit
from control.ledger.secrets import generate_secret_key
from control.runtime import Runtime
from control.security.api_keys import create_api_key
from firmware_sim import KitIdentity, SimKit
from tests.api_support import TestClient
from tests.support import Watcher, wait_for

pytestmark = pytest.mark.integration

PLAN = credit.Plan(deposit_fcfa=0, daily_rate_fcfa=100, total_price_fcfa=50_000)


@dataclass
class World:
    rt: Runtime
    link: MqttLink
    kit: SimKit
    creds: ProvisionedKit
    watcher: Watcher
    port: int


@pytest.fixture
def world(mosquitto: services.ManagedProcess, tmp_path: Path) -> Iterator[World]:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate(url)
    run = uuid.uuid4().hex[:8]
    settings = Settings(database_url=url, secret_key=generate_secret_key(),
                        mqtt_port=mosquitto.port, mqtt_keepalive_s=5,
                        sim_telemetry_interval_s=5.0, paygate_url="http://127.0.0.1:9",
                        data_dir=tmp_path, command_resend_after_s=2)
    rt = Runtime.build(settings, SystemClock())
    kit_id = f"SEC{run}"
    with rt.db.session() as s:
        creds = provision_kit(s, kit_id=kit_id, desco_id="default",
                              phone_e164="+22890000002", plan=PLAN, box=rt.box,
                              now=rt.clock.now(), actor=SYSTEM, deposit_paid=False)
    link = MqttLink(settings, rt.service, client_id=f"control-{run}")
    rt.service.publisher = link
    link.start()
    assert link.wait_connected(10)
    watcher = Watcher(mosquitto.port, kit_id)
    kit = SimKit(KitIdentity(kit_id, None, None, creds.command_secret), settings, rt.clock)
    kit.start()
    wait_for(lambda: kit.connected, what="kit connected")
    yield World(rt, link, kit, creds, watcher, mosquitto.port)
    kit.stop()
    link.stop()
    for topic in (p.status_topic(kit_id), p.cmd_topic(kit_id)):
        watcher.publish(topic, b"", retain=True)
    watcher.close()
    rt.paygate.close()
    rt.db.dispose()


def _ack_for(w: World, cmd_id: str) -> dict[str, object]:
    _, ack = w.watcher.wait_for(
        lambda t, d, r: t == p.ack_topic(w.kit.kit_id) and d is not None and d["id"] == cmd_id)
    assert isinstance(ack, dict)
    return ack


def test_kit_refuses_forged_replayed_expired_and_other_kit_commands(world: World) -> None:
    w, kit_id, secret = world, world.kit.kit_id, world.creds.command_secret
    now = int(time.time())

    def send(cmd_id: str, seq: int, *, key: str = secret, target: str = kit_id,
             expires: int = now + 3600, until: int = now + 86_400) -> dict[str, object]:
        cmd = p.build_command(kit_id=target, command_id=cmd_id, seq=seq, action="unlock",
                              credit_until=until, issued_at=now, expires_at=expires,
                              secret_hex=key)
        w.watcher.publish(p.cmd_topic(kit_id), p.encode(cmd))
        return _ack_for(w, cmd_id)

    good = send("ok-5", 5)
    assert good["result"] == "applied" and good["locked"] is False
    other = p.new_command_secret()
    assert send("forged", 6, key=other)["reason"] == "bad_signature"
    assert send("other-kit", 7, target="SOMEONE-ELSE")["reason"] == "wrong_kit"
    assert send("old-seq", 4, until=now + 99 * 86_400)["reason"] == "replayed_seq"
    assert send("late", 8, expires=now - 1)["reason"] == "expired"
    # the exact command already applied, delivered again: acked applied, nothing changes
    assert send("ok-5", 5)["result"] == "applied"
    assert w.kit.firmware.credit_until == now + 86_400 and w.kit.firmware.last_seq == 5


def test_secret_rotates_without_travelling_and_acks_prove_it(world: World) -> None:
    w, rt, kit_id = world, world.rt, world.kit.kit_id
    old = w.creds.command_secret
    with rt.db.session() as s:
        kit = s.get(Kit, kit_id)
        assert kit is not None
        rot = rt.service.rotate_secret(s, kit)
        row = s.get(Command, rot.id)
        assert row is not None
        rot_id, nonce = rot.id, row.nonce
    assert nonce is not None and len(nonce) == 32
    rt.service.send([rot.outgoing])
    _, wire = w.watcher.wait_for(lambda t, d, r: t == p.cmd_topic(kit_id) and d is not None
                                 and d["id"] == rot_id)
    assert old not in json.dumps(wire)  # only the nonce travels
    new = p.derive_rotated_secret(old, nonce)

    def rotated() -> bool:
        with rt.db.session() as s:
            k, c = s.get(Kit, kit_id), s.get(Command, rot_id)
            return bool(k and c and c.status == "applied" and k.secret_next_enc is None
                        and rt.box.decrypt(k.secret_enc) == new)

    wait_for(rotated, what="rotation applied and adopted")
    assert w.kit.firmware.secret_hex == new
    # the next state command is signed with the new secret, and the kit applies it
    with rt.db.session() as s:
        from control.ledger.accounts import account_for_kit
        acct = account_for_kit(s, kit_id)
        assert acct is not None
        acct.credit_until = int(rt.clock.now()) + 3 * 86_400
        cmd = rt.service.converge_kit(s, kit_id, origin="support")
        assert cmd is not None
        cid = cmd.id
    rt.service.send([cmd.outgoing])
    ack = _ack_for(w, cid)
    assert ack["result"] == "applied" and p.verify(dict(ack), new)
    # an ack signed with the retired secret is no longer believed
    forged = p.sign_ack({"v": 1, "id": cid, "seq": 99, "result": "rejected",
                         "reason": "expired", "locked": True, "credit_until": None}, old)
    before = rt.service.counters.bad_messages.get("bad_ack_signature", 0)
    w.watcher.publish(p.ack_topic(kit_id), p.encode(forged))
    wait_for(lambda: rt.service.counters.bad_messages.get("bad_ack_signature", 0) > before,
             what="forged ack refused")
    with rt.db.session() as s:
        c = s.get(Command, cid)
        assert c is not None and c.status == "applied"


def test_support_unlock_is_applied_and_a_swapped_kit_loses_its_retained_command(
    world: World,
) -> None:
    w, rt, kit_id = world, world.rt, world.kit.kit_id
    _, key = create_api_key(rt, name="support-kofi", role="support")
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(rt)) as api:
        r = api.post(f"/v1/kits/{kit_id}/unlock", json={"days": 3, "reason": "storm"},
                     headers=auth)
        assert r.status_code == 200, r.text
        cid = r.json()["command_id"]
        wait_for(lambda: api.get(f"/v1/commands/{cid}", headers=auth).json()["status"]
                 == "applied", what="support unlock applied by the kit")
        assert w.kit.firmware.locked is False
        _, published = w.watcher.wait_for(lambda t, d, r: t == p.cmd_topic(kit_id)
                                          and d is not None)
        assert published["id"] == cid  # what the broker holds retained for the old kit
        r = api.post(f"/v1/kits/{kit_id}/swap", json={"new_kit_id": f"{kit_id}-B",
                                                      "reason": "water damage"}, headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["credentials"]["command_secret"]
    # a fresh subscriber to the old kit's command topic finds nothing retained
    fresh = Watcher(w.port, kit_id)
    try:
        with pytest.raises(AssertionError):
            fresh.wait_for(lambda t, d, r: t == p.cmd_topic(kit_id) and r, timeout_s=1.5)
    finally:
        fresh.close()
    with rt.db.session() as s:
        old = s.get(Kit, kit_id)
        assert old is not None and old.decommissioned_at is not None
        new_cmd = s.scalars(select(Command).where(
            Command.kit_id == f"{kit_id}-B")).one()
        assert new_cmd.action == "unlock"


def test_two_control_processes_share_kit_messages(mosquitto: services.ManagedProcess,
                                                  tmp_path: Path) -> None:
    """Several control processes (uvicorn workers): each its own client id, and every kit
    message handled by exactly one of them through $share/<control_shared_group>."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate(url)
    run = uuid.uuid4().hex[:8]
    settings = Settings(database_url=url, secret_key=generate_secret_key(),
                        mqtt_port=mosquitto.port, paygate_url="http://127.0.0.1:9",
                        data_dir=tmp_path, control_shared_group=f"ctl-{run}")
    rts = [Runtime.build(settings, SystemClock()) for _ in range(2)]
    links = [MqttLink(settings, rt.service, client_id=f"control-{run}-{i}")
             for i, rt in enumerate(rts)]
    for link in links:
        link.start()
        assert link.wait_connected(10)
    watcher = Watcher(mosquitto.port, f"NOPE{run}")
    try:
        time.sleep(0.5)  # both subscriptions in place
        for _ in range(20):  # status of a kit the ledger does not know: counted, dropped
            watcher.publish(p.status_topic(f"NOPE{run}"), b'{"v":1,"online":true}')

        def handled() -> list[int]:
            return [rt.service.counters.bad_messages.get("unknown_kit", 0) for rt in rts]

        wait_for(lambda: sum(handled()) >= 20, what="20 status messages handled")
        time.sleep(0.5)  # a second delivery of any of them would show now
        assert sum(handled()) == 20, handled()  # once each, not once per process
        assert all(n > 0 for n in handled()), handled()  # and spread over both
        assert all(link.connected for link in links)  # nobody took the other's session
    finally:
        watcher.close()
        for link, rt in zip(links, rts, strict=True):
            link.stop()
            rt.db.dispose()
