"""The Core fast path (control.payments.credit_fast) writes exactly what the general ORM path writes,
on SQLite and PostgreSQL, and declines every case that is not plain."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

from cizo import protocol
from cizo.clock import FrozenClock
from control.ledger.accounts import Actor
from control.ledger.models import Account, Command, Kit, LedgerEntry, Payment
from control.payments import credit_fast, intake
from control.runtime import Runtime
from tests.payments_fixtures import (  # noqa: F401 - fixtures
    make_kit,
    momo_sim_fixture,
    payments_rt_fixture,
)
from tests.test_api_helpers import paygate_sim_fixture  # noqa: F401 - fixtures

ACTOR = Actor(name="test", role="system")


def intent(rt: Runtime, kit_id: str, account_id: int, ref: str, requested: int = 700) -> int:
    now = rt.clock.now()
    with rt.db.session() as s:
        p = Payment(desco_id="default", provider="momo", provider_ref=ref,
                    account_id=account_id, requested_fcfa=requested, status="pending",
                    created_at=now, updated_at=now, currency="XOF", reference=kit_id,
                    check_attempts=0, next_check_at=now + 30)
        s.add(p)
        s.flush()
        return p.id


def snapshot(rt: Runtime, kit_id: str, payment_id: int) -> dict[str, Any]:
    """Everything a credit writes, minus ids and the kit's own identity."""
    with rt.db.session() as s:
        p = s.get(Payment, payment_id)
        acct = s.scalars(select(Account).where(Account.kit_id == kit_id)).one()
        kit = s.get(Kit, kit_id)
        entry = s.scalars(select(LedgerEntry).where(LedgerEntry.payment_id == payment_id)).one()
        cmds = s.scalars(select(Command).where(Command.kit_id == kit_id)
                         .order_by(Command.seq)).all()
        assert p is not None and kit is not None
        return {
            "payment": (p.status, p.amount_fcfa, p.credited_at, p.matched_by, p.next_check_at,
                        p.currency, p.paid_at, p.payment_reference),
            "entry": (entry.kind, entry.amount_fcfa, entry.days, entry.remainder_after_fcfa,
                      entry.credit_until_before, entry.credit_until_after, entry.created_at),
            "account": (acct.paid_total_fcfa, acct.remainder_fcfa, acct.credit_until,
                        acct.owned),
            "kit": (kit.cmd_seq, kit.commanded_action, kit.commanded_credit_until,
                    kit.lock_due_at),
            "commands": [(c.seq, c.action, c.credit_until, c.status, c.origin, c.attempts,
                          c.issued_at, c.expires_at) for c in cmds],
        }


@pytest.mark.parametrize("amounts", [[700], [350, 1203], [41_500]])
def test_fast_path_writes_what_the_general_path_writes(rt: Runtime,
                                                       amounts: list[int]) -> None:
    clock = FrozenClock(1_790_000_000.0)
    rt.clock = rt.service.clock = clock  # both paths see the same instants
    fast_acct = make_kit(rt, "FAST1", phone="+22890000001")
    slow_acct = make_kit(rt, "SLOW1", phone="+22890000002")
    for i, amount in enumerate(amounts):
        fields = {"payment_reference": f"FT{i}", "paid_at": rt.clock.now()}
        pf = intent(rt, "FAST1", fast_acct, f"f{i}", amount)
        ps = intent(rt, "SLOW1", slow_acct, f"s{i}", amount)
        fast = credit_fast.credit_intent(rt, pf, amount=amount, currency="XOF",
                                         fields=fields, check_owed=True)
        assert fast is not None and fast.outgoing is not None
        slow = intake.credit_intent(rt, ps, amount=amount, currency="XOF", actor=ACTOR,
                                    fields={**fields, "next_check_at": None})
        assert slow.outcome == "credited"
        assert snapshot(rt, "FAST1", pf) == snapshot(rt, "SLOW1", ps)
        assert fast.notice.days == slow.days and fast.notice.wants_token is False
        # the claimed command is signed with the kit's secret and names the new end
        fields_sent = json.loads(fast.outgoing.payload)
        with rt.db.session() as s:
            kit = s.get(Kit, "FAST1")
            assert kit is not None
            assert protocol.verify(fields_sent, rt.box.decrypt(kit.secret_enc))
            assert fields_sent["id"] == fast.command_id and fields_sent["seq"] == kit.cmd_seq
        clock.advance(3600)


def test_fast_path_declines_what_is_not_plain(rt: Runtime) -> None:
    acct = make_kit(rt, "K1")
    pid = intent(rt, "K1", acct, "r1", 700)
    kw: dict[str, Any] = {"fields": {}, "check_owed": True}
    assert credit_fast.credit_intent(rt, pid, amount=70_000, currency="XOF", **kw) is None
    assert credit_fast.credit_intent(rt, pid, amount=700, currency="EUR", **kw) is None
    assert credit_fast.credit_intent(rt, pid, amount=0, currency="XOF", **kw) is None
    assert credit_fast.credit_intent(rt, 999_999, amount=700, currency="XOF", **kw) is None
    with rt.db.session() as s:
        p = s.get(Payment, pid)
        assert p is not None and p.status == "pending"  # nothing written by the refusals
        assert s.scalars(select(LedgerEntry).where(LedgerEntry.payment_id == pid)).first() \
            is None
    assert credit_fast.credit_intent(rt, pid, amount=700, currency="XOF", **kw) is not None
    # credited once: a second delivery is not plain any more (the general path answers it)
    assert credit_fast.credit_intent(rt, pid, amount=700, currency="XOF", **kw) is None
    with rt.db.session() as s:
        a = s.get(Account, acct)
        assert a is not None
        a.closed_at = rt.clock.now()  # repossessed: the general path parks and explains
    pid2 = intent(rt, "K1", acct, "r2", 700)
    assert credit_fast.credit_intent(rt, pid2, amount=700, currency="XOF", **kw) is None
