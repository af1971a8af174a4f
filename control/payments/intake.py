"""Money that arrived, from any feed: match it to an account and credit it, or park it.

One database transaction holds the payment row, its ledger entry, the account's new credit,
the audit entry and the kit's command: all commit or none do. The payment's unique
``(provider, provider_ref)`` makes every delivery after the first a duplicate, also under
concurrent deliveries. Unmatched or doubtful money is parked in suspense (never dropped),
for support to link and finance to approve (``control.payments.suspense``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, bindparam, func, literal_column, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control.commands import lifecycle as commands
from control.commands import tokens
from control.commands.service import Outgoing
from control.ledger import accounts as ledger
from control.ledger import check as accounting
from control.ledger import credit
from control.ledger.accounts import Actor
from control.ledger.models import Account, Command, Kit, Payment
from control.payments import matching
from control.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Incoming:
    """A provider transaction whose money is confirmed (by status API, signature or approval)."""

    provider: str
    provider_ref: str
    desco_id: str | None  # None: any DESCO (a platform-wide merchant account)
    amount_fcfa: int
    currency: str = matching.CURRENCY
    phone_e164: str | None = None
    reference: str | None = None
    paid_at: float | None = None
    tx_reference: str | None = None
    payment_reference: str | None = None
    network: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)  # safe fields for the audit log


@dataclass(frozen=True, slots=True)
class Receipt:
    """What became of an incoming payment; ``credited`` only for the delivery that credited."""

    outcome: str  # credited|duplicate|suspense|conflict|reversed|void|unknown_original
    payment_id: int | None
    credited: bool = False
    account_id: int | None = None
    kit_id: str | None = None
    command_id: str | None = None
    amount_fcfa: int | None = None
    detail: str | None = None
    days: int | None = None  # whole days the credit bought
    # the command signed and claimed in the credit's transaction, published after commit
    outgoing: Outgoing | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class CreditNotice:
    """Handed to every after-credit hook once the credit is committed."""

    payment_id: int
    kit_id: str
    account_id: int
    amount_fcfa: int
    credit_until: int | None
    owned: bool
    provider: str
    kind: str  # payment|reversal
    # read in the credit's transaction, so the receipt needs no database of its own
    days: int | None = None
    account_number: str | None = None
    phone: str | None = None
    desco_id: str | None = None
    daily_rate_fcfa: int | None = None
    erased: bool = False
    wants_token: bool | None = None  # None: not known, the hook reads the kit


# Called after commit, once per credit or reversal that moved money (issue 5's receipts).
# A hook that raises is logged; it never undoes the credit.
AFTER_CREDIT_HOOKS: list[Callable[[Runtime, CreditNotice], None]] = []


def after_credit(rt: Runtime, notice: CreditNotice) -> None:
    """Run the after-commit hooks (customer receipt, ...) for a committed credit."""
    for hook in list(AFTER_CREDIT_HOOKS):
        try:
            hook(rt, notice)
        except Exception:
            log.exception("after-credit hook %s failed", getattr(hook, "__name__", hook),
                          extra={"kit_id": notice.kit_id, "payment_id": notice.payment_id})


def publish_and_notify(rt: Runtime, receipt: Receipt, notice: CreditNotice | None) -> None:
    """After commit: publish the kit's command now (the sweep retries), then the hooks."""
    if receipt.outgoing is not None:
        rt.service.send_claimed(receipt.outgoing, payment_id=receipt.payment_id)
    else:
        publish_after_commit(rt, receipt.command_id, kit_id=receipt.kit_id,
                             payment_id=receipt.payment_id)
    if notice is not None:
        after_credit(rt, notice)


def publish_after_commit(rt: Runtime, command_id: str | None, *, kit_id: str | None,
                         payment_id: int | None = None) -> None:
    """Publish a committed command now; on failure the sweep re-publishes it (still queued)."""
    if command_id is None:
        return
    try:
        rt.service.publish([command_id])
    except Exception:
        log.exception("publishing command %s failed; the sweep will retry", command_id,
                      extra={"kit_id": kit_id, "payment_id": payment_id})


def notice_for(acct: Account, payment: Payment, amount: int, *, days: int | None = None,
               wants_token: bool | None = None) -> CreditNotice:
    return CreditNotice(payment_id=payment.id, kit_id=acct.kit_id, account_id=acct.id,
                        amount_fcfa=amount, credit_until=acct.credit_until, owned=acct.owned,
                        provider=payment.provider, kind=payment.kind, days=days,
                        account_number=acct.account_number, phone=acct.customer_phone,
                        desco_id=acct.desco_id, daily_rate_fcfa=acct.daily_rate_fcfa,
                        erased=acct.personal_data_erased_at is not None,
                        wants_token=wants_token)


def converge_and_claim(rt: Runtime, s: Session, acct: Account, kit: Kit | None
                       ) -> tuple[Command | None, Outgoing | None, bool | None]:
    """Inside a credit's transaction: the kit's new command, signed and claimed for
    publishing after commit, and whether the kit also needs a keypad token."""
    kit = kit if kit is not None else rt.service.lock_kit(s, acct.kit_id)
    if kit is None:
        return None, None, None
    cmd = rt.service.converge_kit(s, acct.kit_id, origin="payment", kit=kit, acct=acct)
    out = rt.service.claim_for_publish(s, cmd, kit)
    return cmd, out, tokens.wants_token(kit, rt.clock.now(),
                                        rt.settings.keypad_offline_after_s)


# --- matching ---------------------------------------------------------------------------


def find_match(s: Session, *, desco_id: str | None, reference: str | None,
               phone_e164: str | None) -> matching.Match:
    """Reference (account number or kit serial, any case/spacing), then registered phone."""
    by_ref: list[int] = []
    key = matching.normalise_reference(reference)
    if key is not None:
        number: ColumnElement[str] = literal_column(
            matching.sql_normalised("accounts.account_number"))
        serial: ColumnElement[str] = literal_column(matching.sql_normalised("accounts.kit_id"))
        q = select(Account.id).where((number == key) | (serial == key))
        if desco_id is not None:
            q = q.where(Account.desco_id == desco_id)
        by_ref = list(s.scalars(q))
    by_phone: list[int] = []
    if phone_e164 is not None:
        q3 = select(Account.id).where(Account.customer_phone == phone_e164)
        if desco_id is not None:
            q3 = q3.where(Account.desco_id == desco_id)
        by_phone = list(s.scalars(q3))
    return matching.decide(by_ref, by_phone)


def owed(acct: Account) -> int:
    return credit.balance_fcfa(ledger.plan_of(acct), ledger.state_of(acct))


# --- receiving ----------------------------------------------------------------------------


def _existing(rt: Runtime, inc: Incoming, error: IntegrityError) -> Receipt:
    """The payment a unique-key violation says is already recorded; any other integrity
    error (no such row) is not a duplicate and is raised again, never answered 'done'."""
    with rt.db.session() as s:
        row = s.scalars(select(Payment).where(
            Payment.provider == inc.provider,
            Payment.provider_ref == inc.provider_ref)).one_or_none()
        if row is None:
            raise error
        if row.amount_fcfa != inc.amount_fcfa:
            return Receipt("conflict", row.id, detail=f"transaction already recorded with "
                           f"amount {row.amount_fcfa}, not {inc.amount_fcfa}")
        acct = s.get(Account, row.account_id) if row.account_id is not None else None
        kit = acct.kit_id if acct is not None else None
        return Receipt("duplicate", row.id, account_id=row.account_id, kit_id=kit,
                       amount_fcfa=row.amount_fcfa, detail=f"already {row.status}")


def receive(rt: Runtime, inc: Incoming, *, actor: Actor) -> Receipt:
    """Record, match and credit (or park) a confirmed payment, exactly once."""
    now = rt.clock.now()
    notice: CreditNotice | None = None
    try:
        with rt.db.session() as s:
            row = Payment(
                desco_id=inc.desco_id or rt.settings.default_desco_id, provider=inc.provider,
                provider_ref=inc.provider_ref, kind="payment", amount_fcfa=inc.amount_fcfa,
                currency=inc.currency, phone=inc.phone_e164, reference=inc.reference,
                network=inc.network, tx_reference=inc.tx_reference,
                payment_reference=inc.payment_reference, paid_at=inc.paid_at or now,
                status="received", created_at=now, updated_at=now, check_attempts=0,
            )
            s.add(row)
            s.flush()  # the unique (provider, provider_ref) fails here for a duplicate
            match = find_match(s, desco_id=inc.desco_id, reference=inc.reference,
                               phone_e164=inc.phone_e164)
            receipt, wants = _settle(rt, s, row, match, actor=actor, now=now,
                                     detail=inc.detail, requested=None)
            if receipt.credited:
                acct = s.get(Account, row.account_id)
                assert acct is not None
                notice = notice_for(acct, row, inc.amount_fcfa, days=receipt.days,
                                    wants_token=wants)
    except IntegrityError as exc:
        log.info("%s transaction already recorded", inc.provider)
        return _existing(rt, inc, exc)
    publish_and_notify(rt, receipt, notice)
    return receipt


def _settle(rt: Runtime, s: Session, row: Payment, match: matching.Match, *, actor: Actor,
            now: float, detail: dict[str, Any], requested: int | None,
            locked: Account | None = None, kit: Kit | None = None
            ) -> tuple[Receipt, bool | None]:
    """Inside the transaction: credit ``row`` to the matched account, or park it; also
    whether the kit wants a keypad token (None: not credited).

    ``locked``/``kit``: the account and its kit when the caller already holds their row
    locks (lock_for_credit).
    A plain credit writes no audit row: the payment row (who, how matched, when) and its
    ledger entry record it; staff actions (approvals, links) and suspense are audited.
    """
    amount = row.amount_fcfa
    assert amount is not None
    reason = match.reason
    acct: Account | None = None
    if match.account_id is not None:
        if locked is not None and locked.id == match.account_id:
            acct = locked
        else:
            acct = s.scalars(select(Account).where(Account.id == match.account_id)
                             .with_for_update()).one()
        if row.currency not in (None, matching.CURRENCY):
            reason = f"currency {row.currency} is not {matching.CURRENCY}"
        else:
            reason = matching.suspicious_amount(amount, owed_fcfa=owed(acct),
                                                requested_fcfa=requested)
        row.desco_id = acct.desco_id
    extra = {"kit_id": acct.kit_id if acct else None, "payment_id": row.id}
    if acct is None or reason is not None:
        row.status = "suspense"
        row.reason = reason
        row.account_id = acct.id if acct is not None else None  # a hint for staff only
        row.matched_by = match.matched_by
        row.updated_at = now
        ledger.audit(s, actor=actor, action="payment.suspense", now=now,
                     kit_id=acct.kit_id if acct else None, desco_id=row.desco_id,
                     reason=reason, after={**detail, "provider": row.provider,
                                           "provider_ref": row.provider_ref,
                                           "amount_fcfa": amount})
        log.warning("payment parked in suspense: %s", reason, extra=extra)
        return Receipt("suspense", row.id, account_id=row.account_id,
                       kit_id=acct.kit_id if acct else None, amount_fcfa=amount,
                       detail=reason), None
    change = ledger.credit_payment(s, payment=row, acct=acct, amount_fcfa=amount, now=now)
    row.matched_by = match.matched_by
    s.flush()  # the ledger entry's unique payment_id fails here, not at commit
    cmd, out, wants = converge_and_claim(rt, s, acct, kit)
    return Receipt("credited", row.id, credited=True, account_id=acct.id, kit_id=acct.kit_id,
                   command_id=cmd.id if cmd is not None else None, amount_fcfa=amount,
                   days=change.days_added, outgoing=out), wants


def credit_parked(rt: Runtime, payment_id: int, account_id: int, *, actor: Actor,
                  audit_detail: dict[str, Any]) -> Receipt:
    """Credit a suspense payment to a chosen account (an approved link), exactly once."""
    now = rt.clock.now()
    with rt.db.session() as s:
        row = s.scalars(select(Payment).where(Payment.id == payment_id).with_for_update()
                        .execution_options(populate_existing=True)).one()
        if row.status != "suspense":
            return Receipt("duplicate", row.id, detail=f"payment is {row.status}")
        row.currency = matching.CURRENCY  # staff vouch for it by linking
        acct = s.scalars(select(Account).where(Account.id == account_id)
                         .with_for_update()).one()
        before = ledger.account_snapshot(acct)
        assert row.amount_fcfa is not None
        ledger.credit_payment(s, payment=row, acct=acct, amount_fcfa=row.amount_fcfa, now=now)
        row.matched_by = "link"
        row.desco_id = acct.desco_id
        s.flush()
        ledger.audit(s, actor=actor, action="payment.credit", now=now, kit_id=acct.kit_id,
                     desco_id=acct.desco_id, before=before,
                     after={**ledger.account_snapshot(acct), **audit_detail,
                            "amount_fcfa": row.amount_fcfa, "matched_by": "link"})
        cmd = rt.service.converge_kit(s, acct.kit_id, origin="payment")
        receipt = Receipt("credited", row.id, credited=True, account_id=acct.id,
                          kit_id=acct.kit_id, command_id=cmd.id if cmd is not None else None,
                          amount_fcfa=row.amount_fcfa)
        notice = notice_for(acct, row, row.amount_fcfa)
    publish_and_notify(rt, receipt, notice)
    return receipt


# --- reversals ----------------------------------------------------------------------------


class ReversalConflict(ValueError):
    """The reversal cannot apply as sent; nothing was recorded (the transaction rolled back)."""


def reverse(rt: Runtime, *, provider: str, provider_ref: str, original_ref: str,
            desco_id: str | None, amount_fcfa: int, actor: Actor, reason: str) -> Receipt:
    """A reversal or refund: its own transaction, posted as a correcting (negative) entry.

    Unknown original: the reversal is parked (nothing moves) for staff. Original still in
    suspense: it is voided (no ledger entry existed). More than is left to reverse: conflict.
    """
    now = rt.clock.now()
    notice: CreditNotice | None = None
    try:
        with rt.db.session() as s:
            q = select(Payment).where(Payment.provider == provider,
                                      Payment.provider_ref == original_ref,
                                      Payment.kind == "payment")
            if desco_id is not None:
                q = q.where(Payment.desco_id == desco_id)
            original = s.scalars(q.with_for_update()).one_or_none()
            row = Payment(
                desco_id=(original.desco_id if original else desco_id)
                or rt.settings.default_desco_id,
                provider=provider, provider_ref=provider_ref, kind="reversal",
                reverses_payment_id=original.id if original else None,
                amount_fcfa=amount_fcfa, currency=matching.CURRENCY, reference=original_ref,
                status="received", created_at=now, updated_at=now, paid_at=now,
                check_attempts=0, reason=reason,
            )
            s.add(row)
            s.flush()
            receipt, notice = _apply_reversal(rt, s, row, original, actor=actor, now=now)
    except IntegrityError as exc:
        return _existing(rt, Incoming(provider, provider_ref, desco_id, amount_fcfa), exc)
    publish_and_notify(rt, receipt, notice)
    return receipt


def _apply_reversal(rt: Runtime, s: Session, row: Payment, original: Payment | None, *,
                    actor: Actor, now: float) -> tuple[Receipt, CreditNotice | None]:
    amount = row.amount_fcfa
    assert amount is not None
    audit_after = {"provider": row.provider, "provider_ref": row.provider_ref,
                   "reverses": row.reference, "amount_fcfa": amount}
    if original is None:
        row.status = "suspense"
        row.reason = "reversal of a payment we do not know"
        ledger.audit(s, actor=actor, action="payment.reversal_unknown", now=now,
                     desco_id=row.desco_id, reason=row.reason, after=audit_after)
        log.warning("reversal for an unknown payment parked", extra={"payment_id": row.id})
        return Receipt("unknown_original", row.id, amount_fcfa=amount, detail=row.reason), None
    if original.status == "suspense":
        if amount != original.amount_fcfa:
            raise ReversalConflict("a suspense payment can only be reversed whole")
        original.status = "reversed"
        original.updated_at = now
        row.status = "void"
        ledger.audit(s, actor=actor, action="payment.reversal_void", now=now,
                     desco_id=row.desco_id, reason="original was in suspense", after=audit_after)
        return Receipt("void", row.id, amount_fcfa=amount,
                       detail="original was in suspense: nothing had been credited"), None
    if original.status != "credited" or original.account_id is None:
        raise ReversalConflict(f"original payment is {original.status}")
    already = s.scalar(select(func.coalesce(func.sum(Payment.amount_fcfa), 0)).where(
        Payment.reverses_payment_id == original.id, Payment.status == "applied")) or 0
    left = (original.amount_fcfa or 0) - int(already)
    if amount > left:
        raise ReversalConflict(f"only {left} of payment {original.provider_ref} is left to reverse")
    acct = s.scalars(select(Account).where(Account.id == original.account_id)
                     .with_for_update()).one()
    before = ledger.account_snapshot(acct)
    accounting.post_reversal(s, reversal=row, acct=acct, amount_fcfa=amount, now=now)
    s.flush()
    ledger.audit(s, actor=actor, action="payment.reversal", now=now, kit_id=acct.kit_id,
                 desco_id=acct.desco_id, reason=row.reason, before=before,
                 after={**ledger.account_snapshot(acct), **audit_after})
    cmd = rt.service.converge_kit(s, acct.kit_id, origin="payment")
    log.info("reversal applied", extra={"kit_id": acct.kit_id, "payment_id": row.id})
    receipt = Receipt("reversed", row.id, account_id=acct.id, kit_id=acct.kit_id,
                      command_id=cmd.id if cmd is not None else None, amount_fcfa=amount)
    return receipt, notice_for(acct, row, -amount)


# --- intents (our own request-to-pay, account known) ------------------------------------------


def lock_payment(rt: Runtime, s: Session, payment_id: int) -> Payment:
    """Lock the payment row for this transaction (FOR UPDATE; SQLite: take the write lock)."""
    commands.sqlite_write_lock(s)  # SQLite ignores FOR UPDATE: no writer in between
    return s.scalars(select(Payment).where(Payment.id == payment_id).with_for_update()
                     .execution_options(populate_existing=True)).one()


def lock_for_credit(rt: Runtime, s: Session, payment_id: int
                    ) -> tuple[Payment, Account | None, Kit | None]:
    """The payment, its linked account and that account's kit, all row-locked, in one
    statement (the credit path's hot spot: one round trip instead of four; the kit is then
    in the session, so converging it issues its command without reading it again, and its
    ``cmd_seq`` cannot move under us). No linked account: the payment alone.
    Hold on to the returned kit for the transaction: the session only keeps weak references,
    so a dropped kit would be read again."""
    commands.sqlite_write_lock(s)  # SQLite ignores FOR UPDATE: no writer in between
    found = s.execute(select(Payment, Account, Kit)
                      .join(Account, Account.id == Payment.account_id)
                      .join(Kit, Kit.id == Account.kit_id)
                      .where(Payment.id == payment_id).with_for_update()
                      .execution_options(populate_existing=True)).one_or_none()
    if found is not None:
        return found[0], found[1], found[2]
    return s.scalars(select(Payment).where(Payment.id == payment_id).with_for_update()
                     .execution_options(populate_existing=True)).one(), None, None


@dataclass(frozen=True, slots=True)
class PaymentState:
    """What a callback needs to know before asking the provider: one cheap read."""

    payment_id: int
    status: str
    kit_id: str | None
    check_attempts: int


_STATE = (select(Payment.id, Payment.status, Account.kit_id, Payment.check_attempts)
          .outerjoin(Account, Account.id == Payment.account_id)
          .where(Payment.provider == bindparam("provider"),
                 Payment.provider_ref == bindparam("ref")))


def payment_state(rt: Runtime, provider: str, provider_ref: str) -> PaymentState | None:
    """One Core SELECT built once (no ORM objects, no flush): the hot path's first look at
    a callback."""
    with rt.db.engine.connect() as conn:
        r = conn.execute(_STATE, {"provider": provider, "ref": provider_ref}).first()
    if r is None:
        return None
    return PaymentState(r[0], r[1], r[2], r[3] or 0)


def credit_intent(rt: Runtime, payment_id: int, *, amount: int | None, currency: str | None,
                  actor: Actor, fields: dict[str, Any]) -> Receipt:
    """Credit a confirmed intent of ours once; a doubtful amount or currency is parked."""
    now = rt.clock.now()
    notice: CreditNotice | None = None
    try:
        with rt.db.session() as s:
            row, locked, kit = lock_for_credit(rt, s, payment_id)  # kit: held, see there
            if row.status in ("credited", "suspense"):
                return Receipt("duplicate", row.id, account_id=row.account_id,
                               amount_fcfa=row.amount_fcfa, detail=f"already {row.status}")
            for name, value in fields.items():
                if value is not None:
                    setattr(row, name, value)
            row.currency = currency
            if amount is None:
                row.status, row.reason, row.updated_at = "suspense", \
                    "provider confirmed no usable amount", now
                ledger.audit(s, actor=actor, action="payment.suspense", now=now,
                             desco_id=row.desco_id, reason=row.reason,
                             after={"provider_ref": row.provider_ref})
                return Receipt("suspense", row.id, detail=row.reason)
            row.amount_fcfa = amount
            match = matching.Match(row.account_id, "intent") if row.account_id is not None \
                else matching.Match(None, None, "payment is not linked to an account")
            receipt, wants = _settle(rt, s, row, match, actor=actor, now=now,
                                     detail={"provider_ref": row.provider_ref},
                                     requested=row.requested_fcfa, locked=locked, kit=kit)
            if receipt.credited:
                row.next_check_at = None  # nothing left to poll the provider for
                acct = locked if locked is not None else s.get(Account, row.account_id)
                assert acct is not None
                notice = notice_for(acct, row, amount, days=receipt.days, wants_token=wants)
    except IntegrityError:
        # the ledger's unique payment_id: another worker credited it between our checks
        return Receipt("duplicate", payment_id, detail="credited concurrently")
    publish_and_notify(rt, receipt, notice)
    return receipt
