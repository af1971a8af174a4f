"""``cizo backup`` and ``cizo restore``: the ledger to a file and back (control.ledger.backup).

    cizo backup [--database-url URL] OUTPUT
    cizo restore [--database-url URL] [--force] INPUT

The URL defaults to the settings' ``database_url`` (``CIZO_DATABASE_URL``). Progress goes
to stderr, the result to stdout; a failure exits 1 with what to do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cizo.settings import load_settings
from control.cli.words import say
from control.ledger import backup as ledger_backup


def register(sub: argparse._SubParsersAction[Any]) -> None:
    b = sub.add_parser("backup", help="back the ledger up to a file (pg_dump custom format "
                                      "for PostgreSQL, a SQLite database for SQLite)")
    b.add_argument("output", type=Path, help="the backup file (replaced if it exists)")
    _url_arg(b)
    b.set_defaults(func=backup)
    r = sub.add_parser("restore", help="restore a ledger backup into an empty database")
    r.add_argument("input", type=Path, help="a file written by cizo backup")
    _url_arg(r)
    r.add_argument("--force", action="store_true",
                   help="restore even if the target already holds tables (they are replaced)")
    r.set_defaults(func=restore)


def _url_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database-url", default=None,
                   help="the ledger (default: CIZO_DATABASE_URL / settings database_url)")


def _progress(line: str) -> None:
    print(f"  {line}", file=sys.stderr, flush=True)


def backup(args: argparse.Namespace) -> int:
    url = args.database_url or load_settings().database_url
    print(say("backing up the ledger to {path} ...", path=args.output), file=sys.stderr,
          flush=True)
    try:
        done = ledger_backup.backup(url, args.output, progress=_progress)
    except ledger_backup.BackupError as exc:
        print(say("cizo backup: {error}", error=exc), file=sys.stderr)
        return 1
    print(say("backup written: {path} ({engine}, {size} bytes)", path=done.path,
              engine=done.engine, size=done.size_bytes))
    return 0


def restore(args: argparse.Namespace) -> int:
    url = args.database_url or load_settings().database_url
    print(say("restoring {path} into the ledger ...", path=args.input), file=sys.stderr,
          flush=True)
    try:
        done = ledger_backup.restore(url, args.input, force=args.force, progress=_progress)
    except ledger_backup.BackupError as exc:
        print(say("cizo restore: {error}", error=exc), file=sys.stderr)
        return 1
    print(say("restored {path} ({engine}); run `cizo migrate` if this release is newer than "
              "the backup", path=done.path, engine=done.engine))
    return 0
