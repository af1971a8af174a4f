"""Customer messages (SMS): receipts, reminders before credit ends, keypad tokens.

Words come from templates (French by default) that a DESCO can override:
``<notify_templates_dir>/<desco_id>/<lang>/<name>.txt``, then
``<notify_templates_dir>/<lang>/<name>.txt``, then ours in control/templates/. They go out
through the runtime's notifier (control.gateways.sms).

``on_credit`` is the after-credit hook the control app registers on its runtime
(control.main): it runs once a credit or a reversal has committed; a failure is logged and
never undoes money. Phone numbers go to the notifier only, never to the log.
"""

from __future__ import annotations

import logging
import string
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from cizo.settings import Settings
from control.commands import tokens
from control.gateways.sms import Message
from control.ledger.events import CreditNotice
from control.ledger.models import Account, Kit, KitToken, LedgerEntry
from control.runtime import Runtime

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
DAY_S = 86_400


# --- templates ---------------------------------------------------------------------------


def template(settings: Settings, name: str, desco_id: str) -> string.Template:
    lang = settings.notify_language
    candidates = []
    if settings.notify_templates_dir is not None:
        base = settings.notify_templates_dir
        candidates += [base / desco_id / lang / f"{name}.txt", base / lang / f"{name}.txt"]
    candidates += [TEMPLATES / lang / f"{name}.txt", TEMPLATES / "fr" / f"{name}.txt"]
    for path in candidates:
        if path.is_file():
            return string.Template(path.read_text(encoding="utf-8").strip())
    raise FileNotFoundError(f"no template {name!r} for language {lang!r}")


def render(settings: Settings, name: str, desco_id: str, values: dict[str, Any]) -> str:
    return template(settings, name, desco_id).safe_substitute(
        {k: "" if v is None else str(v) for k, v in values.items()})


def french_time(t: int | float | None) -> str:
    """``31/01/2026 à 14:05`` (UTC, which is Lomé's time)."""
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, tz=UTC).strftime("%d/%m/%Y à %H:%M")


def _days_text(days: int | None) -> str:
    if not days:
        return ""
    return f"{days} jour{'s' if days > 1 else ''} ajouté{'s' if days > 1 else ''}."


# A SET_TIME code counts its days from the day it is typed (control.commands.tokens): say so.
TYPE_TODAY = "à taper aujourd'hui, avant minuit"


def _token_text(tok: KitToken | None) -> str:
    if tok is None:
        return ""
    if tok.token_type == tokens.SET_TIME:
        return f" Code clavier ({TYPE_TODAY}) : {tok.token}."
    return f" Code clavier : {tok.token}."


# --- receipts (after-credit hook) ------------------------------------------------------------


def on_credit(rt: Runtime, notice: CreditNotice) -> None:
    """After a committed credit (or reversal): a keypad token when the kit cannot be reached,
    then the customer's receipt."""
    if (notice.wants_token is False and notice.account_number is not None
            and notice.desco_id is not None):
        # the credit's transaction read all we need and no token is due: no database here
        _tell(rt, notice, account_number=notice.account_number, days=notice.days,
              credit_until=notice.credit_until, daily_rate_fcfa=notice.daily_rate_fcfa,
              phone=notice.phone, desco=notice.desco_id, erased=notice.erased, tok=None)
        return
    now = rt.clock.now()
    with rt.db.session() as s:
        kit = s.scalars(select(Kit).where(Kit.id == notice.kit_id).with_for_update()
                        ).one_or_none()
        acct = s.get(Account, notice.account_id)
        if kit is None or acct is None:
            return
        tok: KitToken | None = None
        if tokens.wants_token(kit, now, rt.settings.keypad_offline_after_s):
            tok = tokens.issue_token(s, kit=kit, box=rt.box, credit_until=acct.credit_until,
                                     owned=acct.owned, now=now, created_by="payment",
                                     payment_id=notice.payment_id)
        entry = s.scalars(select(LedgerEntry).where(
            LedgerEntry.payment_id == notice.payment_id)).first()
        days = entry.days if entry is not None else None
    # sent once the transaction (and the kit's row lock) is over: an SMS gateway may be slow
    _tell(rt, notice, account_number=acct.account_number, days=days,
          credit_until=acct.credit_until, daily_rate_fcfa=acct.daily_rate_fcfa,
          phone=acct.customer_phone, desco=acct.desco_id,
          erased=acct.personal_data_erased_at is not None, tok=tok)


def _tell(rt: Runtime, notice: CreditNotice, *, account_number: str, days: int | None,
          credit_until: int | None, daily_rate_fcfa: int | None, phone: str | None,
          desco: str, erased: bool, tok: KitToken | None) -> None:
    """The customer's receipt (or, after a reversal, the new token alone)."""
    if notice.kind != "payment" and tok is None:
        return  # a reversal: nothing to tell unless the kit needs a new token
    if erased or not phone:
        return
    name = "owned" if notice.owned else ("receipt" if notice.kind == "payment" else "token")
    values = {"kit_id": notice.kit_id, "account_number": account_number,
              "amount_fcfa": notice.amount_fcfa, "days": days, "days_text": _days_text(days),
              "credit_end": french_time(credit_until), "token": tok.token if tok else "",
              "token_text": _token_text(tok), "daily_rate_fcfa": daily_rate_fcfa}
    send(rt, Message(name, phone, render(rt.settings, name, desco, values), notice.kit_id,
                     desco, str(notice.payment_id)))


def send(rt: Runtime, msg: Message) -> bool:
    try:
        rt.notifier.send(msg)
    except Exception:
        log.exception("notification %s not delivered", msg.kind,
                      extra={"kit_id": msg.kit_id, "ref": msg.ref})
        return False
    return True


def send_token(rt: Runtime, kit_id: str, token_id: int) -> bool:
    """Send an existing token to the account's phone (support issued it)."""
    with rt.db.session() as s:
        tok = s.get(KitToken, token_id)
        acct = s.scalars(select(Account).where(Account.kit_id == kit_id)).one_or_none()
        if tok is None or acct is None or not acct.customer_phone:
            return False
        text = render(rt.settings, "token", acct.desco_id, {
            "kit_id": kit_id, "token": tok.token,
            "days_text": (f"Crédit jusqu'au {french_time(tok.chain_until)}."
                          if tok.chain_until else "")
            + (f" Code {TYPE_TODAY}." if tok.token_type == tokens.SET_TIME else "")})
        msg = Message("token", acct.customer_phone, text, kit_id, acct.desco_id,
                      str(tok.count))
    return send(rt, msg)


# --- reminders -------------------------------------------------------------------------------


def send_reminders(rt: Runtime, limit: int = 1000) -> int:
    """Remind accounts whose credit ends within ``reminder_lead_s``: at most one a day per
    account, none for owned or closed accounts. Returns how many were sent."""
    now = rt.clock.now()
    lead = rt.settings.reminder_lead_s
    out: list[Message] = []
    with rt.db.session() as s:
        q = (select(Account)
             .where(Account.credit_until > int(now), Account.credit_until <= int(now + lead),
                    Account.owned.is_(False), Account.closed_at.is_(None),
                    (Account.last_reminder_at.is_(None))
                    | (Account.last_reminder_at <= now - DAY_S))
             .order_by(Account.credit_until).limit(limit))
        if rt.db.is_postgres:
            q = q.with_for_update(skip_locked=True)
        for acct in s.scalars(q):
            acct.last_reminder_at = now
            if not acct.customer_phone or acct.personal_data_erased_at is not None:
                continue
            text = render(rt.settings, "reminder", acct.desco_id, {
                "kit_id": acct.kit_id, "account_number": acct.account_number,
                "credit_end": french_time(acct.credit_until),
                "daily_rate_fcfa": acct.daily_rate_fcfa})
            out.append(Message("reminder", acct.customer_phone, text, acct.kit_id,
                               acct.desco_id, datetime.fromtimestamp(now, tz=UTC)
                               .strftime("%Y-%m-%d")))
    return sum(1 for m in out if send(rt, m))
