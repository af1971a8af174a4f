"""``cizo secret-key rotate``: re-encrypt every secret stored under CIZO_SECRET_KEY.

    CIZO_NEW_SECRET_KEY=... cizo secret-key rotate

The new key is read from the environment, never from the command line, so it stays out
of `ps` and shell histories. Stop the control service first (it holds the current key),
rotate, put the new key in CIZO_SECRET_KEY, start it again (docs/deploy.md).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from pydantic import SecretStr

from control.cli.words import say

NEW_KEY_VAR = "CIZO_NEW_SECRET_KEY"


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("secret-key", help="rotate CIZO_SECRET_KEY (re-encrypts stored secrets)")
    ps = p.add_subparsers(dest="secret_key_command", required=True)
    rot = ps.add_parser("rotate", help=f"re-encrypt with the key in ${NEW_KEY_VAR}")
    rot.set_defaults(func=_rotate)


def _rotate(args: argparse.Namespace) -> int:
    from cizo.production import Part, production_problems
    from cizo.settings import load_settings
    from control.cli.admin import CLI_ACTOR
    from control.ledger.db import Database
    from control.security.secret_key import rotate_secret_key

    settings = load_settings()
    new_key = os.environ.get(NEW_KEY_VAR, "").strip()
    if not new_key:
        raise SystemExit(say("cizo secret-key rotate: set {variable} to the new key "
                             "(generate one with `cizo keygen`)", variable=NEW_KEY_VAR))
    # the new key must pass the same production check as the one it replaces
    problems = [p.replace("CIZO_SECRET_KEY", NEW_KEY_VAR) for p in production_problems(
        settings.model_copy(update={"secret_key": SecretStr(new_key)}), uses={Part.KEYS})
        if p.startswith("CIZO_SECRET_KEY")]
    if problems:
        raise SystemExit(say("cizo secret-key rotate: {error}", error="; ".join(problems)))
    db = Database(settings.database_url, pool_size=1, max_overflow=0)
    try:
        done = rotate_secret_key(db, current_key=settings.require_secret_key(),
                                 new_key=new_key, actor=CLI_ACTOR, now=time.time())
    except ValueError as exc:
        raise SystemExit(say("cizo secret-key rotate: {error}", error=exc)) from None
    finally:
        db.dispose()
    detail = ", ".join(f"{n} in {where}" for where, n in sorted(done.rewritten.items()))
    print(say("re-encrypted {total} secret(s) ({detail}); {already_new} already used the new "
              "key. Now set CIZO_SECRET_KEY to the new key and start the control service.",
              total=done.total, detail=detail or say("none"), already_new=done.already_new))
    return 0
