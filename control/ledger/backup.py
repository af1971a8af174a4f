"""Ledger backups that restore: ``cizo backup`` and ``cizo restore``.

PostgreSQL goes through its own tools, pg_dump and pg_restore in the custom format (a
consistent snapshot of a live database; compressed; restorable table by table). SQLite
goes through sqlite3's online backup API, which copies a consistent image while the
control service keeps writing. A backup is written beside its destination and renamed
into place only when complete, so a file with the chosen name is always a whole backup.
A restore refuses a target that already holds tables unless forced.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import URL

from cizo.settings import sqlalchemy_url

Progress = Callable[[str], None]

PG_MAGIC = b"PGDMP"  # the custom format's first bytes
SQLITE_MAGIC = b"SQLite format 3\x00"


class BackupError(Exception):
    """Why a backup or a restore could not be made; the message says what to do."""


@dataclass(frozen=True)
class Done:
    path: Path
    engine: str  # "postgresql" or "sqlite"
    size_bytes: int


def _quiet(_line: str) -> None:
    pass


def backup(database_url: str, output: Path, progress: Progress = _quiet) -> Done:
    """Write a backup of the ledger at ``database_url`` to ``output`` (replaced if there)."""
    url = make_url(sqlalchemy_url(database_url))
    output = output.expanduser()
    if not output.parent.is_dir():
        raise BackupError(f"{output.parent} does not exist: create the directory first")
    partial = output.with_name(f".{output.name}.partial")
    try:
        if url.get_backend_name() == "postgresql":
            _pg_dump(url, partial, progress)
        elif url.get_backend_name() == "sqlite":
            _sqlite_copy(_sqlite_path(url, must_exist=True), partial, progress)
        else:
            raise BackupError(f"cannot back up a {url.get_backend_name()} database")
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return Done(output, url.get_backend_name(), output.stat().st_size)


def restore(database_url: str, source: Path, *, force: bool = False,
            progress: Progress = _quiet) -> Done:
    """Restore the backup ``source`` into the ledger at ``database_url``, which must be
    empty unless ``force`` (then what the backup holds replaces what is there)."""
    url = make_url(sqlalchemy_url(database_url))
    source = source.expanduser()
    if not source.is_file():
        raise BackupError(f"{source}: no such backup file")
    with source.open("rb") as fh:
        head = fh.read(len(SQLITE_MAGIC))
    kind = ("postgresql" if head.startswith(PG_MAGIC)
            else "sqlite" if head == SQLITE_MAGIC else None)
    if kind is None:
        raise BackupError(f"{source} is neither a pg_dump custom-format file nor a SQLite "
                          "database: is it a cizo backup?")
    if kind != url.get_backend_name():
        raise BackupError(f"{source} is a {kind} backup but the target is "
                          f"{url.get_backend_name()}: restore it into a {kind} database")
    tables = _tables(url)
    if tables and not force:
        raise BackupError(
            f"the target database already holds {len(tables)} table(s) "
            f"({', '.join(sorted(tables)[:5])}{', ...' if len(tables) > 5 else ''}): "
            "restore into an empty database, or pass --force to replace its contents")
    if kind == "postgresql":
        # pg_restore --clean drops only what the backup holds: a table it does not hold
        # (a newer migration's) would survive beside the restored ledger
        extra = tables - _dump_tables(source)
        if extra:
            raise BackupError(
                f"the target holds table(s) the backup does not ({', '.join(sorted(extra))})"
                ": restore into an empty database (createdb), or drop them first")
        _pg_restore(url, source, clean=bool(tables), progress=progress)
    else:
        _sqlite_copy(source, _sqlite_path(url, must_exist=False), progress)
    return Done(source, kind, source.stat().st_size)


# --- SQLite ------------------------------------------------------------------------------


def _sqlite_path(url: URL, *, must_exist: bool) -> Path:
    if not url.database or url.database == ":memory:":
        raise BackupError("an in-memory SQLite database cannot be backed up or restored")
    path = Path(url.database)
    if must_exist and not path.is_file():
        raise BackupError(f"{path}: no such SQLite database")
    return path


def _sqlite_copy(source: Path, target: Path, progress: Progress) -> None:
    """Copy ``source`` into ``target`` page by page with the online backup API."""
    def report(_status: int, remaining: int, total: int) -> None:
        progress(f"copied {total - remaining}/{total} pages")

    if not target.parent.is_dir():
        raise BackupError(f"{target.parent} does not exist: create the directory first")
    src = sqlite3.connect(source)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst, pages=1024, progress=report)
            (check,) = dst.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise BackupError(f"the copy in {target} fails SQLite's check: {check}")
        finally:
            dst.close()
    finally:
        src.close()


# --- PostgreSQL --------------------------------------------------------------------------


def _tables(url: URL) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if url.get_backend_name() == "sqlite":
                q = "SELECT name FROM sqlite_master WHERE type = 'table'"
            else:
                q = ("SELECT table_schema || '.' || table_name FROM information_schema.tables "
                     "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')")
            return {str(r[0]) for r in conn.execute(text(q))}
    except Exception as exc:
        raise BackupError(f"cannot read the target database: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0]}") from exc
    finally:
        engine.dispose()


def _libpq(url: URL) -> tuple[str, dict[str, str]]:
    """The URL as libpq takes it, the password moved to the environment (never argv)."""
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    plain = url.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} not found on PATH: install the PostgreSQL client tools of "
                          "the server's major version (Debian: postgresql-client-<major>)")
    return found


def _major(version: str) -> int:
    m = re.search(r"(\d+)", version)
    if m is None:
        raise BackupError(f"cannot read a PostgreSQL version from {version!r}")
    return int(m.group(1))


def _server_major(url: URL) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            num = int(conn.execute(text("SHOW server_version_num")).scalar_one())
    except Exception as exc:
        raise BackupError(f"cannot connect to the database: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0]}") from exc
    finally:
        engine.dispose()
    return num // 10_000


def _run(argv: list[str], env: dict[str, str], progress: Progress) -> None:
    """Run a PostgreSQL tool, its --verbose lines as progress; its last lines on failure."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stderr is not None
    tail: list[str] = []
    for line in proc.stderr:
        line = line.rstrip()
        progress(line)
        tail = [*tail[-9:], line]
    if proc.wait() != 0:
        errors = [t for t in tail if "error" in t.lower()] or tail
        hint = ""
        if any("version" in t.lower() for t in errors):
            hint = (" (a version mismatch: use pg_dump/pg_restore of the server's major "
                    "version or newer)")
        raise BackupError(f"{Path(argv[0]).name} failed{hint}: " + " | ".join(errors[-3:]))


def _pg_dump(url: URL, output: Path, progress: Progress) -> None:
    tool = _tool("pg_dump")
    client = _major(subprocess.run([tool, "--version"], capture_output=True, text=True,
                                   check=True).stdout)
    server = _server_major(url)
    if client < server:
        raise BackupError(f"pg_dump {client} cannot dump a PostgreSQL {server} server: "
                          f"install postgresql-client-{server}")
    dsn, env = _libpq(url)
    _run([tool, "--format=custom", "--verbose", "--no-owner", "--no-privileges",
          f"--file={output}", f"--dbname={dsn}"], env, progress)


def _dump_tables(source: Path) -> set[str]:
    """``schema.table`` of every table in a custom-format archive (``pg_restore --list``)."""
    listing = subprocess.run([_tool("pg_restore"), "--list", str(source)],
                             capture_output=True, text=True)
    if listing.returncode != 0:
        raise BackupError(f"pg_restore cannot read {source}: {listing.stderr.strip()}")
    tables = set()
    for line in listing.stdout.splitlines():
        parts = line.split()  # "215; 1259 16390 TABLE public accounts postgres"
        if len(parts) >= 6 and parts[3] == "TABLE" and parts[4] != "DATA":
            tables.add(f"{parts[4]}.{parts[5]}")
    return tables


def _pg_restore(url: URL, source: Path, *, clean: bool, progress: Progress) -> None:
    tool = _tool("pg_restore")
    dsn, env = _libpq(url)
    argv = [tool, "--verbose", "--exit-on-error", "--single-transaction", "--no-owner",
            "--no-privileges", f"--dbname={dsn}"]
    if clean:
        argv += ["--clean", "--if-exists"]
    _run([*argv, str(source)], env, progress)
