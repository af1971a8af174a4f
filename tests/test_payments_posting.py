"""The one posting path (control.payments.posting) writes the same rows whichever feed the
money came by, on SQLite and PostgreSQL, and parks in suspense, crediting nothing, every
amount that must wait for a human."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from cizo.clock import FrozenClock
from control.ledger.accounts import Actor
from control.ledger.models import Account, Command, Kit, LedgerEntry, Payment
from control.payments import matching, posting
from control.payments.posting import Confirmed, Receipt
from control.payments.receive import Incoming, receive
from control.runtime import Runtime
from tests.payments_support import PLAN, make_kit

pytestmark = pytest.mark.payment_providers

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


def matched_payment(rt: Runtime, kit_id: str, ref: str, amount: int,
                    paid_at: float) -> Receipt:
    """Money that arrived without an intent (a DESCO agent, a statement line)."""
    return receive(rt, Incoming(provider="momo", provider_ref=ref, desco_id=None,
                                amount_fcfa=amount, reference=kit_id, paid_at=paid_at,
                                payment_reference=ref.upper()), actor=ACTOR)


@pytest.mark.parametrize("amounts", [[700], [350, 1203], [41_500]])
def test_every_feed_writes_the_same_rows(rt: Runtime, amounts: list[int]) -> None:
    clock = FrozenClock(1_790_000_000.0)
    rt.clock = rt.service.clock = clock  # both feeds see the same instants
    intent_acct = make_kit(rt, "INTENT1", phone="+22890000001")
    make_kit(rt, "MATCH1", phone="+22890000002")
    for i, amount in enumerate(amounts):
        pi = intent(rt, "INTENT1", intent_acct, f"i{i}", amount)
        by_intent = posting.credit_intent(
            rt, pi, amount=amount, currency="XOF", checks=matching.INTENT_WITHIN_OWED,
            actor=ACTOR, confirmed=Confirmed(paid_at=clock.now(), payment_reference=f"M{i}"))
        assert by_intent.credited and by_intent.command_id is not None
        by_match = matched_payment(rt, "MATCH1", f"m{i}", amount, clock.now())
        assert by_match.credited and by_match.days == by_intent.days
        written_i, written_m = snapshot(rt, "INTENT1", pi), \
            snapshot(rt, "MATCH1", by_match.payment_id or 0)
        assert written_i["payment"][3] == "intent" and written_m["payment"][3] == "reference"
        for part in ("entry", "account", "kit", "commands"):
            assert written_i[part] == written_m[part], part
        # the command was signed with the kit's secret, claimed and published at commit
        with rt.db.session() as s:
            kit = s.get(Kit, "INTENT1")
            cmd = s.get(Command, by_intent.command_id)
            assert kit is not None and cmd is not None
            assert cmd.status == "sent" and cmd.seq == kit.cmd_seq and cmd.attempts == 1
        clock.advance(3600)


def test_what_must_wait_for_a_human_is_parked_and_credits_nothing(rt: Runtime) -> None:
    acct = make_kit(rt, "K1")
    kw: dict[str, Any] = {"checks": matching.INTENT_WITHIN_OWED, "actor": ACTOR}
    for ref, requested, amount, currency, why in [
            ("big", 70_000, 70_000, "XOF", "still owed"), ("x100", 700, 70_000, "XOF", "x100"),
            ("eur", 700, 700, "EUR", "not XOF"), ("zero", 700, 0, "XOF", "no usable amount"),
            ("other", 700, 800, "XOF", "requested")]:
        pid = intent(rt, "K1", acct, ref, requested)
        receipt = posting.credit_intent(rt, pid, amount=amount, currency=currency, **kw)
        assert receipt.outcome == "suspense" and why in (receipt.detail or ""), receipt
        with rt.db.session() as s:
            p = s.get(Payment, pid)
            assert p is not None and p.status == "suspense" and p.next_check_at is None
            assert s.scalars(select(LedgerEntry).where(LedgerEntry.payment_id == pid)
                             ).first() is None
    assert posting.credit_intent(rt, 999_999, amount=700, currency="XOF", **kw).outcome \
        == "unknown_original"
    pid = intent(rt, "K1", acct, "r1", 700)
    assert posting.credit_intent(rt, pid, amount=700, currency="XOF", **kw).credited
    # credited once: a second delivery is a duplicate and writes nothing more
    again = posting.credit_intent(rt, pid, amount=700, currency="XOF", **kw)
    assert again.outcome == "duplicate" and not again.credited
    with rt.db.session() as s:
        assert len(s.scalars(select(LedgerEntry).where(LedgerEntry.payment_id == pid)).all()) \
            == 1
        a = s.get(Account, acct)
        assert a is not None
        assert a.paid_total_fcfa == PLAN.deposit_fcfa + 700
