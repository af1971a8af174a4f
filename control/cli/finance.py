"""``cizo reconcile ...`` and ``cizo settlement ...``: the finance team's command line.

The CLI acts as a named finance user (``--user``): maker-checker holds between names, as
in the API (an importer cannot approve their own proposals). Output is JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from control.cli.words import say
from control.ledger.accounts import Actor
from control.runtime import Runtime


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    rec = sub.add_parser("reconcile", help="import provider statements; decide proposals")
    rsub = rec.add_subparsers(dest="reconcile_command", required=True)
    imp = rsub.add_parser("import", help="compare a statement CSV with the ledger (per day)")
    imp.add_argument("file", type=Path)
    imp.add_argument("--provider", required=True, help="paygate | momo | agent")
    imp.add_argument("--desco", default=None, help="DESCO id (default: CIZO_DEFAULT_DESCO_ID)")
    imp.add_argument("--user", required=True, help="the finance user importing")
    imp.set_defaults(func=_import)
    for verb in ("approve", "reject"):
        d = rsub.add_parser(verb, help=f"{verb} a statement proposal (not its importer)")
        d.add_argument("proposal_id", type=int)
        d.add_argument("--user", required=True, help="the finance user deciding")
        d.add_argument("--reason", default=None)
        d.set_defaults(func=_decide, approve=verb == "approve")

    st = sub.add_parser("settlement", help="daily settlement per DESCO and provider")
    ssub = st.add_subparsers(dest="settlement_command", required=True)
    rep = ssub.add_parser("report", help="collected/credited/reversed/suspense per day")
    rep.add_argument("--from", dest="first_day", default=None, help="YYYY-MM-DD (UTC)")
    rep.add_argument("--to", dest="last_day", default=None)
    rep.add_argument("--desco", default=None)
    rep.add_argument("--provider", default=None)
    rep.set_defaults(func=_report)
    chk = ssub.add_parser("check-ledger", help="re-derive every balance from the ledger")
    chk.set_defaults(func=_check)


def _runtime() -> Runtime:
    from cizo.settings import load_settings

    return Runtime.build(load_settings())


def _actor(name: str) -> Actor:
    return Actor(name=f"cli:{name}", role="finance")


def _print(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def _import(args: argparse.Namespace) -> int:
    from control.payments import reconcile, statements

    rt = _runtime()
    try:
        text = args.file.read_text(encoding="utf-8")
        imp = reconcile.import_statement(
            rt, provider=args.provider, desco_id=args.desco or rt.settings.default_desco_id,
            filename=args.file.name, text=text, actor=_actor(args.user))
    except (OSError, UnicodeDecodeError, statements.StatementError) as exc:
        print(say("cizo reconcile: {error}", error=exc), file=sys.stderr)
        return 2
    finally:
        rt.db.dispose()
    _print({"import_id": imp.id, **imp.report})
    return 0


def _decide(args: argparse.Namespace) -> int:
    from control.payments import reconcile
    from control.payments.suspense import SuspenseError

    rt = _runtime()
    try:
        prop, receipt = reconcile.decide_proposal(rt, proposal_id=args.proposal_id,
                                                  approve=args.approve,
                                                  actor=_actor(args.user), reason=args.reason)
    except SuspenseError as exc:
        print(say("cizo reconcile: {error}", error=exc), file=sys.stderr)
        return 1
    finally:
        rt.db.dispose()
    _print({"proposal_id": prop.id, "status": prop.status, "payment_id": prop.payment_id,
            "outcome": receipt.outcome if receipt else None})
    return 0


def _report(args: argparse.Namespace) -> int:
    from control.payments import settlement

    rt = _runtime()
    today = datetime.fromtimestamp(rt.clock.now(), UTC).date().isoformat()
    try:
        with rt.db.session() as s:
            out = settlement.report(s, first_day=args.first_day or today,
                                    last_day=args.last_day or args.first_day or today,
                                    desco_id=args.desco, provider=args.provider)
    finally:
        rt.db.dispose()
    _print(out)
    return 0 if out["agrees_with_ledger"] else 3


def _check(args: argparse.Namespace) -> int:
    from control.ledger import check as accounting

    rt = _runtime()
    try:
        with rt.db.session() as s:
            problems = accounting.check_ledger(s)
    finally:
        rt.db.dispose()
    _print({"ok": not problems, "problems": [dataclasses.asdict(p) for p in problems]})
    return 0 if not problems else 3
