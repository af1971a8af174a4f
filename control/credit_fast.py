"""The commonest credit, a confirmed intent of ours, in a handful of Core statements.

The payment hot path (bench/payments.py) spent most of its CPU in the ORM: loading three
mapped objects, flushing five, synchronising a bulk update. This module writes the same
rows as ``ledger.credit_payment`` + ``commands.converge`` + ``ControlService.claim_for_publish``
(same rules: ``credit.apply_payment``, ``commands.desired_from``; same lock: payment,
account and kit rows in one locking read) for the plain case only: an intent still
``initiated``/``pending``, linked to an open account, confirmed for the amount requested.
Anything else returns None and the caller takes the general path (control.intake), which
parks, audits and explains.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import String, Table, bindparam, func, insert, select, update

from cizo import protocol
from control import commands, credit, matching
from control.intake import CreditNotice
from control.models import Account, Command, Kit, LedgerEntry, Payment
from control.runtime import Runtime
from control.service import Outgoing

log = logging.getLogger(__name__)

OPEN = ("initiated", "pending")


@dataclass(frozen=True, slots=True)
class FastCredit:
    payment_id: int
    kit_id: str
    account_id: int
    command_id: str | None
    outgoing: Outgoing | None
    notice: CreditNotice


P, A, K = (cast(Table, m.__table__) for m in (Payment, Account, Kit))
L, C = (cast(Table, m.__table__) for m in (LedgerEntry, Command))

# Built once: constructing a statement per call (ORM attributes, .values()) cost more than
# executing it. Every varying value is a bind parameter.
_READ = (
    select(P.c.status, P.c.requested_fcfa, P.c.provider, A.c.id, A.c.kit_id, A.c.desco_id,
           A.c.account_number, A.c.customer_phone, A.c.personal_data_erased_at,
           A.c.closed_at, A.c.deposit_fcfa, A.c.daily_rate_fcfa, A.c.total_price_fcfa,
           A.c.paid_total_fcfa, A.c.remainder_fcfa, A.c.credit_until, A.c.owned,
           K.c.cmd_seq, K.c.commanded_action, K.c.commanded_credit_until,
           K.c.decommissioned_at, K.c.keypad_only, K.c.last_seen, K.c.created_at,
           K.c.secret_enc)
    .select_from(P.join(A, A.c.id == P.c.account_id).join(K, K.c.id == A.c.kit_id))
    .where(P.c.id == bindparam("pid"))
)
_LOCK_PG = _READ.with_for_update()
_WRITER_LOCK = update(P).where(P.c.id == bindparam("pid")).values(updated_at=P.c.updated_at)
_PAYMENT = update(P).where(P.c.id == bindparam("pid")).values(
    status="credited", amount_fcfa=bindparam("amount"), credited_at=bindparam("now"),
    updated_at=bindparam("now"), matched_by="intent", next_check_at=None,
    currency=bindparam("cur"), paid_at=bindparam("paid"),
    tx_reference=func.coalesce(bindparam("txr", type_=String), P.c.tx_reference),
    payment_reference=func.coalesce(bindparam("pref", type_=String), P.c.payment_reference),
    network=func.coalesce(bindparam("net", type_=String), P.c.network))
_LEDGER = insert(L)
_ACCOUNT = update(A).where(A.c.id == bindparam("aid")).values(
    paid_total_fcfa=bindparam("paid_total"), remainder_fcfa=bindparam("remainder"),
    credit_until=bindparam("until"), owned=bindparam("is_owned"))
_SUPERSEDE = update(C).where(C.c.kit_id == bindparam("kid"),
                             C.c.status.in_(commands.PENDING)).values(
    status="superseded", finished_at=bindparam("now"), next_attempt_at=None)
_COMMAND = insert(C)
_KIT = update(K).where(K.c.id == bindparam("kid")).values(
    cmd_seq=bindparam("seq_"), commanded_action=bindparam("action_"),
    commanded_credit_until=bindparam("until_"), lock_due_at=bindparam("due_"))


def credit_intent(rt: Runtime, payment_id: int, *, amount: int | None, currency: str | None,
                                fields: dict[str, Any], check_owed: bool) -> FastCredit | None:
    """Credit the intent ``payment_id`` with ``amount``, or None when it is not the plain
    case (the caller then takes the general path). ``fields``: payment columns the provider
    confirmed (references, network, paid_at). ``check_owed``: park amounts above what is
    still owed, as a payment matched by reference would be (MoMo); PayGate's intents are
    checked against the amount requested only."""
    if amount is None or isinstance(amount, bool) or amount <= 0:
        return None
    if currency not in (None, matching.CURRENCY):
        return None
    now = rt.clock.now()
    is_pg = rt.db.is_postgres
    with rt.db.engine.begin() as conn:
        if not is_pg:  # SQLite: take the single writer lock before reading (see intake)
            conn.execute(_WRITER_LOCK, {"pid": payment_id})
        r = conn.execute(_LOCK_PG if is_pg else _READ, {"pid": payment_id}).first()
        if r is None or r.status not in OPEN or r.closed_at is not None:
            return None
        if r.requested_fcfa is not None and amount != r.requested_fcfa:
            return None
        plan = credit.Plan(r.deposit_fcfa, r.daily_rate_fcfa, r.total_price_fcfa)
        state = credit.CreditState(r.paid_total_fcfa, r.remainder_fcfa, r.credit_until,
                                   r.owned)
        if check_owed and matching.suspicious_amount(
                amount, owed_fcfa=credit.balance_fcfa(plan, state),
                requested_fcfa=r.requested_fcfa) is not None:
            return None
        change = credit.apply_payment(plan, state, amount, int(now))
        after = change.after
        conn.execute(_PAYMENT, {
            "pid": payment_id, "amount": amount, "now": now,
            "cur": currency or matching.CURRENCY, "paid": fields.get("paid_at") or now,
            "txr": fields.get("tx_reference"), "pref": fields.get("payment_reference"),
            "net": fields.get("network")})
        conn.execute(_LEDGER, {
            "account_id": r.id, "payment_id": payment_id, "kind": "payment",
            "amount_fcfa": amount, "days": change.days_added,
            "remainder_after_fcfa": after.remainder_fcfa,
            "credit_until_before": state.credit_until,
            "credit_until_after": after.credit_until, "created_at": now})
        conn.execute(_ACCOUNT, {"aid": r.id, "paid_total": after.paid_total_fcfa,
                                "remainder": after.remainder_fcfa,
                                "until": after.credit_until, "is_owned": after.owned})
        log.info("payment credited", extra={"payment_id": payment_id, "kit_id": r.kit_id,
                                            "amount_fcfa": amount, "days": change.days_added})
        command_id, outgoing = _converge(rt, conn, r, after, now)
    wants_token = r.decommissioned_at is None and (
        bool(r.keypad_only) or now - (r.last_seen if r.last_seen is not None else r.created_at)
        > rt.settings.keypad_offline_after_s)  # tokens.wants_token on bare columns
    notice = CreditNotice(
        payment_id=payment_id, kit_id=r.kit_id, account_id=r.id, amount_fcfa=amount,
        credit_until=after.credit_until, owned=after.owned, provider=r.provider,
        kind="payment", days=change.days_added, account_number=r.account_number,
        phone=r.customer_phone, desco_id=r.desco_id, daily_rate_fcfa=r.daily_rate_fcfa,
        erased=r.personal_data_erased_at is not None, wants_token=wants_token)
    return FastCredit(payment_id, r.kit_id, r.id, command_id, outgoing, notice)


def _converge(rt: Runtime, conn: Any, r: Any, after: credit.CreditState, now: float
              ) -> tuple[str | None, Outgoing | None]:
    """commands.converge on bare columns: a new command (signed and claimed when a broker
    link exists) if the kit's desired state moved; older pending ones superseded."""
    if r.decommissioned_at is not None:
        return None, None
    want = commands.desired_from(after.owned, after.credit_until, now)
    if commands.Desired(r.commanded_action, r.commanded_credit_until) == want:
        return None, None
    ttl = rt.settings.command_ttl_s
    conn.execute(_SUPERSEDE, {"kid": r.kit_id, "now": now})
    seq = r.cmd_seq + 1
    cid = str(uuid.uuid4())
    row: dict[str, Any] = {
        "id": cid, "kit_id": r.kit_id, "seq": seq, "action": want.action,
        "credit_until": want.credit_until, "issued_at": int(now), "expires_at": int(now) + ttl,
        "status": "queued", "origin": "payment", "attempts": 0, "created_at": now,
        "next_attempt_at": now}
    outgoing: Outgoing | None = None
    svc = rt.service
    if svc.publisher is not None:
        payload = protocol.encode(protocol.build_command(
            kit_id=r.kit_id, command_id=cid, seq=seq, action=cast(protocol.Action, want.action),
            credit_until=want.credit_until, issued_at=row["issued_at"],
            expires_at=row["expires_at"], secret_hex=svc.box.decrypt(r.secret_enc)))
        row.update(status="sent", attempts=1, sent_at=now,
                   next_attempt_at=now + svc.resend_delay_s(1))
        outgoing = Outgoing(cid, r.kit_id, payload)
    conn.execute(_COMMAND, row)
    conn.execute(_KIT, {"kid": r.kit_id, "seq_": seq, "action_": want.action,
                        "until_": want.credit_until,
                        "due_": want.credit_until if want.action == "unlock" else None})
    log.info("command issued", extra={"kit_id": r.kit_id, "command_id": cid,
                                      "action": want.action, "seq": seq, "origin": "payment"})
    return cid, outgoing
