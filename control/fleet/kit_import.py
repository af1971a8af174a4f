"""Kits imported from a CSV file: every row checked, new kits provisioned in batches.

Each row goes through the same check as ``POST /v1/kits`` (control.fleet.provisioning.check)
and the kits that pass are written by the same provisioning function, a batch per
transaction. A kit already in the ledger with the same row (DESCO, region, phone, plan) is
"unchanged": importing a file twice creates nothing the second time and hands out no
credentials again; a kit already there with another row is refused. Credentials
of the kits created are returned once, in the report.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from sqlalchemy import select

from control.fleet import provisioning
from control.fleet.messages import Refused
from control.ledger.accounts import Actor, NewKit, ProvisionedKit
from control.ledger.models import Account, Kit, KitImport
from control.runtime import Runtime

ERROR_COLUMNS = ("row", "kit_id", "code", "message")
NEEDED = ("kit_id", "phone", "deposit_fcfa", "daily_rate_fcfa", "total_price_fcfa")
OPTIONAL = ("desco_id", "region", "deposit_paid")
MAX_ROWS = 20_000  # per request: a bigger file is sent in parts (cizo kits import does)
MAX_BYTES = MAX_ROWS * 256  # a row is well under 256 bytes
BATCH = 2_000  # kits per transaction
_TRUE, _FALSE = {"true", "1", "yes", "oui", ""}, {"false", "0", "no", "non"}


@dataclass(frozen=True, slots=True)
class RowError:
    row: int  # the line in the file (the header is line 1)
    kit_id: str
    code: str
    message: str


@dataclass(slots=True)
class ImportReport:
    import_id: int = 0  # the stored report (kit_imports), its refused rows downloadable
    rows: int = 0
    created: list[ProvisionedKit] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)


def _rows(text: str) -> Iterator[tuple[int, dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in reader.fieldnames or ()]
    for needed in NEEDED:
        if needed not in columns:
            raise Refused("column_missing", column=needed, needed=", ".join(NEEDED))
    reader.fieldnames = columns
    for row in reader:
        yield reader.line_num, {k: (v or "").strip() for k, v in row.items() if k}


def _number(row: dict[str, str], column: str) -> int:
    try:
        return int(row[column])
    except ValueError:
        raise Refused("number_invalid", column=column, value=row[column]) from None


def _flag(row: dict[str, str], column: str) -> bool:
    value = row.get(column, "").lower()
    if value not in _TRUE | _FALSE:
        raise Refused("flag_invalid", column=column, value=row[column])
    return value in _TRUE


def check_row(rt: Runtime, actor: Actor, row: dict[str, str]) -> NewKit:
    """One row as a kit request, through the one validator of kit requests."""
    return provisioning.check(
        rt, actor, kit_id=row["kit_id"], desco_id=row.get("desco_id") or None,
        phone=row["phone"], plan=(_number(row, "deposit_fcfa"),
                                  _number(row, "daily_rate_fcfa"),
                                  _number(row, "total_price_fcfa")),
        deposit_paid=_flag(row, "deposit_paid"), region=row.get("region") or None)


def import_csv(rt: Runtime, actor: Actor, text: str, *, line_offset: int = 0) -> ImportReport:
    """Import ``text`` (CSV with a header); ``line_offset`` numbers rows of a file sent in
    parts as lines of the whole file."""
    report = ImportReport()
    checked: list[tuple[int, NewKit]] = []
    first_line: dict[str, int] = {}
    for line, row in _rows(text):
        report.rows += 1
        if report.rows > MAX_ROWS:
            raise Refused("file_too_large", 413, limit=MAX_ROWS)
        line += line_offset
        kit_id = row.get("kit_id", "")
        try:
            if kit_id in first_line:
                raise Refused("kit_duplicate_in_file", kit_id=kit_id, first=first_line[kit_id])
            new = check_row(rt, actor, row)
        except Refused as exc:
            report.errors.append(RowError(line, kit_id, exc.code, str(exc)))
            continue
        first_line[kit_id] = line
        checked.append((line, new))
    for start in range(0, len(checked), BATCH):
        _batch(rt, actor, checked[start:start + BATCH], report)
    report.errors.sort(key=lambda e: e.row)
    report.import_id = _record(rt, actor, report)
    return report


def _record(rt: Runtime, actor: Actor, report: ImportReport) -> int:
    """Keep the import's counts and refused rows (never the credentials)."""
    with rt.db.session() as s:
        row = KitImport(desco_id=actor.desco_id, imported_by=actor.name,
                        imported_key_id=actor.key_id, imported_at=rt.clock.now(),
                        rows=report.rows, created=len(report.created),
                        unchanged=len(report.unchanged), rejected=len(report.errors),
                        errors=[asdict(e) for e in report.errors])
        s.add(row)
        s.flush()
        return row.id


def error_report(rt: Runtime, actor: Actor, import_id: int) -> str:
    """The refused rows of an import the actor may see, as CSV (header first)."""
    with rt.db.session() as s:
        found = s.get(KitImport, import_id)
        if found is None or (actor.desco_id is not None and found.desco_id != actor.desco_id):
            raise Refused("import_unknown", 404, import_id=import_id)
        errors = list(found.errors)
    buf = io.StringIO()
    out = csv.DictWriter(buf, ERROR_COLUMNS)
    out.writeheader()
    out.writerows(errors)
    return buf.getvalue()


def _as_stored(new: NewKit) -> tuple[object, ...]:
    return (new.desco_id, new.region, new.phone_e164, new.plan.deposit_fcfa,
            new.plan.daily_rate_fcfa, new.plan.total_price_fcfa)


def _batch(rt: Runtime, actor: Actor, rows: list[tuple[int, NewKit]],
           report: ImportReport) -> None:
    """Provision the batch's new kits; a kit already stored with the same row is
    unchanged (a re-run), with another row (another DESCO, phone or plan) refused."""
    with rt.db.session() as s:
        stored = {r[0]: tuple(r[1:]) for r in s.execute(
            select(Kit.id, Kit.desco_id, Kit.region, Account.customer_phone,
                   Account.deposit_fcfa, Account.daily_rate_fcfa, Account.total_price_fcfa)
            .join(Account, Account.kit_id == Kit.id, isouter=True)
            .where(Kit.id.in_([new.kit_id for _, new in rows])))}
    unknown = provisioning.unknown_descos(rt, {new.desco_id for _, new in rows})
    fresh: list[NewKit] = []
    for line, new in rows:
        refusal = None
        if new.kit_id in stored:
            if stored[new.kit_id] == _as_stored(new):
                report.unchanged.append(new.kit_id)
                continue
            refusal = Refused("kit_exists", 409, kit_id=new.kit_id)
        elif new.desco_id in unknown:
            refusal = Refused("desco_unknown", desco_id=new.desco_id)
        if refusal is not None:
            report.errors.append(RowError(line, new.kit_id, refusal.code, str(refusal)))
        else:
            fresh.append(new)
    if fresh:
        report.created.extend(provisioning.provision_checked(rt, actor, fresh))
