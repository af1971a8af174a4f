"""Posting: the one place where confirmed money becomes credit, or waits for a human.

Every feed ends here: PayGate and MoMo intents confirmed by their status APIs
(``credit_intent``), money that arrived without an intent of ours — a payment started from
the customer's phone, a DESCO agent's signed webhook, a statement line approved by finance
(control.payments.receive) —, a suspense payment linked by staff (``credit_parked``), and
reversals (control.payments.reversals). A rule or a column is therefore written once, in
SQLAlchemy Core statements that run the same on SQLite and PostgreSQL.

Inside one transaction, ``post`` writes the payment's new state, the ledger entry, the
account's running totals, the audit entry when staff acted, and — when the kit's desired
state moved — its new command, signed and claimed (control.commands.service). ``park``
puts money in suspense instead, with the reason. Once the transaction has committed,
``deliver`` publishes the command and runs the after-credit hooks the runtime holds (the
customer's receipt, a keypad token): a hook that fails is logged, it never undoes money.

What differs between feeds — which amount counts, how it was confirmed — is data
(``matching.Checks``), not a branch in a copy. Exactly once: the payment row is locked and
re-checked inside the transaction, and the ledger entry's unique ``payment_id`` is a second
guard.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Connection,
    Float,
    String,
    Table,
    bindparam,
    func,
    insert,
    null,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from control.commands import tokens
from control.commands.desired import commanded, desired_from
from control.commands.lifecycle import KitSeq
from control.commands.service import Issued
from control.ledger import accounts, credit, money
from control.ledger.accounts import Actor
from control.ledger.events import CreditNotice
from control.ledger.models import Account, Kit, LedgerEntry, Payment
from control.ledger.writes import Write, sql_text, write_all
from control.payments import matching
from control.runtime import Runtime

log = logging.getLogger(__name__)

P, A, K, L = (cast(Table, m.__table__) for m in (Payment, Account, Kit, LedgerEntry))
SETTLED = ("credited", "suspense")  # an intent in either state is never credited again


@dataclass(frozen=True, slots=True)
class Confirmed:
    """Payment columns a provider confirmed; None keeps what the row holds."""

    paid_at: float | None = None
    tx_reference: str | None = None
    payment_reference: str | None = None
    network: str | None = None


@dataclass(frozen=True, slots=True)
class Receipt:
    """What became of a payment; ``credited`` only for the one delivery that credited."""

    outcome: str  # credited|duplicate|suspense|conflict|reversed|void|unknown_original
    payment_id: int | None
    credited: bool = False
    account_id: int | None = None
    kit_id: str | None = None
    command_id: str | None = None
    amount_fcfa: int | None = None
    detail: str | None = None
    days: int | None = None  # whole days the credit bought


@dataclass(frozen=True, slots=True)
class PaymentRow:
    """A payment as its posting transaction holds it (locked)."""

    id: int
    status: str
    provider: str
    provider_ref: str
    desco_id: str
    requested_fcfa: int | None
    account_id: int | None
    amount_fcfa: int | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class AccountRow:
    """An account and its kit as the posting transaction holds them (locked)."""

    id: int
    kit_id: str
    desco_id: str
    account_number: str
    phone: str | None
    erased: bool
    closed: bool
    plan: credit.Plan
    state: credit.CreditState
    kit: KitSeq
    decommissioned: bool
    keypad_only: bool
    last_seen: float | None
    kit_created_at: float

    @property
    def owed_fcfa(self) -> int:
        return credit.balance_fcfa(self.plan, self.state)

    def snapshot(self, state: credit.CreditState | None = None) -> dict[str, Any]:
        """The fields an audit entry records before and after a change."""
        st = state if state is not None else self.state
        return {"paid_total_fcfa": st.paid_total_fcfa, "remainder_fcfa": st.remainder_fcfa,
                "credit_until": st.credit_until, "owned": st.owned}


@dataclass(frozen=True, slots=True)
class Posted:
    """A committed-to-be posting: what ``deliver`` acts on once the transaction commits."""

    change: credit.CreditChange
    issued: Issued | None
    notice: CreditNotice


# --- locked reads: payment, account and kit in one statement ------------------------------

_PAYMENT_COLS = (P.c.id.label("p_id"), P.c.status.label("p_status"), P.c.provider,
                 P.c.provider_ref, P.c.desco_id.label("p_desco"), P.c.requested_fcfa,
                 P.c.account_id.label("p_account"), P.c.amount_fcfa.label("p_amount"),
                 P.c.reason.label("p_reason"))
_ACCOUNT_COLS = (A.c.id.label("a_id"), A.c.kit_id, A.c.desco_id.label("a_desco"),
                 A.c.account_number, A.c.customer_phone, A.c.personal_data_erased_at,
                 A.c.closed_at, A.c.deposit_fcfa, A.c.daily_rate_fcfa, A.c.total_price_fcfa,
                 A.c.paid_total_fcfa, A.c.remainder_fcfa, A.c.credit_until, A.c.owned,
                 K.c.cmd_seq, K.c.commanded_action, K.c.commanded_credit_until,
                 K.c.lock_due_at, K.c.secret_enc, K.c.decommissioned_at, K.c.keypad_only,
                 K.c.last_seen, K.c.created_at.label("k_created"), K.c.protocol_version)
# Built once: constructing a statement per call cost more than executing it. SQLite
# renders no FOR UPDATE (Database.writing takes its writer lock instead).
_LOCK_LINKED = (select(*_PAYMENT_COLS, *_ACCOUNT_COLS)
                .select_from(P.join(A, A.c.id == P.c.account_id).join(K, K.c.id == A.c.kit_id))
                .where(P.c.id == bindparam("pid")).with_for_update())
_LOCK_PAYMENT = select(*_PAYMENT_COLS).where(P.c.id == bindparam("pid")).with_for_update()
_LOCK_ACCOUNT = (select(*_ACCOUNT_COLS).select_from(A.join(K, K.c.id == A.c.kit_id))
                 .where(A.c.id == bindparam("aid")).with_for_update())


def _payment(r: Any) -> PaymentRow:
    return PaymentRow(r.p_id, r.p_status, r.provider, r.provider_ref, r.p_desco,
                      r.requested_fcfa, r.p_account, r.p_amount, r.p_reason)


def _account(r: Any) -> AccountRow:
    return AccountRow(
        id=r.a_id, kit_id=r.kit_id, desco_id=r.a_desco, account_number=r.account_number,
        phone=r.customer_phone, erased=r.personal_data_erased_at is not None,
        closed=r.closed_at is not None,
        plan=credit.Plan(r.deposit_fcfa, r.daily_rate_fcfa, r.total_price_fcfa),
        state=credit.CreditState(r.paid_total_fcfa, r.remainder_fcfa, r.credit_until,
                                 r.owned),
        kit=KitSeq(r.kit_id, r.cmd_seq, commanded(r.commanded_action,
                                                  r.commanded_credit_until),
                   r.lock_due_at, r.secret_enc, r.protocol_version),
        decommissioned=r.decommissioned_at is not None, keypad_only=bool(r.keypad_only),
        last_seen=r.last_seen, kit_created_at=r.k_created)


def lock_payment(conn: Connection, payment_id: int, *, with_account: bool = True
                 ) -> tuple[PaymentRow, AccountRow | None] | None:
    """The payment and (``with_account``) its linked account and kit, row-locked, in one
    statement; None when there is no such payment."""
    if with_account:
        linked = conn.execute(_LOCK_LINKED, {"pid": payment_id}).first()
        if linked is not None:
            return _payment(linked), _account(linked)
    alone = conn.execute(_LOCK_PAYMENT, {"pid": payment_id}).first()
    return (_payment(alone), None) if alone is not None else None


def lock_account(conn: Connection, account_id: int) -> AccountRow | None:
    r = conn.execute(_LOCK_ACCOUNT, {"aid": account_id}).first()
    return _account(r) if r is not None else None


# --- the writes -----------------------------------------------------------------------------
# Each statement names its own parameters (prefix per table; ``now`` is shared), so a whole
# posting travels as one bundle (control.ledger.writes).

def _provider_fields(prefix: str) -> dict[str, Any]:
    """Columns a provider confirmed: None keeps what the row holds."""
    return {"tx_reference": func.coalesce(bindparam(f"{prefix}txr", type_=String),
                                          P.c.tx_reference),
            "payment_reference": func.coalesce(bindparam(f"{prefix}pref", type_=String),
                                               P.c.payment_reference),
            "network": func.coalesce(bindparam(f"{prefix}net", type_=String), P.c.network)}


_POSTED = update(P).where(P.c.id == bindparam("p_id")).values(
    status=bindparam("p_status"), amount_fcfa=bindparam("p_amount"),
    account_id=bindparam("p_account"), desco_id=bindparam("p_desco"),
    credited_at=bindparam("now"), updated_at=bindparam("now"),
    matched_by=func.coalesce(bindparam("p_matched", type_=String), P.c.matched_by),
    next_check_at=null(), currency=sql_text(money.CURRENCY),
    paid_at=func.coalesce(bindparam("p_paid", type_=Float), P.c.paid_at, bindparam("now")),
    **_provider_fields("p_"))
_PARKED = update(P).where(P.c.id == bindparam("s_id")).values(
    status="suspense", reason=bindparam("s_reason"), account_id=bindparam("s_account"),
    desco_id=bindparam("s_desco"), matched_by=bindparam("s_matched", type_=String),
    amount_fcfa=func.coalesce(bindparam("s_amount", type_=BigInteger), P.c.amount_fcfa),
    updated_at=bindparam("now"), next_check_at=null(),
    paid_at=func.coalesce(bindparam("s_paid", type_=Float), P.c.paid_at),
    **_provider_fields("s_"))
_ENTRY = insert(L).values(
    account_id=bindparam("e_account"), payment_id=bindparam("e_payment"),
    kind=bindparam("e_kind"), amount_fcfa=bindparam("e_amount"), days=bindparam("e_days"),
    remainder_after_fcfa=bindparam("e_remainder"),
    credit_until_before=bindparam("e_before", type_=BigInteger),
    credit_until_after=bindparam("e_after", type_=BigInteger), created_at=bindparam("now"))
_TOTALS = update(A).where(A.c.id == bindparam("t_account")).values(
    paid_total_fcfa=bindparam("t_paid_total"), remainder_fcfa=bindparam("t_remainder"),
    credit_until=bindparam("t_until", type_=BigInteger), owned=bindparam("t_owned"))
def post(rt: Runtime, conn: Connection, *, payment: PaymentRow, acct: AccountRow,
         amount: int, kind: str = "payment", matched_by: str | None = None,
         confirmed: Confirmed = Confirmed(), staff: tuple[Actor, str, dict[str, Any]] | None
         = None, reason: str | None = None) -> Posted:
    """Credit ``amount`` (``kind`` payment) or take it back (``kind`` reversal) on the locked
    ``acct``, inside the caller's transaction; ``staff``: (actor, audit action, audit
    detail) when a person acted, which is audited with the account before and after."""
    now = rt.clock.now()
    if kind == "payment":
        change = credit.apply_payment(acct.plan, acct.state, amount, int(now))
    else:
        change = credit.apply_reversal(acct.plan, acct.state, amount, int(now))
    after = change.after
    signed = amount if kind == "payment" else -amount
    writes = [
        Write(_POSTED, {
            "p_id": payment.id, "p_status": "credited" if kind == "payment" else "applied",
            "p_amount": amount, "p_account": acct.id, "p_desco": acct.desco_id, "now": now,
            "p_matched": matched_by, "p_paid": confirmed.paid_at,
            "p_txr": confirmed.tx_reference, "p_pref": confirmed.payment_reference,
            "p_net": confirmed.network}, rows=1),
        Write(_ENTRY, {
            "e_account": acct.id, "e_payment": payment.id, "e_kind": kind, "e_amount": signed,
            "e_days": change.days_added, "e_remainder": after.remainder_fcfa,
            "e_before": change.before.credit_until, "e_after": after.credit_until,
            "now": now}),
        Write(_TOTALS, {"t_account": acct.id, "t_paid_total": after.paid_total_fcfa,
                        "t_remainder": after.remainder_fcfa, "t_until": after.credit_until,
                        "t_owned": after.owned}),
    ]
    if staff is not None:
        actor, action, detail = staff
        writes.append(accounts.audit_write(actor=actor, action=action, now=now, kit_id=acct.kit_id,
                                  desco_id=acct.desco_id, reason=reason,
                                  before=acct.snapshot(), after={**acct.snapshot(after),
                                                                 **detail}))
    planned = rt.service.plan_converge(
        acct.kit, desired_from(after.owned, after.credit_until, now, acct.closed),
        decommissioned=acct.decommissioned, origin="payment", now=now)
    if planned is not None:
        writes += planned.writes
    issued = planned.issued if planned is not None else None
    write_all(conn, writes)
    log.info("payment %s", "credited" if kind == "payment" else "reversed",
             extra={"payment_id": payment.id, "kit_id": acct.kit_id, "amount_fcfa": amount,
                    "days": change.days_added,
                    "command_id": issued.id if issued is not None else None})
    wants_token = tokens.needs_token(
        decommissioned=acct.decommissioned, keypad_only=acct.keypad_only,
        last_seen=acct.last_seen, created_at=acct.kit_created_at, now=now,
        offline_after_s=rt.settings.keypad_offline_after_s)
    notice = CreditNotice(
        payment_id=payment.id, kit_id=acct.kit_id, account_id=acct.id, amount_fcfa=signed,
        credit_until=after.credit_until, owned=after.owned, provider=payment.provider,
        kind=kind, days=change.days_added, account_number=acct.account_number,
        phone=acct.phone, desco_id=acct.desco_id, daily_rate_fcfa=acct.plan.daily_rate_fcfa,
        erased=acct.erased, wants_token=wants_token)
    return Posted(change, issued, notice)


def park(rt: Runtime, conn: Connection, *, payment: PaymentRow, reason: str,
         actor: Actor, amount: int | None, acct: AccountRow | None = None,
         matched_by: str | None = None, confirmed: Confirmed = Confirmed(),
         detail: dict[str, Any] | None = None) -> Receipt:
    """Money we hold but will not credit without a human: parked in suspense with the
    reason (``acct``: the account it seemed to be for, a hint for staff only). Audited."""
    now = rt.clock.now()
    desco = acct.desco_id if acct is not None else payment.desco_id
    kit_id = acct.kit_id if acct is not None else None
    write_all(conn, [
        Write(_PARKED, {"s_id": payment.id, "s_reason": reason, "now": now,
                        "s_account": acct.id if acct is not None else payment.account_id,
                        "s_desco": desco, "s_matched": matched_by, "s_amount": amount,
                        "s_paid": confirmed.paid_at, "s_txr": confirmed.tx_reference,
                        "s_pref": confirmed.payment_reference, "s_net": confirmed.network},
              rows=1),
        accounts.audit_write(actor=actor, action="payment.suspense", now=now, kit_id=kit_id,
                    desco_id=desco, reason=reason,
                    after={**(detail or {}), "provider": payment.provider,
                           "provider_ref": payment.provider_ref, "amount_fcfa": amount}),
    ])
    log.warning("payment parked in suspense: %s", reason,
                extra={"kit_id": kit_id, "payment_id": payment.id})
    return Receipt("suspense", payment.id, account_id=acct.id if acct is not None else None,
                   kit_id=kit_id, amount_fcfa=amount, detail=reason)


def settle(rt: Runtime, conn: Connection, *, payment: PaymentRow, acct: AccountRow | None,
           amount: int | None, currency: str | None, checks: matching.Checks, actor: Actor,
           matched_by: str | None, confirmed: Confirmed = Confirmed(),
           unmatched: str = "payment is not linked to an account",
           detail: dict[str, Any] | None = None) -> tuple[Receipt, Posted | None]:
    """Credit a confirmed payment to its locked account if ``checks`` pass, else park it."""
    reason: str | None
    if acct is None:  # no account to weigh the amount against: only its form counts
        reason = matching.verdict(amount, currency, checks=matching.VOUCHED,
                                  requested_fcfa=None, owed_fcfa=0) or unmatched
    else:
        reason = matching.verdict(amount, currency, checks=checks,
                                  requested_fcfa=payment.requested_fcfa,
                                  owed_fcfa=acct.owed_fcfa)
    if reason is not None or acct is None or amount is None:
        return park(rt, conn, payment=payment, reason=reason or unmatched, actor=actor,
                    amount=amount, acct=acct, matched_by=matched_by, confirmed=confirmed,
                    detail=detail), None
    posted = post(rt, conn, payment=payment, acct=acct, amount=amount, matched_by=matched_by,
                  confirmed=confirmed)
    return credited(payment, acct, posted), posted


def credited(payment: PaymentRow, acct: AccountRow, posted: Posted) -> Receipt:
    return Receipt("credited", payment.id, credited=True, account_id=acct.id,
                   kit_id=acct.kit_id,
                   command_id=posted.issued.id if posted.issued is not None else None,
                   amount_fcfa=posted.notice.amount_fcfa, days=posted.change.days_added)


def deliver(rt: Runtime, posted: Posted | None) -> None:
    """After commit: publish the posting's command now (the sweep retries it otherwise),
    then the after-credit hooks."""
    if posted is None:
        return
    if posted.issued is not None:
        rt.service.send([posted.issued.outgoing], payment_id=posted.notice.payment_id)
    rt.credited(posted.notice)


# --- entry points -----------------------------------------------------------------------------


def credit_intent(rt: Runtime, payment_id: int, *, amount: int | None, currency: str | None,
                  checks: matching.Checks, actor: Actor,
                  confirmed: Confirmed = Confirmed()) -> Receipt:
    """Credit an intent of ours (the account is known) that its provider confirmed, once;
    a doubtful amount or currency is parked."""
    posted: Posted | None = None
    try:
        with rt.db.writing() as conn:
            found = lock_payment(conn, payment_id)
            if found is None:
                return Receipt("unknown_original", None, detail=f"no payment {payment_id}")
            payment, acct = found
            if payment.status in SETTLED:
                return Receipt("duplicate", payment.id, account_id=payment.account_id,
                               amount_fcfa=payment.amount_fcfa,
                               detail=f"already {payment.status}")
            receipt, posted = settle(rt, conn, payment=payment, acct=acct, amount=amount,
                                     currency=currency, checks=checks, actor=actor,
                                     matched_by="intent", confirmed=confirmed)
    except IntegrityError:
        # the ledger's unique payment_id: another worker credited it between our checks
        return Receipt("duplicate", payment_id, detail="credited concurrently")
    deliver(rt, posted)
    return receipt


def credit_parked(rt: Runtime, payment_id: int, account_id: int, *, actor: Actor,
                  audit_detail: dict[str, Any]) -> Receipt:
    """Credit a suspense payment to a chosen account (an approved link), exactly once; the
    staff member's link vouches for amount and currency."""
    with rt.db.writing() as conn:
        found = lock_payment(conn, payment_id, with_account=False)
        acct = lock_account(conn, account_id)
        if found is None or acct is None:
            return Receipt("unknown_original", payment_id, detail="payment or account gone")
        payment = found[0]
        if payment.status != "suspense" or payment.amount_fcfa is None:
            return Receipt("duplicate", payment.id, detail=f"payment is {payment.status}")
        posted = post(rt, conn, payment=payment, acct=acct, amount=payment.amount_fcfa,
                      matched_by="link",
                      staff=(actor, "payment.credit", {**audit_detail,
                                                       "amount_fcfa": payment.amount_fcfa,
                                                       "matched_by": "link"}))
        receipt = credited(payment, acct, posted)
    deliver(rt, posted)
    return receipt
