"""``cizo keys ...``, ``cizo broker ...``, ``cizo erase-personal-data ...``: access and privacy.

    cizo keys create --name NAME --role ROLE [--desco ID]   prints the key once
    cizo keys list [--all]
    cizo keys revoke ID
    cizo broker sync                      reconcile the broker's doors with the ledger now
    cizo broker revoke-kit KIT_ID         revoke its broker password; its session is cut
    cizo broker rotate-kit KIT_ID         a new broker password, printed once
    cizo broker certs --out DIR [--host H ...] [--kit KIT_ID ...]
    cizo erase-personal-data close ACCOUNT --reason TEXT
    cizo erase-personal-data account ACCOUNT
    cizo erase-personal-data due [--retention-days N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from cizo.settings import Settings
from control.cli.words import say
from control.ledger.accounts import Actor
from control.ledger.secrets import ROLES

CLI_ACTOR = Actor(name="cizo admin CLI", role="admin")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    keys = sub.add_parser("keys", help="API keys: create, list, revoke")
    ks = keys.add_subparsers(dest="keys_command", required=True)
    c = ks.add_parser("create", help="create a named key; printed once")
    c.add_argument("--name", required=True)
    c.add_argument("--role", required=True, choices=ROLES)
    c.add_argument("--desco", default=None, help="scope to one DESCO (default: national)")
    c.set_defaults(func=keys_create)
    ls = ks.add_parser("list", help="list keys (never the keys themselves)")
    ls.add_argument("--all", action="store_true", help="include revoked keys")
    ls.set_defaults(func=keys_list)
    r = ks.add_parser("revoke", help="revoke a key by id")
    r.add_argument("key_id", type=int)
    r.set_defaults(func=keys_revoke)

    broker = sub.add_parser("broker", help="the broker's doors, converged to the ledger")
    bs = broker.add_subparsers(dest="broker_command", required=True)
    sy = bs.add_parser("sync", help="reconcile the broker (dynamic security) with the ledger")
    sy.set_defaults(func=broker_sync)
    rk = bs.add_parser("revoke-kit", help="revoke a kit's broker password and cut its session")
    rk.add_argument("kit_id")
    rk.set_defaults(func=broker_revoke_kit)
    ro = bs.add_parser("rotate-kit", help="a new broker password for a kit, printed once")
    ro.add_argument("kit_id")
    ro.set_defaults(func=broker_rotate_kit)
    ce = bs.add_parser("certs", help="make a CA, a broker certificate and kit certificates")
    ce.add_argument("--out", type=Path, required=True)
    ce.add_argument("--host", action="append", default=[],
                    help="broker DNS name or IP (repeatable; default 127.0.0.1)")
    ce.add_argument("--kit", action="append", default=[], help="kit id (repeatable)")
    ce.set_defaults(func=broker_certs)

    er = sub.add_parser("erase-personal-data",
                        help="close accounts and erase customers' phone numbers")
    es = er.add_subparsers(dest="erase_command", required=True)
    cl = es.add_parser("close", help="close an account (starts the retention period)")
    cl.add_argument("account")
    cl.add_argument("--reason", required=True)
    cl.set_defaults(func=erase_close)
    ea = es.add_parser("account", help="erase one closed account's personal data now")
    ea.add_argument("account")
    ea.set_defaults(func=erase_account)
    ed = es.add_parser("due", help="erase every account closed longer than the retention")
    ed.add_argument("--retention-days", type=int, default=None,
                    help="default: CIZO_PERSONAL_DATA_RETENTION_DAYS")
    ed.set_defaults(func=erase_due)


def _settings() -> Settings:
    from cizo.settings import load_settings

    return load_settings()


def _runtime_db(settings: Settings) -> Any:
    from control.ledger.db import Database, migrate

    migrate(settings.database_url)
    return Database(settings.database_url)


# --- keys -------------------------------------------------------------------------------


def keys_create(args: argparse.Namespace) -> int:
    from control.ledger.db import migrate
    from control.runtime import Runtime
    from control.security.api_keys import create_api_key

    settings = _settings()
    migrate(settings.database_url)
    rt = Runtime.build(settings)
    try:
        key_id, key = create_api_key(rt, name=args.name, role=args.role, desco_id=args.desco)
    except ValueError as exc:
        print(say("cizo keys create: {error}", error=exc), file=sys.stderr)
        return 2
    finally:
        rt.paygate.close()
    print(json.dumps({"id": key_id, "name": args.name, "role": args.role,
                      "desco_id": args.desco, "key": key}))
    return 0


def keys_list(args: argparse.Namespace) -> int:
    from control.ledger.models import ApiKey

    db = _runtime_db(_settings())
    with db.session() as s:
        q = select(ApiKey).order_by(ApiKey.id)
        if not args.all:
            q = q.where(ApiKey.revoked_at.is_(None))
        for k in s.scalars(q):
            print(json.dumps({"id": k.id, "name": k.name, "role": k.role,
                              "desco_id": k.desco_id, "created_at": k.created_at,
                              "revoked_at": k.revoked_at}))
    db.dispose()
    return 0


def keys_revoke(args: argparse.Namespace) -> int:
    from control.ledger.models import ApiKey

    db = _runtime_db(_settings())
    with db.session() as s:
        k = s.get(ApiKey, args.key_id)
        if k is None:
            print(say("cizo keys revoke: no key {key_id}", key_id=args.key_id), file=sys.stderr)
            return 1
        if k.revoked_at is None:
            k.revoked_at = time.time()
    db.dispose()
    print(say("key {key_id} revoked", key_id=args.key_id))
    return 0


# --- broker -----------------------------------------------------------------------------


def _doors(settings: Settings, db: Any) -> Any:
    from control.ledger.secrets import SecretBox
    from control.security.broker_auth import BrokerDoors

    doors = BrokerDoors(settings, db, SecretBox(settings.require_secret_key()))
    if not doors.enabled:
        raise SystemExit(say("cizo broker: CIZO_BROKER_ADMIN_PASSWORD is not set, so the "
                             "broker cannot be driven (docs/security.md, the broker's doors)"))
    return doors


def _converge(settings: Settings, db: Any, kit_id: str) -> int:
    from control.gateways.broker_admin import BrokerAdminError

    try:
        outcome = _doors(settings, db).converge_kits([kit_id])
    except BrokerAdminError as exc:
        print(say("cizo broker: the ledger is changed but the broker was not reached ({error}); "
                  "the control service's next reconcile applies it, or run `cizo broker sync`",
                  error=exc), file=sys.stderr)
        return 1
    if outcome.failed:
        print(say("cizo broker: the broker refused kit {kit_id} (see the log)", kit_id=kit_id),
              file=sys.stderr)
        return 1
    return 0


def broker_sync(args: argparse.Namespace) -> int:
    settings = _settings()
    db = _runtime_db(settings)
    try:
        outcome = _doors(settings, db).reconcile()
    finally:
        db.dispose()
    print(json.dumps(outcome.as_dict()))
    return 1 if outcome.failed else 0


def broker_revoke_kit(args: argparse.Namespace) -> int:
    from control.security.broker_auth import revoke_kit

    settings = _settings()
    db = _runtime_db(settings)
    try:
        if not revoke_kit(db, args.kit_id, time.time()):
            print(say("cizo broker revoke-kit: no kit {kit_id}", kit_id=args.kit_id),
                  file=sys.stderr)
            return 1
        return _converge(settings, db, args.kit_id)
    finally:
        db.dispose()


def broker_rotate_kit(args: argparse.Namespace) -> int:
    from control.ledger.secrets import SecretBox
    from control.security.broker_auth import rotate_kit_password

    settings = _settings()
    db = _runtime_db(settings)
    try:
        password = rotate_kit_password(db, SecretBox(settings.require_secret_key()),
                                       args.kit_id)
        if password is None:
            print(say("cizo broker rotate-kit: no kit {kit_id} in service", kit_id=args.kit_id),
                  file=sys.stderr)
            return 1
        print(json.dumps({"kit_id": args.kit_id, "mqtt_password": password}))
        return _converge(settings, db, args.kit_id)
    finally:
        db.dispose()


def broker_certs(args: argparse.Namespace) -> int:
    from control.security import pki

    ca = pki.make_ca("CIZO kit CA")
    ca.write(args.out, "ca")
    pki.make_server_cert(ca, args.host or ["127.0.0.1"]).write(args.out, "server")
    for kit in args.kit:
        pki.make_client_cert(ca, kit).write(args.out / "kits", kit)
    print(say("CA, server and {count} kit certificate(s) written to {path}",
              count=len(args.kit), path=args.out))
    return 0


# --- personal data ----------------------------------------------------------------------


def erase_close(args: argparse.Namespace) -> int:
    from control.ledger.privacy import PrivacyError, close_account

    db = _runtime_db(_settings())
    try:
        close_account(db, args.account, now=time.time(), actor=CLI_ACTOR, reason=args.reason)
    except PrivacyError as exc:
        print(say("cizo erase-personal-data close: {error}", error=exc), file=sys.stderr)
        return 1
    finally:
        db.dispose()
    print(say("account {account} closed", account=args.account))
    return 0


def erase_account(args: argparse.Namespace) -> int:
    from control.ledger.privacy import PrivacyError
    from control.ledger.privacy import erase_account as erase

    db = _runtime_db(_settings())
    try:
        result = erase(db, args.account, now=time.time(), actor=CLI_ACTOR)
    except PrivacyError as exc:
        print(say("cizo erase-personal-data account: {error}", error=exc), file=sys.stderr)
        return 1
    finally:
        db.dispose()
    print(json.dumps({"account": result.account_number, "payments": result.payments,
                      "audit_entries": result.audit_entries}))
    return 0


def erase_due(args: argparse.Namespace) -> int:
    from control.ledger.privacy import erase_due as erase

    settings = _settings()
    db = _runtime_db(settings)
    days = (args.retention_days if args.retention_days is not None
            else settings.personal_data_retention_days)
    try:
        done = erase(db, now=time.time(), retention_days=days, actor=CLI_ACTOR)
    finally:
        db.dispose()
    print(json.dumps({"erased": [e.account_number for e in done]}))
    return 0
