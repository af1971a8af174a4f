"""Several INSERTs and UPDATEs of one transaction, sent the cheapest way each database allows.

A credit writes five to seven rows (payment, ledger entry, account, audit, kit, superseded
commands, new command). Sent one statement at a time, each costs a round trip and the
server's parse and plan: on PostgreSQL that was most of the payment path's time. So the
same Core statements, with their parameters, are handed to ``write_all``:

- on PostgreSQL, single-row writes go as ONE statement of data-modifying CTEs
  (``WITH w0 AS (UPDATE ...), w1 AS (INSERT ...) SELECT ...``): one round trip;
- a statement given many rows (the sweep's thousands of kits) goes as one executemany;
- on SQLite (in-process, no round trips) each write runs in turn.

The rules (which columns get which values) live once, in the statements the callers
build; this module only decides how they travel. Two constraints follow from PostgreSQL's
CTEs and are checked here: all the writes see the same snapshot, so none may depend on
another's effect (order them as if they could, and they also run in that order on SQLite);
and one parameter name means one value across the writes.

``Write.rows`` is a guard: how many rows the write must touch (a kit's seq moved since it
was read under its lock means a caller forgot the lock), checked on every database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    CursorResult,
    Select,
    String,
    func,
    literal_column,
    select,
)
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import UpdateBase


class WriteCountError(RuntimeError):
    """A guarded write touched another number of rows than it must (a bug, not bad input)."""


@dataclass(frozen=True, slots=True)
class Write:
    """One INSERT or UPDATE with its parameters (a list: the same statement for many rows);
    ``rows``: how many rows it must touch in all, or None."""

    statement: UpdateBase
    params: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    rows: int | None = None

    @property
    def many(self) -> bool:
        return not isinstance(self.params, Mapping)


def sql_text(value: str) -> ColumnElement[str]:
    """A string constant of our own code written into the SQL instead of bound: bound
    constants count against the PostgreSQL driver's statement cache (at most 50 parameters)
    and cannot be used with executemany when they are lists."""
    if "'" in value:
        raise ValueError("sql_text is for constants of our own, never for data")
    return literal_column(f"'{value}'", String)


def dialect(conn: Connection | Session) -> str:
    """``sqlite`` or ``postgresql``: for the few statements written per database."""
    bind = conn.get_bind() if isinstance(conn, Session) else conn
    return bind.dialect.name


def write_all(conn: Connection | Session, writes: Sequence[Write]) -> None:
    """Run ``writes`` in the caller's transaction (see the module doc for how)."""
    writes = [w for w in writes if not (w.many and not w.params)]
    if not writes:
        return
    if (dialect(conn) == "postgresql" and len(writes) > 1
            and not any(w.many for w in writes)):
        _bundled(conn, writes)
        return
    for w in writes:
        params = w.params if w.many else dict(cast(Mapping[str, Any], w.params))
        result = cast(CursorResult[Any], conn.execute(w.statement, params))
        if w.rows is not None and result.rowcount != w.rows:
            raise WriteCountError(f"{result.rowcount} rows written, {w.rows} expected: "
                                  f"{w.statement}")


def inserted_id(result: CursorResult[Any]) -> int:
    """The primary key of the one row an INSERT just wrote."""
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


_BUNDLES: dict[tuple[tuple[int, bool], ...], Select[Any]] = {}


def _bundle_of(writes: Sequence[Write]) -> Select[Any]:
    """The one statement of data-modifying CTEs for these writes, built once per shape."""
    key = tuple((id(w.statement), w.rows is not None) for w in writes)
    found = _BUNDLES.get(key)
    if found is not None:
        return found
    plain, counted = [], []
    for i, w in enumerate(writes):
        if w.rows is None:
            plain.append(w.statement.cte(f"w{i}"))
        else:
            counted.append(w.statement.returning(literal_column("1")).cte(f"w{i}"))
    columns = [select(func.count()).select_from(c).scalar_subquery() for c in counted]
    bundle = select(*columns) if columns else select(literal_column("1"))
    bundle = bundle.add_cte(*plain, *counted)
    if len(_BUNDLES) < 64:  # a handful of shapes exist; never grow without bound
        _BUNDLES[key] = bundle
    return bundle


def _bundled(conn: Connection | Session, writes: Sequence[Write]) -> None:
    params: dict[str, Any] = {}
    for w in writes:
        for name, value in cast(Mapping[str, Any], w.params).items():
            if name in params and params[name] != value:
                raise ValueError(f"parameter {name!r} has two values in one bundle of writes")
            params[name] = value
    row = conn.execute(_bundle_of(writes), params).one()
    expected = [w.rows for w in writes if w.rows is not None]
    for got, want in zip(row, expected, strict=False):
        if got != want:
            raise WriteCountError(f"{got} rows written, {want} expected in a bundle of writes")
