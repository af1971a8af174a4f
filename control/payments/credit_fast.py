"""The commonest credit, a confirmed intent of ours, in a handful of Core statements.

The payment hot path (bench/payments.py) spent most of its CPU in the ORM: loading three
mapped objects, flushing five, synchronising a bulk update. This module writes the same
rows as ``ledger.credit_payment`` + ``commands.converge`` + ``ControlService.claim_for_publish``
(same rules: ``credit.apply_payment``, ``commands.desired_from``; same lock: payment,
account and kit rows in one locking read) for the plain case only: an intent still
``initiated``/``pending``, linked to an open account, confirmed for the amount requested.
Anything else returns None and the caller takes the general path (control.payments.intake), which
parks, audits and explains.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import String, Table, bindparam, func, insert, select, text, update

from control.commands import lifecycle as commands
from control.commands import tokens
from control.commands.service import Outgoing
from control.ledger import credit
from control.ledger.models import Account, Command, Kit, LedgerEntry, Payment
from control.payments import intake, matching
from control.payments.intake import CreditNotice
from control.runtime import Runtime

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
    """Credit the intent ``payment_id`` with ``amount``, publish its command and run the
    after-credit hooks once committed; or None when it is not the plain case (the caller
    then takes the general path). ``fields``: payment columns the provider
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
            conn.execute(commands.SQLITE_WRITE_LOCK)
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
        cmd, outgoing = _next_command(rt, r, after, now)
        params = {
            "pid": payment_id, "amount": amount, "now": now,
            "cur": currency or matching.CURRENCY, "paid": fields.get("paid_at") or now,
            "txr": fields.get("tx_reference"), "pref": fields.get("payment_reference"),
            "net": fields.get("network"), "aid": r.id, "days": change.days_added,
            "remainder": after.remainder_fcfa, "before": state.credit_until,
            "until": after.credit_until, "paid_total": after.paid_total_fcfa,
            "is_owned": after.owned, "kid": r.kit_id}
        if is_pg:  # every write in one statement: one round trip instead of six
            if cmd is None:
                conn.execute(_PG_CREDIT, params)
            else:
                conn.execute(_PG_CREDIT_AND_COMMAND, {**params, **_command_params(cmd)})
        else:
            _write_separately(conn, params, cmd)
        log.info("payment credited", extra={"payment_id": payment_id, "kit_id": r.kit_id,
                                            "amount_fcfa": amount, "days": change.days_added})
        if cmd is not None:
            log.info("command issued", extra={
                "kit_id": r.kit_id, "command_id": cmd["id"], "action": cmd["action"],
                "seq": cmd["seq"], "origin": "payment"})
        command_id = cmd["id"] if cmd is not None else None
    wants_token = tokens.needs_token(
        decommissioned=r.decommissioned_at is not None, keypad_only=bool(r.keypad_only),
        last_seen=r.last_seen, created_at=r.created_at, now=now,
        offline_after_s=rt.settings.keypad_offline_after_s)
    notice = CreditNotice(
        payment_id=payment_id, kit_id=r.kit_id, account_id=r.id, amount_fcfa=amount,
        credit_until=after.credit_until, owned=after.owned, provider=r.provider,
        kind="payment", days=change.days_added, account_number=r.account_number,
        phone=r.customer_phone, desco_id=r.desco_id, daily_rate_fcfa=r.daily_rate_fcfa,
        erased=r.personal_data_erased_at is not None, wants_token=wants_token)
    # after commit, as the general path does (intake.publish_and_notify)
    rt.service.send_claimed(outgoing, payment_id=payment_id)
    intake.after_credit(rt, notice)
    return FastCredit(payment_id, r.kit_id, r.id, command_id, outgoing, notice)


def _next_command(rt: Runtime, r: Any, after: credit.CreditState, now: float
                  ) -> tuple[dict[str, Any] | None, Outgoing | None]:
    """commands.converge on bare columns: the row of a new command if the kit's desired
    state moved (signed and claimed as sent when a broker link exists), else None."""
    if r.decommissioned_at is not None:
        return None, None
    want = commands.desired_from(after.owned, after.credit_until, now)
    if commands.Desired(r.commanded_action, r.commanded_credit_until) == want:
        return None, None
    row = commands.new_command_row(kit_id=r.kit_id, seq=r.cmd_seq + 1, want=want,
                                   origin="payment", now=now, ttl_s=rt.settings.command_ttl_s)
    row["sent_at"] = None
    return row, rt.service.claim_row(row, r.secret_enc)


def _due(cmd: dict[str, Any]) -> int | None:
    return commands.Desired(cmd["action"], cmd["credit_until"]).lock_due_at


def _command_params(cmd: dict[str, Any]) -> dict[str, Any]:
    return {"cid": cmd["id"], "seq_": cmd["seq"], "action_": cmd["action"],
            "until_": cmd["credit_until"], "issued": cmd["issued_at"],
            "expires": cmd["expires_at"], "cstatus": cmd["status"],
            "attempts": cmd["attempts"], "sent": cmd["sent_at"],
            "next_at": cmd["next_attempt_at"], "due_": _due(cmd)}


def _write_separately(conn: Any, params: dict[str, Any], cmd: dict[str, Any] | None) -> None:
    """SQLite: the same writes, one statement each (no writable CTEs)."""
    conn.execute(_PAYMENT, params)
    conn.execute(_LEDGER, {
        "account_id": params["aid"], "payment_id": params["pid"], "kind": "payment",
        "amount_fcfa": params["amount"], "days": params["days"],
        "remainder_after_fcfa": params["remainder"],
        "credit_until_before": params["before"], "credit_until_after": params["until"],
        "created_at": params["now"]})
    conn.execute(_ACCOUNT, params)
    if cmd is not None:
        conn.execute(_SUPERSEDE, params)
        conn.execute(_COMMAND, cmd)
        conn.execute(_KIT, {"kid": cmd["kit_id"], "seq_": cmd["seq"],
                            "action_": cmd["action"], "until_": cmd["credit_until"],
                            "due_": _due(cmd)})


# PostgreSQL: the whole credit as one statement of data-modifying CTEs (all see the same
# snapshot: superseding touches only the kit's older commands, never the new one).
_PG_WRITES = """
WITH p AS (
  UPDATE payments SET status = 'credited', amount_fcfa = :amount, credited_at = :now,
    updated_at = :now, matched_by = 'intent', next_check_at = NULL, currency = :cur,
    paid_at = :paid, tx_reference = COALESCE(CAST(:txr AS varchar), tx_reference),
    payment_reference = COALESCE(CAST(:pref AS varchar), payment_reference),
    network = COALESCE(CAST(:net AS varchar), network)
  WHERE id = :pid),
l AS (
  INSERT INTO ledger_entries (account_id, payment_id, kind, amount_fcfa, days,
    remainder_after_fcfa, credit_until_before, credit_until_after, created_at)
  VALUES (:aid, :pid, 'payment', :amount, :days, :remainder, CAST(:before AS bigint),
    CAST(:until AS bigint), :now)),
a AS (
  UPDATE accounts SET paid_total_fcfa = :paid_total, remainder_fcfa = :remainder,
    credit_until = CAST(:until AS bigint), owned = :is_owned
  WHERE id = :aid)
"""
_PG_COMMAND_WRITES = """,
s AS (
  UPDATE commands SET status = 'superseded', finished_at = :now, next_attempt_at = NULL
  WHERE kit_id = :kid AND status IN ('queued', 'sent')),
c AS (
  INSERT INTO commands (id, kit_id, seq, action, credit_until, issued_at, expires_at,
    status, origin, attempts, created_at, next_attempt_at, sent_at)
  VALUES (:cid, :kid, :seq_, :action_, CAST(:until_ AS bigint), :issued, :expires,
    :cstatus, 'payment', :attempts, :now, :next_at, CAST(:sent AS double precision))),
k AS (
  UPDATE kits SET cmd_seq = :seq_, commanded_action = :action_,
    commanded_credit_until = CAST(:until_ AS bigint), lock_due_at = CAST(:due_ AS bigint)
  WHERE id = :kid)
"""
_PG_CREDIT = text(_PG_WRITES + "SELECT 1")
_PG_CREDIT_AND_COMMAND = text(_PG_WRITES + _PG_COMMAND_WRITES + "SELECT 1")
