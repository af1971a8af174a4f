"""``cizo support ...``: support actions from a terminal.

    cizo support unlock KIT --days 3 --reason TEXT
    cizo support lock KIT --reason TEXT
    cizo support set-credit-until KIT --until 2026-02-01T00:00Z|UNIX --reason TEXT
    cizo support swap KIT --new-kit SERIAL --reason TEXT      prints the new credentials once
    cizo support repossess KIT --reason TEXT
    cizo support token KIT --reason TEXT [--no-sms]
    cizo support show KIT                                      commands, tokens, audit

It talks to the HTTP API with the staff member's own API key (``--api-key`` or
``CIZO_SUPPORT_API_KEY``; URL from ``--url``, ``CIZO_SUPPORT_API_URL`` or the API
settings), never to the database: the same roles, DESCO scope, rate limits, 7-day rule and
audit identity apply as on the web, and a terminal needs no database credentials.
Each write sends an ``Idempotency-Key``, so re-running after a lost answer is safe.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx

from control.cli.http import add_api_options, api_client
from control.cli.words import say


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("support", help="support actions on a kit through the HTTP API")
    add_api_options(p)
    ss = p.add_subparsers(dest="support_command", required=True)

    def cmd(name: str, helptext: str, reason: bool = True) -> argparse.ArgumentParser:
        c: argparse.ArgumentParser = ss.add_parser(name, help=helptext)
        c.add_argument("kit_id")
        if reason:
            c.add_argument("--reason", required=True, help="why (kept in the audit log)")
        return c

    u = cmd("unlock", "free days on top of paid credit (more than 7: admin key)")
    u.add_argument("--days", type=int, required=True)
    u.set_defaults(func=unlock)
    cmd("lock", "end the credit now").set_defaults(func=lock)
    sc = cmd("set-credit-until", "set the end of credit")
    sc.add_argument("--until", required=True, help="ISO time (UTC) or unix seconds")
    sc.set_defaults(func=set_credit_until)
    sw = cmd("swap", "move the account to a replacement kit")
    sw.add_argument("--new-kit", required=True)
    sw.set_defaults(func=swap)
    cmd("repossess", "lock for good and close the account").set_defaults(func=repossess)
    tk = cmd("token", "issue a keypad token for the current credit")
    tk.add_argument("--no-sms", action="store_true", help="do not text it to the customer")
    tk.set_defaults(func=token)
    cmd("show", "commands, tokens and audit of a kit", reason=False).set_defaults(func=show)


def parse_until(text: str) -> int:
    """``1767225600`` or an ISO time such as ``2026-02-01T00:00Z`` (UTC if no zone)."""
    if text.isdigit():
        return int(text)
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())


def _client(args: argparse.Namespace) -> httpx.Client:
    return api_client(args, "support")


def _post(args: argparse.Namespace, path: str, body: dict[str, Any]) -> int:
    with _client(args) as c:
        r = c.post(path, json=body, headers={"Idempotency-Key": str(uuid.uuid4())})
    return _print(r)


def _print(r: httpx.Response) -> int:
    try:
        body: Any = r.json()
    except ValueError:
        body = {"detail": r.text}
    if r.status_code // 100 != 2:
        # the API answers in the CLI's language (Accept-Language from api_client)
        said = body.get("message") or body.get("detail", body) if isinstance(body, dict) else body
        print(say("cizo support: HTTP {status}: {message}", status=r.status_code, message=said),
              file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2, ensure_ascii=False))
    return 0


def unlock(args: argparse.Namespace) -> int:
    return _post(args, f"/v1/kits/{args.kit_id}/unlock",
                 {"days": args.days, "reason": args.reason})


def lock(args: argparse.Namespace) -> int:
    return _post(args, f"/v1/kits/{args.kit_id}/lock", {"reason": args.reason})


def set_credit_until(args: argparse.Namespace) -> int:
    try:
        until = parse_until(args.until)
    except ValueError as exc:
        print(say("cizo support: --until: {error}", error=exc), file=sys.stderr)
        return 2
    return _post(args, f"/v1/kits/{args.kit_id}/set-credit-until",
                 {"credit_until": until, "reason": args.reason})


def swap(args: argparse.Namespace) -> int:
    return _post(args, f"/v1/kits/{args.kit_id}/swap",
                 {"new_kit_id": args.new_kit, "reason": args.reason})


def repossess(args: argparse.Namespace) -> int:
    return _post(args, f"/v1/kits/{args.kit_id}/repossess", {"reason": args.reason})


def token(args: argparse.Namespace) -> int:
    with _client(args) as c:
        r = c.post(f"/v1/kits/{args.kit_id}/tokens",
                   json={"reason": args.reason, "send_sms": not args.no_sms})
    return _print(r)


def show(args: argparse.Namespace) -> int:
    out: dict[str, Any] = {}
    with _client(args) as c:
        for name, path in (("commands", "commands?limit=10"), ("tokens", "tokens?limit=10"),
                           ("audit", "audit?limit=10")):
            r = c.get(f"/v1/kits/{args.kit_id}/{path}")
            if r.status_code == 403 and name == "tokens":
                out[name] = None  # keypad tokens are for support staff only
                continue
            if r.status_code // 100 != 2:
                return _print(r)
            out[name] = r.json()
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0
