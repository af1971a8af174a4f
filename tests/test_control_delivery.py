"""Command delivery: re-sends with exponential backoff and jitter, re-send on reconnect,
the batched sweep, anomalies persisted, and two control processes on one PostgreSQL
(no command published twice, no kit commanded twice)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import func, select

from cizo.clock import ManualClock
from cizo.settings import Settings
from control.commands import desired
from control.commands.service import ControlService, Issued
from control.ledger import credit
from control.ledger.accounts import SYSTEM, account_for_kit, provision_kit
from control.ledger.db import Database, migrate
from control.ledger.models import Account, Command, Kit
from control.ledger.secrets import SecretBox, generate_secret_key

PLAN = credit.Plan(deposit_fcfa=0, daily_rate_fcfa=100, total_price_fcfa=50_000)
DAY = 86_400


class Recorder:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.acks_waiting = 0  # as the MQTT link reports it

    def publish_command(self, kit_id: str, payload: bytes, version: int = 1) -> bool:
        with self.lock:
            self.sent.append(json.loads(payload))
        return True


def make_service(url: str, box: SecretBox, clock: ManualClock,
                 **extra: Any) -> tuple[ControlService, Recorder]:
    rec = Recorder()
    settings = Settings(database_url=url, command_resend_after_s=30, command_backoff_max_s=240,
                        command_backoff_jitter=0.25, **extra)
    return ControlService(settings, Database(url), box, clock, rec), rec


def provision_many(svc: ControlService, n: int, credit_days: float | None) -> list[str]:
    now = svc.clock.now()
    ids = [f"K{i:04d}" for i in range(n)]
    with no_broker_link(svc), svc.db.session() as s:
        for kid in ids:
            provision_kit(s, kit_id=kid, desco_id="default", phone_e164="+22890000001",
                          plan=PLAN, box=svc.box, now=now, actor=SYSTEM, deposit_paid=False)
        s.flush()
        if credit_days is not None:
            for kid in ids:
                acct = account_for_kit(s, kid)
                assert acct is not None
                acct.credit_until = int(now + credit_days * DAY)
                svc.converge_kit(s, kid, origin="payment")
    return ids


@contextmanager
def no_broker_link(svc: ControlService) -> Iterator[None]:
    """Commands issued meanwhile stay queued for the sweep, as in a process with no broker
    link (an API-only process, the CLI)."""
    publisher, svc.publisher = svc.publisher, None
    try:
        yield
    finally:
        svc.publisher = publisher


def sent_after_commit(svc: ControlService, issued: list[Issued | None]) -> None:
    """What every caller of ``converge_kit`` does once its transaction has committed."""
    svc.send(i.outgoing for i in issued if i is not None)


def _telemetry(kit_id: str, ts: float, *, locked: bool) -> bytes:
    return json.dumps({"v": 1, "kit_id": kit_id, "ts": int(ts), "seq": 1, "boot": 1,
                       "battery_v": 12.8, "soc": 70, "pv_w": 0, "load_w": 5,
                       "pv_wh_total": 1, "load_wh_total": 1, "locked": locked,
                       "credit_until": None, "temp_c": 30}).encode()


def test_backoff_doubles_is_capped_and_jittered() -> None:
    delays = [desired.backoff_s(n, base_s=30, cap_s=240, jitter=0.0) for n in range(1, 7)]
    assert delays == [30, 60, 120, 240, 240, 240]
    low = desired.backoff_s(3, base_s=30, cap_s=240, jitter=0.25, rnd=lambda: 0.0)
    high = desired.backoff_s(3, base_s=30, cap_s=240, jitter=0.25, rnd=lambda: 0.999999)
    assert low == 90 and 149.9 < high <= 150
    spread = {round(desired.backoff_s(2, base_s=30, cap_s=240, jitter=0.25), 3)
              for _ in range(50)}
    assert len(spread) > 10 and all(45 <= d <= 75 for d in spread)


@pytest.fixture
def one(database_url: str) -> Iterator[tuple[ControlService, Recorder, ManualClock]]:
    migrate(database_url)
    clock = ManualClock()
    svc, rec = make_service(database_url, SecretBox(generate_secret_key()), clock)
    yield svc, rec, clock
    svc.db.dispose()


def test_unacked_command_is_resent_with_growing_delays_and_at_once_on_reconnect(
    one: tuple[ControlService, Recorder, ManualClock],
) -> None:
    svc, rec, clock = one
    provision_many(svc, 1, credit_days=5)
    svc.handle_status("K0000", b'{"v":1,"online":true}')  # online and silent: resent
    svc.sweep()
    assert len(rec.sent) == 1
    cid = rec.sent[0]["id"]
    gaps = []
    for _ in range(4):
        with svc.db.session() as s:
            cmd = s.get(Command, cid)
            assert cmd is not None and cmd.next_attempt_at is not None
            gap = cmd.next_attempt_at - clock.now()
        gaps.append(gap)
        clock.advance(gap - 1)
        assert svc.sweep().published == 0  # not before its time
        clock.advance(2)
        assert svc.sweep().published == 1
    # 30, 60, 120, 240 s, each within +-25 % (and capped at 240 s)
    for gap, base in zip(gaps, (30, 60, 120, 240), strict=True):
        assert base * 0.74 <= gap <= base * 1.26, gaps
    with svc.db.session() as s:
        cmd = s.get(Command, cid)
        assert cmd is not None and cmd.attempts == 5 and cmd.status == "sent"
    # the kit goes away: its retained command waits on the broker, no re-publishing ...
    svc.handle_status("K0000", b'{"v":1,"online":false}')
    with svc.db.session() as s:
        cmd = s.get(Command, cid)
        assert cmd is not None and cmd.sent_at is not None
        last = cmd.sent_at
    clock.advance(last + 239 - clock.now())  # its resend fell due meanwhile (<= 1.26 x 240)
    assert svc.sweep().published == 0  # deferred to the backoff cap after the last send
    assert [c["id"] for c in rec.sent].count(cid) == 5
    # ... and when it reconnects the pending command goes out at once
    svc.handle_status("K0000", b'{"v":1,"online":true}')
    assert [c["id"] for c in rec.sent].count(cid) == 6
    svc.handle_status("K0000", b'{"v":1,"online":true}')  # already online: no extra send
    assert [c["id"] for c in rec.sent].count(cid) == 6


def test_offline_kit_is_resent_only_after_the_backoff_cap(
    one: tuple[ControlService, Recorder, ManualClock],
) -> None:
    """Never seen online: published once (retained), then only every cap, not on backoff."""
    svc, rec, clock = one
    provision_many(svc, 1, credit_days=5)
    svc.sweep()
    assert len(rec.sent) == 1
    for _ in range(6):  # 30 s steps for 3 minutes: below the 240 s cap
        clock.advance(30)
        svc.sweep()
    assert len(rec.sent) == 1
    clock.advance(240)
    svc.sweep()  # the cap passed: re-sent in case the kit's online status was missed
    assert len(rec.sent) == 2


def test_keypad_only_kit_gets_one_retained_copy_until_it_connects(
    one: tuple[ControlService, Recorder, ManualClock],
) -> None:
    """No modem: re-publishing is pure waste (OpenPAYGO codes serve it), for days."""
    svc, rec, clock = one
    (kid,) = provision_many(svc, 1, credit_days=5)
    with svc.db.session() as s:
        kit = s.get(Kit, kid)
        assert kit is not None
        kit.keypad_only = True
    svc.sweep()
    assert len(rec.sent) == 1
    for _ in range(12):  # two days of sweeps, the backoff cap passed many times
        clock.advance(4 * 3600)
        svc.sweep()
    assert len(rec.sent) == 1
    svc.handle_status(kid, b'{"v":1,"online":true}')  # it has a modem after all
    assert len(rec.sent) == 2


def test_batched_sweep_locks_exactly_the_kits_whose_credit_ended(
    one: tuple[ControlService, Recorder, ManualClock],
) -> None:
    svc, rec, clock = one
    ids = provision_many(svc, 30, credit_days=1)
    svc.sweep()
    issued = []
    with svc.db.session() as s:
        # three kits paid again meanwhile, one is owned, one repossessed-style closed
        for kid in ids[:3]:
            acct = account_for_kit(s, kid)
            assert acct is not None
            acct.credit_until = int(clock.now() + 5 * DAY)
            issued.append(svc.converge_kit(s, kid, origin="payment"))
        owned = account_for_kit(s, ids[3])
        assert owned is not None
        owned.owned, owned.credit_until = True, None
        issued.append(svc.converge_kit(s, ids[3], origin="payment"))
    sent_after_commit(svc, issued)
    rec.sent.clear()
    clock.advance(DAY + 10)
    result = svc.sweep()
    assert result.issued == 26
    locks = {c["kit_id"]: c for c in rec.sent if c["action"] == "lock"}
    assert set(locks) == set(ids[4:])
    assert all(c["seq"] == 2 for c in locks.values())
    assert svc.sweep().issued == 0  # nothing due twice
    with svc.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Kit)
                        .where(Kit.lock_due_at <= int(clock.now()))) == 0
        superseded = s.scalar(select(func.count()).select_from(Command)
                              .where(Command.status == "superseded"))
        assert superseded == 26 + 3 + 1  # the earlier unlocks, still unacked


def test_anomaly_is_counted_on_the_kit_and_corrected(
    one: tuple[ControlService, Recorder, ManualClock],
) -> None:
    svc, rec, clock = one
    provision_many(svc, 1, credit_days=None)
    svc.handle_telemetry("K0000", _telemetry("K0000", clock.now(), locked=False))
    with svc.db.session() as s:
        kit = s.get(Kit, "K0000")
        assert kit is not None and kit.anomaly_count == 1 and kit.last_anomaly_at is not None
    assert rec.sent[-1]["action"] == "lock"


def test_resends_wait_while_acks_are_unread_new_commands_do_not(
    one: tuple[ControlService, Recorder, ManualClock],
) -> None:
    """An ack still queued at the MQTT link may be for the command falling due: re-sending
    it then only adds work (a loaded month simulation re-sent commands up to six times)."""
    svc, rec, clock = one
    first, second = provision_many(svc, 2, credit_days=None)
    with no_broker_link(svc), svc.db.session() as s:
        acct = account_for_kit(s, first)
        assert acct is not None
        acct.credit_until = int(clock.now() + 5 * DAY)
        svc.converge_kit(s, first, origin="payment")
    svc.handle_status(first, b'{"v":1,"online":true}')
    svc.sweep()
    assert [c["kit_id"] for c in rec.sent] == [first]
    clock.advance(40)  # its re-send is due (30 s +- 25 %)
    rec.acks_waiting = 3
    # meanwhile the second kit is paid: a new command, queued for the sweep
    with no_broker_link(svc), svc.db.session() as s:
        acct = account_for_kit(s, second)
        assert acct is not None
        acct.credit_until = int(clock.now() + 5 * DAY)
        assert svc.converge_kit(s, second, origin="payment") is not None
    held = svc.sweep()
    assert held.resends_held and held.published == 1
    assert [c["kit_id"] for c in rec.sent] == [first, second]
    rec.acks_waiting = 0  # read, and none was for the first kit's command
    assert svc.sweep().published == 1
    assert [c["kit_id"] for c in rec.sent] == [first, second, first]


def test_telemetry_older_than_the_last_ack_neither_undoes_it_nor_counts_as_anomaly(
    one: tuple[ControlService, Recorder, ManualClock],
) -> None:
    """Acks are read ahead of telemetry, so a reading taken before the kit applied a lock
    can arrive after the lock's ack: it says nothing about the kit now."""
    svc, rec, clock = one
    (kid,) = provision_many(svc, 1, credit_days=1)
    svc.sweep()
    taken_before = clock.now()
    clock.advance(DAY + 60)
    svc.sweep()  # credit ended: lock
    lock = rec.sent[-1]
    assert lock["action"] == "lock"
    clock.advance(5)
    svc.handle_ack(kid, json.dumps({"v": 1, "id": lock["id"], "seq": lock["seq"],
                                    "result": "applied", "locked": True,
                                    "credit_until": lock["credit_until"]}).encode())
    sent = len(rec.sent)
    svc.handle_telemetry(kid, _telemetry(kid, taken_before + DAY + 30, locked=False))
    with svc.db.session() as s:
        kit = s.get(Kit, kid)
        assert kit is not None and kit.reported_locked is True and kit.anomaly_count == 0
    assert svc.counters.anomalies == 0 and len(rec.sent) == sent
    # a reading taken after the ack that still says unlocked is a real anomaly
    clock.advance(60)
    svc.handle_telemetry(kid, _telemetry(kid, clock.now(), locked=False))
    with svc.db.session() as s:
        kit = s.get(Kit, kid)
        assert kit is not None and kit.reported_locked is False and kit.anomaly_count == 1
    assert rec.sent[-1]["action"] == "lock" and len(rec.sent) == sent + 1


# --- two control processes, one PostgreSQL --------------------------------------------------


@pytest.fixture
def pg_url(pg_database: str) -> str:
    url = pg_database.replace("postgresql://", "postgresql+psycopg://", 1)
    migrate(url)
    return url


def test_two_control_processes_never_double_send_or_double_issue(pg_url: str) -> None:
    box = SecretBox(generate_secret_key())
    clock = ManualClock()
    a, rec_a = make_service(pg_url, box, clock)
    b, rec_b = make_service(pg_url, box, clock)
    ids = provision_many(a, 120, credit_days=1)
    clock.advance(DAY + 10)

    def run(svc: ControlService) -> None:
        for _ in range(5):
            svc.sweep()

    threads = [threading.Thread(target=run, args=(svc,)) for svc in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    sent = rec_a.sent + rec_b.sent
    ids_sent = [c["id"] for c in sent]
    # every lock published exactly once, between the two processes (the never-published
    # unlocks were superseded by them first)
    assert len(ids_sent) == len(set(ids_sent)) == len(ids)
    locks = [c for c in sent if c["action"] == "lock"]
    assert sorted(c["kit_id"] for c in locks) == sorted(ids)
    with a.db.session() as s:
        per_kit = s.execute(select(Command.kit_id, func.count()).where(Command.action == "lock")
                            .group_by(Command.kit_id)).all()
        assert {n for _, n in per_kit} == {1}
    # both processes see the same reconnect: the pending lock is re-sent once, not twice
    before = len(rec_a.sent) + len(rec_b.sent)
    online = b'{"v":1,"online":true}'
    threads = [threading.Thread(target=svc.handle_status, args=(ids[0], online))
               for svc in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(rec_a.sent) + len(rec_b.sent) == before + 1
    with a.db.session() as s:
        acct = s.scalars(select(Account).where(Account.kit_id == ids[0])).one()
        assert acct.credit_until is not None
    a.db.dispose()
    b.db.dispose()


def test_rotation_whose_ack_was_lost_completes_on_the_kits_signed_refusal(
    one: tuple[ControlService, Recorder, ManualClock],
) -> None:
    from cizo import protocol
    from firmware_sim.firmware import KitFirmware

    svc, rec, clock = one
    with svc.db.session() as s:
        creds = provision_kit(s, kit_id="ROT", desco_id="default", phone_e164="+22890000009",
                              plan=PLAN, box=svc.box, now=clock.now(), actor=SYSTEM,
                              deposit_paid=False)
    fw = KitFirmware("ROT", creds.command_secret, clock)
    with svc.db.session() as s:
        kit = s.get(Kit, "ROT")
        assert kit is not None
        rot = svc.rotate_secret(s, kit)
    svc.send([rot.outgoing])
    assert fw.handle_command(json.dumps(rec.sent[-1]).encode())["result"] == "applied"
    # ... but that ack is lost; a payment's unlock supersedes the (still pending) rotate
    with svc.db.session() as s:
        acct = account_for_kit(s, "ROT")
        assert acct is not None
        acct.credit_until = int(clock.now()) + 3 * DAY
        cmd = svc.converge_kit(s, "ROT", origin="payment")
        assert cmd is not None
    svc.send([cmd.outgoing])
    refusal = fw.handle_command(json.dumps(rec.sent[-1]).encode())
    assert refusal["reason"] == "bad_signature"  # signed with the secret the kit left
    svc.handle_ack("ROT", json.dumps(refusal).encode())
    # the refusal was signed with the derived secret: adopted, and the unlock re-issued
    with svc.db.session() as s:
        kit = s.get(Kit, "ROT")
        assert kit is not None and kit.secret_next_enc is None
        assert svc.box.decrypt(kit.secret_enc) == fw.secret_hex != creds.command_secret
    again = rec.sent[-1]
    assert again["action"] == "unlock" and again["id"] != cmd.id
    assert protocol.verify(again, fw.secret_hex)
    ack = fw.handle_command(json.dumps(again).encode())
    assert ack["result"] == "applied" and fw.credit_until == again["credit_until"]
    svc.handle_ack("ROT", json.dumps(ack).encode())
    with svc.db.session() as s:
        c = s.get(Command, again["id"])
        assert c is not None and c.status == "applied"
