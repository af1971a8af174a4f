"""Pure statement reconciliation: parse a provider's daily CSV and compare it with ours.

Statement columns (header required, names case-insensitive, aliases accepted):
``transaction_id`` (or identifier / reference_id / tx_reference / financialTransactionId),
``date`` (or day / datetime / paid_at; ISO date or date-time, UTC), ``amount`` (whole XOF),
optional ``currency`` (XOF), ``phone``, ``reference``. A line that cannot be read is
reported, never guessed.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from control.ledger import money
from control.ledger.phone import PhoneError, normalise_phone

ALIASES = {
    "transaction_id": ("transaction_id", "identifier", "reference_id", "referenceid",
                       "tx_reference", "financialtransactionid", "id", "transaction"),
    "date": ("date", "day", "datetime", "paid_at", "time"),
    "amount": ("amount", "montant", "amount_xof"),
    "currency": ("currency", "devise"),
    "phone": ("phone", "phone_number", "msisdn", "payer"),
    "reference": ("reference", "account", "account_number", "externalid"),
}


class StatementError(ValueError):
    """The file as a whole cannot be read (no header, missing columns)."""


@dataclass(frozen=True, slots=True)
class StatementLine:
    line: int
    transaction_id: str
    day: str  # YYYY-MM-DD (UTC)
    amount: int
    phone: str | None
    reference: str | None


@dataclass(frozen=True, slots=True)
class OurPayment:
    """A payment we hold money for (credited, suspense or voided), with every id it has."""

    payment_id: int
    ids: frozenset[str]
    day: str
    amount: int
    status: str


@dataclass
class DayReport:
    day: str
    statement_count: int = 0
    statement_total: int = 0
    ours_count: int = 0
    ours_total: int = 0
    matched: int = 0
    missing_in_statement: list[dict[str, Any]] = field(default_factory=list)
    missing_in_ours: list[dict[str, Any]] = field(default_factory=list)
    mismatches: list[dict[str, Any]] = field(default_factory=list)


def day_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).date().isoformat()


def parse_day(raw: str) -> str:
    text = raw.strip()
    if len(text) == 10:
        return date.fromisoformat(text).isoformat()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text.replace(" ", "T", 1))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).date().isoformat()


def parse_statement(text: str) -> tuple[list[StatementLine], list[str]]:
    """Lines read, and one message per line that could not be (with its line number)."""
    # newline="": the csv module handles \r, \r\n and \n itself (a lone \r inside a field too)
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    try:
        header = next(reader)
    except StopIteration as exc:
        raise StatementError("the statement is empty") from exc
    names = [h.strip().lower() for h in header]
    cols: dict[str, int] = {}
    for key, aliases in ALIASES.items():
        for i, name in enumerate(names):
            if name in aliases:
                cols[key] = i
                break
    missing = [k for k in ("transaction_id", "date", "amount") if k not in cols]
    if missing:
        raise StatementError(f"statement header lacks {', '.join(missing)}")
    lines: list[StatementLine] = []
    errors: list[str] = []
    seen: set[str] = set()
    for n, row in enumerate(reader, start=2):
        if not any(c.strip() for c in row):
            continue

        def get(key: str, row: list[str] = row) -> str | None:
            i = cols.get(key)
            return row[i].strip() if i is not None and i < len(row) and row[i].strip() \
                else None

        try:
            tx = get("transaction_id")
            if tx is None:
                raise ValueError("no transaction id")
            if tx in seen:
                raise ValueError(f"transaction {tx} appears twice")
            raw_day = get("date")
            if raw_day is None:
                raise ValueError("no date")
            day = parse_day(raw_day)
            amount = money.parse_amount(get("amount"))
            money.check_currency(get("currency"))
            phone_raw = get("phone")
            phone = normalise_phone(phone_raw) if phone_raw else None
        except (ValueError, PhoneError) as exc:
            errors.append(f"line {n}: {exc}")
            continue
        seen.add(tx)
        lines.append(StatementLine(n, tx, day, amount, phone, get("reference")))
    return lines, errors


def compare(lines: list[StatementLine], ours: list[OurPayment]) -> dict[str, DayReport]:
    """Per statement day: what we have that it lacks, what it has that we lack, and amounts
    that differ. A payment matches a line by any of its ids, whatever the day."""
    days = sorted({ln.day for ln in lines})
    report = {d: DayReport(d) for d in days}
    by_id: dict[str, OurPayment] = {}
    for p in ours:
        for i in p.ids:
            by_id[i] = p
    matched: set[int] = set()
    for ln in lines:
        r = report[ln.day]
        r.statement_count += 1
        r.statement_total += ln.amount
        hit = by_id.get(ln.transaction_id)
        if hit is None:
            r.missing_in_ours.append({"transaction_id": ln.transaction_id,
                                      "amount_fcfa": ln.amount, "line": ln.line})
            continue
        matched.add(hit.payment_id)
        r.matched += 1
        if hit.amount != ln.amount:
            r.mismatches.append({"transaction_id": ln.transaction_id,
                                 "payment_id": hit.payment_id, "statement_fcfa": ln.amount,
                                 "ours_fcfa": hit.amount})
    per_day: dict[str, list[OurPayment]] = defaultdict(list)
    for p in ours:
        per_day[p.day].append(p)
    for d in days:
        for p in per_day.get(d, []):
            report[d].ours_count += 1
            report[d].ours_total += p.amount
            if p.payment_id not in matched:
                report[d].missing_in_statement.append({
                    "payment_id": p.payment_id, "ids": sorted(p.ids), "amount_fcfa": p.amount,
                    "status": p.status})
    return report
