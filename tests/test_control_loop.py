"""The control loop on a real ledger database (SQLite and PostgreSQL), no broker:
commands are issued when desired state changes, superseded, re-sent, expired, acked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from cizo import protocol
from cizo.clock import ManualClock
from cizo.settings import Settings
from control.commands.service import ControlService, Outgoing
from control.ledger import credit
from control.ledger.accounts import SYSTEM, ProvisionedKit, account_for_kit, provision_kit
from control.ledger.db import migrate
from control.ledger.models import Command, Kit, Payment
from control.ledger.secrets import generate_secret_key
from control.payments import matching, posting
from control.runtime import Runtime

PLAN = credit.Plan(deposit_fcfa=5000, daily_rate_fcfa=100, total_price_fcfa=41500)


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, object]]] = []
        self.online = True

    def publish_command(self, kit_id: str, payload: bytes, version: int = 1) -> bool:
        if not self.online:
            return False
        self.sent.append((kit_id, json.loads(payload)))
        return True


@pytest.fixture
def loop(database_url: str):
    migrate(database_url)
    clock = ManualClock()
    rec = Recorder()
    settings = Settings(database_url=database_url, command_resend_after_s=30,
                        command_backoff_jitter=0.0, command_ttl_s=2 * 86400,
                        secret_key=generate_secret_key())
    rt = Runtime.build(settings, clock)
    rt.service.publisher = rec
    with rt.db.session() as s:
        kit = provision_kit(s, kit_id="K1", desco_id="default", phone_e164="+22890000001",
                            plan=PLAN, box=rt.box, now=clock.now(), actor=SYSTEM)
    yield Loop(rt, rec, clock, kit)
    rt.close()


@dataclass
class Loop:
    """The runtime under test; unpacks as (service, recorder, clock, provisioned kit)."""

    rt: Runtime
    rec: Recorder
    clock: ManualClock
    kit: ProvisionedKit

    def __iter__(self) -> Iterator[Any]:
        return iter((self.rt.service, self.rec, self.clock, self.kit))


def k1_payment(svc: ControlService, ref: str) -> int:
    """A payment to K1's account, recorded and not yet credited."""
    now = svc.clock.now()
    with svc.db.session() as s:
        acct = account_for_kit(s, "K1")
        assert acct is not None
        p = Payment(desco_id="default", provider="test", provider_ref=ref, status="pending",
                    account_id=acct.id, created_at=now, updated_at=now)
        s.add(p)
        s.flush()
        return p.id


def pay(loop: Loop, amount: int, ref: str) -> list[str]:
    """Credit a payment to K1 through the one posting path (which publishes its command)."""
    receipt = posting.credit_intent(loop.rt, k1_payment(loop.rt.service, ref), amount=amount,
                                    currency="XOF", checks=matching.VOUCHED, actor=SYSTEM)
    assert receipt.credited
    return [receipt.command_id] if receipt.command_id else []


def test_payment_issues_a_signed_unlock_with_the_exact_credit_end(loop) -> None:
    _svc, rec, clock, kit = loop
    t0 = int(clock.now())
    pay(loop, 700, "p1")
    assert len(rec.sent) == 1
    kit_id, cmd = rec.sent[0]
    assert kit_id == "K1" and cmd["action"] == "unlock" and cmd["seq"] == 1
    assert t0 + 7 * 86400 <= cmd["credit_until"] <= t0 + 7 * 86400 + 2
    assert protocol.verify(cmd, kit.command_secret)


def test_a_newer_command_supersedes_the_pending_one(loop) -> None:
    svc, _rec, _clock, _kit = loop
    first = pay(loop, 700, "p1")[0]
    second = pay(loop, 300, "p2")[0]
    with svc.db.session() as s:
        assert s.get(Command, first).status == "superseded"
        newer = s.get(Command, second)
        assert newer.status == "sent" and newer.seq == 2


def test_sweep_locks_when_credit_ends_and_ack_makes_it_applied(loop) -> None:
    svc, rec, clock, _kit = loop
    pay(loop, 100, "p1")
    unlock_id = rec.sent[-1][1]["id"]
    clock.advance(86400 + 5)
    assert svc.sweep().issued == 1
    assert svc.sweep().issued == 0  # nothing due twice
    lock = rec.sent[-1][1]
    assert lock["action"] == "lock" and lock["seq"] == 2
    ack = {"v": 1, "id": lock["id"], "seq": 2, "result": "applied", "reason": None,
           "locked": True, "credit_until": lock["credit_until"]}
    svc.handle_ack("K1", json.dumps(ack).encode())
    with svc.db.session() as s:
        assert s.get(Command, lock["id"]).status == "applied"
        assert s.get(Command, unlock_id).status in ("superseded", "expired")
        assert s.get(Kit, "K1").reported_locked is True


def test_unacked_command_is_resent_then_expires_and_is_reissued(loop) -> None:
    svc, rec, clock, _kit = loop
    svc.handle_status("K1", b'{"v":1,"online":true}')  # online but silent: resent
    rec.online = False
    cid = pay(loop, 700, "p1")[0]
    with svc.db.session() as s:
        assert s.get(Command, cid).status == "queued"  # broker away: nothing lost
    rec.online = True
    svc.sweep()
    assert [c["id"] for _, c in rec.sent] == [cid]
    clock.advance(31)
    svc.sweep()
    assert [c["id"] for _, c in rec.sent] == [cid, cid]  # re-sent, same signed command
    clock.advance(2 * 86400)
    svc.sweep()
    with svc.db.session() as s:
        assert s.get(Command, cid).status == "expired"
        fresh = s.query(Command).filter(Command.status == "sent").one()
    # re-derived from the account (7 days paid, 2 gone): a fresh unlock, next seq
    assert fresh.seq == 2 and fresh.action == "unlock"


def test_rejected_ack_records_the_kits_reason(loop) -> None:
    svc, _rec, _clock, _kit = loop
    cid = pay(loop, 700, "p1")[0]
    ack = {"v": 1, "id": cid, "seq": 1, "result": "rejected", "reason": "expired",
           "locked": True, "credit_until": None}
    svc.handle_ack("K1", json.dumps(ack).encode())
    with svc.db.session() as s:
        cmd = s.get(Command, cid)
        assert cmd.status == "rejected" and cmd.reason == "expired"


def test_kit_unlocked_without_credit_is_corrected_and_counted(loop) -> None:
    svc, rec, clock, _kit = loop
    # never paid (deposit only): desired state is locked, but we never commanded anything
    tele = {"v": 1, "kit_id": "K1", "ts": int(clock.now()), "seq": 1, "boot": 1,
            "battery_v": 12.8, "soc": 70, "pv_w": 0, "load_w": 5, "pv_wh_total": 1,
            "load_wh_total": 1, "locked": False, "credit_until": None, "temp_c": 30}
    svc.handle_telemetry("K1", json.dumps(tele).encode())
    assert svc.counters.anomalies == 1
    assert rec.sent[-1][1]["action"] == "lock"
    svc.handle_telemetry("K1", json.dumps(tele).encode())
    assert svc.counters.anomalies == 1  # a lock is pending: not counted twice


def test_bad_messages_from_kits_are_counted_not_raised(loop) -> None:
    svc, _rec, _clock, _kit = loop
    svc.handle_ack("K1", b"{nope")
    svc.handle_status("K1", b'{"v":1}')
    svc.handle_ack("NOPE", b'{"v":1,"id":"x","seq":1,"result":"applied","locked":true,'
                           b'"credit_until":null}')
    assert svc.counters.bad_messages == {"not_json": 1, "missing_field": 1, "unknown_kit": 1}


def _credit_and_claim(loop: Loop, ref: str) -> Outgoing | None:
    """The payment path: credit, converge and claim the command in one transaction."""
    rt = loop.rt
    pid = k1_payment(rt.service, ref)
    with rt.db.writing() as conn:
        found = posting.lock_payment(conn, pid)
        assert found is not None and found[1] is not None
        posted = posting.post(rt, conn, payment=found[0], acct=found[1], amount=700)
    assert posted.issued is not None
    return posted.issued.outgoing


def test_claimed_command_is_published_after_commit_without_a_second_transaction(loop) -> None:
    svc, rec, _clock, kit = loop
    out = _credit_and_claim(loop, "p1")
    assert out is not None
    with svc.db.session() as s:
        cmd = s.get(Command, out.command_id)
        assert cmd.status == "sent" and cmd.attempts == 1 and cmd.next_attempt_at is not None
    assert rec.sent == []  # committed, not yet published
    assert svc.send([out]) == 1
    (kit_id, fields), = rec.sent
    assert kit_id == "K1" and fields["id"] == out.command_id and fields["action"] == "unlock"
    assert protocol.verify(fields, kit.command_secret)


def test_claimed_command_goes_back_to_the_queue_when_the_broker_is_away(loop) -> None:
    svc, rec, _clock, _kit = loop
    rec.online = False
    out = _credit_and_claim(loop, "p1")
    assert out is not None
    assert svc.send([out]) == 0
    with svc.db.session() as s:
        cmd = s.get(Command, out.command_id)
        assert cmd.status == "queued" and cmd.attempts == 0 and cmd.sent_at is None
    rec.online = True
    assert svc.sweep().published == 1  # the sweep publishes it once the broker is back
    assert [c["id"] for _, c in rec.sent] == [out.command_id]
