"""The kit list at national size: filters, sorting, keyset pages and search, per DESCO.

A page is the next ``limit`` kits after the cursor in the chosen order, never an offset:
its cost does not grow with the page number. The cursor is opaque to clients (base64 of
the sort, its direction and the last row's key) and is refused if it was given out for
another order. Search takes a kit id, an account number or a customer phone in any Togo
form (normalised to E.164, the form the ledger stores); a DESCO's key only ever sees its
own kits. The indexes behind each filter and order are migration 0003_kit_list
(bench/dashboard.py measures them at 300,000 kits).
"""

from __future__ import annotations

import base64
import contextlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import ColumnElement, String, and_, exists, func, literal, select, tuple_
from sqlalchemy.orm import Session

from control.fleet.messages import Refused
from control.ledger.accounts import Actor
from control.ledger.models import Account, Alert, Kit
from control.ledger.phone import PhoneError, normalise_phone

# No order by last seen: it would need an index on kits.last_seen, which every telemetry
# message updates (each update would then write every index of the table; see migration
# 0003_kit_list); without one, a page costs a sort of the fleet (447 ms at 300,000 kits).
# Silent kits are found by the online filter and their open alerts instead.
Sort = Literal["kit_id", "credit_until"]
State = Literal["locked", "unlocked", "owned"]
SORTS: tuple[Sort, ...] = ("kit_id", "credit_until")
SEARCH_MAX = 64
DAY_S = 86_400

# the credit end as a sort key, null as 0 so that a row's key is always comparable
CREDIT_KEY = func.coalesce(Account.credit_until, 0)


@dataclass(frozen=True, slots=True)
class KitFilter:
    desco_id: str | None = None
    region: str | None = None
    state: State | None = None
    online: bool | None = None
    overdue_days: int | None = None  # credit ended at least this many days ago
    open_alerts: bool | None = None
    q: str | None = None  # kit id, account number or phone


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[tuple[Kit, Account | None]]
    next_cursor: str | None


def _key(sort: Sort) -> tuple[Any, ...]:
    if sort == "credit_until":
        return (CREDIT_KEY, Account.kit_id)
    return (Kit.id,)


def _encode(sort: Sort, desc: bool, values: list[Any]) -> str:
    raw = json.dumps([sort, desc, values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str, sort: Sort, desc: bool) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        got_sort, got_desc, values = json.loads(raw)
    except (ValueError, TypeError) as exc:
        raise Refused("cursor_invalid") from exc
    if (got_sort, got_desc) != (sort, desc) or not isinstance(values, list) \
            or len(values) != len(_key(sort)) \
            or not all(isinstance(v, str | int | float) for v in values):
        raise Refused("cursor_invalid")
    return values


def _search(q: str) -> ColumnElement[bool]:
    if len(q) > SEARCH_MAX:
        raise Refused("search_too_long", limit=SEARCH_MAX)
    matches = [Account.account_number == q, Account.kit_id == q]
    with contextlib.suppress(PhoneError):  # else not a phone: kit id or account number
        matches.append(Account.customer_phone == normalise_phone(q))
    # every index of the three lookups is used (a union, not an OR across two tables);
    # the kit id itself covers a kit with no account (swapped out)
    ids = select(Account.kit_id).where(matches[0]).union(
        *[select(Account.kit_id).where(m) for m in matches[1:]],
        select(literal(q, String)))
    return Kit.id.in_(ids)


def _where(actor: Actor, f: KitFilter, now: float) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    desco = actor.desco_id or f.desco_id  # a DESCO's key sees its own kits, whatever it asks
    if desco is not None:
        where.append(Kit.desco_id == desco)
    if f.region is not None:
        where.append(Kit.region == f.region)
    if f.state == "owned":
        where.append(Account.owned.is_(True))
    elif f.state is not None:
        where += [Kit.reported_locked.is_(f.state == "locked"), Account.owned.is_(False)]
    if f.online is not None:
        where.append(Kit.online.is_(f.online))
    if f.overdue_days is not None:
        where += [Account.owned.is_(False),
                  Account.credit_until <= int(now) - f.overdue_days * DAY_S]
    if f.open_alerts is not None:
        has_open = exists().where(Alert.kit_id == Kit.id, Alert.state == "open")
        where.append(has_open if f.open_alerts else ~has_open)
    if f.q:
        where.append(_search(f.q))
    return where


def list_kits(s: Session, actor: Actor, f: KitFilter, *, now: float, sort: Sort = "kit_id",
              desc: bool = False, limit: int = 50, cursor: str | None = None) -> Page:
    """One page of the kits ``actor`` may see that match ``f``, in ``sort`` order."""
    key = _key(sort)
    # ordered by the account's credit end, the account drives (its index gives the order);
    # a kit with no account (swapped out) has no credit end and is left out of that order
    q = select(Kit, Account).join(Account, Account.kit_id == Kit.id,
                                  isouter=sort != "credit_until")
    where = _where(actor, f, now)
    if cursor is not None:
        after = tuple_(*key)
        values = tuple_(*[literal(v) for v in _decode(cursor, sort, desc)])
        where.append(after < values if desc else after > values)
    if where:
        q = q.where(and_(*where))
    q = q.order_by(*[k.desc() if desc else k.asc() for k in key]).limit(limit + 1)
    rows: list[tuple[Kit, Account | None]] = [
        (kit, acct) for kit, acct in s.execute(q).all()]
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = None
    if more:
        kit, acct = rows[-1]
        last: list[Any] = ([kit.id] if sort == "kit_id"
                           else [(acct.credit_until or 0) if acct else 0, kit.id])
        next_cursor = _encode(sort, desc, last)
    return Page(rows, next_cursor)
