"""Kits, payments and commands as CSV with the columns asked for, streamed.

Rows come from a server-side cursor a few thousand at a time and leave as CSV text as
they come, so memory stays flat however many rows there are (bench/dashboard.py reads
300,000 kits this way) and the first bytes leave before the query has finished. A DESCO's
key exports only its own rows.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Select, select
from sqlalchemy.orm import InstrumentedAttribute

from control.fleet.messages import Refused
from control.ledger.accounts import Actor
from control.ledger.db import Database
from control.ledger.models import Account, Command, Kit, Payment

Kind = Literal["kits", "payments", "commands"]
KINDS: tuple[Kind, ...] = ("kits", "payments", "commands")
ROWS_PER_FETCH = 2_000


@dataclass(frozen=True, slots=True)
class Export:
    columns: dict[str, InstrumentedAttribute[Any]]
    default: tuple[str, ...]
    desco: InstrumentedAttribute[str]  # the column a DESCO's key is limited by
    order: tuple[InstrumentedAttribute[Any], ...]  # an indexed order: rows leave as they are read


EXPORTS: dict[Kind, Export] = {
    "kits": Export(
        columns={
            "kit_id": Kit.id, "desco_id": Kit.desco_id, "region": Kit.region,
            "account_number": Account.account_number, "customer_phone": Account.customer_phone,
            "locked": Kit.reported_locked, "online": Kit.online, "last_seen": Kit.last_seen,
            "credit_until": Account.credit_until, "owned": Account.owned,
            "paid_total_fcfa": Account.paid_total_fcfa,
            "total_price_fcfa": Account.total_price_fcfa, "fw": Kit.fw,
            "created_at": Kit.created_at, "decommissioned_at": Kit.decommissioned_at},
        default=("kit_id", "desco_id", "region", "account_number", "locked", "online",
                 "last_seen", "credit_until", "owned"),
        desco=Kit.desco_id, order=(Kit.id,)),
    "payments": Export(
        columns={
            "id": Payment.id, "desco_id": Payment.desco_id, "provider": Payment.provider,
            "provider_ref": Payment.provider_ref, "kind": Payment.kind,
            "status": Payment.status, "account_number": Account.account_number,
            "kit_id": Account.kit_id, "amount_fcfa": Payment.amount_fcfa,
            "requested_fcfa": Payment.requested_fcfa, "phone": Payment.phone,
            "network": Payment.network, "reference": Payment.reference,
            "matched_by": Payment.matched_by, "reason": Payment.reason,
            "created_at": Payment.created_at, "paid_at": Payment.paid_at,
            "credited_at": Payment.credited_at},
        default=("id", "desco_id", "provider", "provider_ref", "status", "account_number",
                 "amount_fcfa", "created_at", "credited_at"),
        desco=Payment.desco_id, order=(Payment.id,)),
    "commands": Export(
        columns={
            "id": Command.id, "kit_id": Command.kit_id, "desco_id": Kit.desco_id,
            "seq": Command.seq, "action": Command.action,
            "credit_until": Command.credit_until, "status": Command.status,
            "origin": Command.origin, "reason": Command.reason,
            "attempts": Command.attempts, "created_at": Command.created_at,
            "sent_at": Command.sent_at, "finished_at": Command.finished_at},
        default=("id", "kit_id", "seq", "action", "status", "origin", "created_at",
                 "finished_at"),
        desco=Kit.desco_id, order=(Command.kit_id, Command.seq)),
}


def _base(kind: Kind, cols: list[InstrumentedAttribute[Any]]) -> Select[Any]:
    q = select(*cols)
    if kind == "kits":
        return q.select_from(Kit).join(Account, Account.kit_id == Kit.id, isouter=True)
    if kind == "payments":
        return q.select_from(Payment).join(Account, Account.id == Payment.account_id,
                                           isouter=True)
    return q.select_from(Command).join(Kit, Kit.id == Command.kit_id)


def columns_for(kind: Kind, asked: str | None) -> list[str]:
    """The columns asked for (comma-separated), or the kind's default; unknown ones refused."""
    spec = EXPORTS[kind]
    names = [c.strip() for c in asked.split(",") if c.strip()] if asked else list(spec.default)
    unknown = [n for n in names if n not in spec.columns]
    if unknown or not names:
        raise Refused("columns_unknown", columns=", ".join(unknown) or "(none)",
                      allowed=", ".join(spec.columns))
    return names


def stream_csv(db: Database, actor: Actor, kind: Kind, names: list[str],
               desco_id: str | None = None) -> Iterator[bytes]:
    """The CSV (header first), a chunk of rows at a time."""
    spec = EXPORTS[kind]
    q = _base(kind, [spec.columns[n] for n in names])
    desco = actor.desco_id or desco_id
    if desco is not None:
        q = q.where(spec.desco == desco)
    q = q.order_by(*spec.order)
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(names)
    yield buf.getvalue().encode()
    with db.engine.connect() as conn:
        result = conn.execution_options(stream_results=True,
                                        yield_per=ROWS_PER_FETCH).execute(q)
        for chunk in result.partitions():
            buf.seek(0)
            buf.truncate()
            out.writerows(chunk)
            yield buf.getvalue().encode()
