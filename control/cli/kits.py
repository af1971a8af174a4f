"""``cizo kits provision|import|export``, ``cizo payments export``, ``cizo commands export``.

    cizo kits provision SERIAL --phone P --deposit N --daily-rate N --total-price N
        [--kind mqtt|openpaygo_metrics] [--desco ID] [--region R] [--deposit-unpaid]
    cizo kits import FILE.csv [--credentials-out F] [--errors-out F]   new kits' credentials
    cizo kits export [--columns a,b] [--desco D] [--out F]             once, for the factory
    cizo payments export [--columns ...] [--out F]
    cizo commands export [--columns ...] [--out F]

Through the HTTP API with the staff member's own key (control.cli.http), like ``cizo
support``: the same roles, DESCO scope and audit apply. An import is sent in parts of
``--rows-per-request`` rows with a progress bar; the credentials of the kits it creates
are written once to a new file (never overwritten: mode 0600), rows refused to a CSV
report. Running the same file again creates nothing and writes no credentials. A kit
provisioned alone prints its credentials once (an OpenPAYGO Metrics device's include its
``openpaygo_key``, which its maker flashes).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from control.cli.http import add_api_options, api_client
from control.cli.words import cli_locale
from control.fleet.kit_import import ERROR_COLUMNS
from control.fleet.messages import text
from control.ledger.models import KIT_KINDS, KIT_MQTT

CREDENTIAL_COLUMNS = ("kit_id", "account_number", "desco_id", "mqtt_username",
                      "mqtt_password", "command_secret", "kind", "openpaygo_key")
IMPORT_TIMEOUT_S = 600.0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    kits = sub.add_parser("kits", help="provision, import and export kits through the "
                          "HTTP API")
    ks = kits.add_subparsers(dest="kits_command", required=True)
    pv = ks.add_parser("provision", help="a new kit (or OpenPAYGO Metrics device) and its "
                       "account; credentials printed once (admin key)")
    add_api_options(pv)
    pv.add_argument("kit_id", help="the serial")
    pv.add_argument("--phone", required=True, help="the customer's phone")
    pv.add_argument("--deposit", type=int, required=True, help="deposit, FCFA")
    pv.add_argument("--daily-rate", type=int, required=True, help="FCFA a day")
    pv.add_argument("--total-price", type=int, required=True, help="FCFA to own the kit")
    pv.add_argument("--kind", choices=KIT_KINDS, default=KIT_MQTT,
                    help="mqtt: a CIZO kit; openpaygo_metrics: a device posting to /dd")
    pv.add_argument("--desco", default=None, help="its DESCO (default: your key's)")
    pv.add_argument("--region", default=None, help="its region (default: the default one)")
    pv.add_argument("--deposit-unpaid", action="store_true",
                    help="the deposit was not taken in cash at the sale")
    pv.set_defaults(func=provision)
    imp = ks.add_parser("import", help="provision kits from a CSV file (admin key)")
    add_api_options(imp)
    imp.add_argument("file", type=Path, help="CSV: kit_id, phone, deposit_fcfa, "
                     "daily_rate_fcfa, total_price_fcfa [, desco_id, region, deposit_paid, kind]")
    imp.add_argument("--credentials-out", type=Path,
                     help="new file for the new kits' credentials "
                          "(default: FILE.credentials.csv)")
    imp.add_argument("--errors-out", type=Path,
                     help="CSV report of refused rows (default: FILE.errors.csv)")
    imp.add_argument("--rows-per-request", type=int, default=5_000)
    imp.set_defaults(func=import_kits)
    _export_parser(ks, "kits")
    for kind in ("payments", "commands"):
        parent = sub.add_parser(kind, help=f"{kind} as CSV through the HTTP API")
        _export_parser(parent.add_subparsers(dest=f"{kind}_command", required=True), kind)


def _export_parser(sub: argparse._SubParsersAction[Any], kind: str) -> None:
    exp = sub.add_parser("export", help=f"{kind} as CSV, streamed")
    add_api_options(exp)
    exp.add_argument("--columns", help="comma-separated (default: the usual ones)")
    exp.add_argument("--desco", help="one DESCO (national keys only)")
    exp.add_argument("--out", type=Path, help="file to write (default: stdout)")
    exp.set_defaults(func=export, kind=kind)


def _parts(path: Path, size: int) -> Iterator[tuple[int, str, int]]:
    """(rows before, CSV text with the header, rows in it) per part of the file."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return
        done, rows = 0, []
        for row in reader:
            rows.append(row)
            if len(rows) == size:
                yield done, _csv_text(header, rows), len(rows)
                done, rows = done + len(rows), []
        if rows:
            yield done, _csv_text(header, rows), len(rows)


def _csv_text(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(header)
    out.writerows(rows)
    return buf.getvalue()


def _new_private_file(path: Path) -> io.TextIOWrapper:
    """A new file only its owner can read; an existing one is never overwritten."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return open(fd, "w", newline="", encoding="utf-8")


def _count_rows(path: Path) -> int:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        return max(0, sum(1 for _ in csv.reader(fh)) - 1)


def _http_error(command: str, r: httpx.Response) -> str:
    body = r.json() if "json" in r.headers.get("content-type", "") else {}
    return text("http_error", cli_locale(), command=command, status=r.status_code,
                code=body.get("code", "-"),
                detail=body.get("message") or body.get("detail", r.text))


def provision(args: argparse.Namespace) -> int:
    """One kit by ``POST /v1/kits`` (with an Idempotency-Key: re-running is safe)."""
    body = {"kit_id": args.kit_id, "desco_id": args.desco, "phone": args.phone,
            "region": args.region, "kind": args.kind, "deposit_paid": not args.deposit_unpaid,
            "plan": {"deposit_fcfa": args.deposit, "daily_rate_fcfa": args.daily_rate,
                     "total_price_fcfa": args.total_price}}
    with api_client(args, "kits provision") as c:
        r = c.post("/v1/kits", json=body, headers={"Idempotency-Key": str(uuid.uuid4())})
    if r.status_code // 100 != 2:
        print(_http_error("kits provision", r), file=sys.stderr)
        return 1
    print(json.dumps(r.json(), indent=2, ensure_ascii=False))
    return 0


def import_kits(args: argparse.Namespace) -> int:
    locale = cli_locale()
    creds_path = args.credentials_out or args.file.with_suffix(".credentials.csv")
    errors_path = args.errors_out or args.file.with_suffix(".errors.csv")
    if not args.file.is_file():
        print(text("no_file", locale, path=args.file), file=sys.stderr)
        return 2
    if creds_path.exists():
        print(text("credentials_exist", locale, path=creds_path), file=sys.stderr)
        return 2
    totals = {"rows": 0, "created": 0, "unchanged": 0, "rejected": 0}
    errors: list[dict[str, Any]] = []
    with api_client(args, "kits import", timeout_s=IMPORT_TIMEOUT_S) as c, \
            _new_private_file(creds_path) as creds_fh, \
            tqdm(total=_count_rows(args.file), unit="kit", desc="import",
                 file=sys.stderr) as bar:
        creds = csv.DictWriter(creds_fh, CREDENTIAL_COLUMNS, extrasaction="ignore")
        creds.writeheader()
        for before, part, n in _parts(args.file, args.rows_per_request):
            r = c.post("/v1/kits/import", params={"line_offset": before},
                       content=part.encode(), headers={"Content-Type": "text/csv"})
            if r.status_code // 100 != 2:
                print("\n" + _http_error("kits import", r), file=sys.stderr)
                return 1
            out = r.json()
            creds.writerows(out["credentials"])
            creds_fh.flush()
            errors.extend(out["errors"])
            for k in totals:
                totals[k] += out[k]
            bar.update(n)
    if errors:
        with errors_path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, ERROR_COLUMNS)  # as GET /v1/kits/imports/{id}/errors.csv
            w.writeheader()
            w.writerows(errors)
    print(text("import_totals", locale, **totals))
    print(text("credentials_file", locale, path=creds_path))
    if errors:
        print(text("errors_file", locale, path=errors_path))
    return 1 if errors else 0


def export(args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("columns", args.columns), ("desco_id", args.desco)) if v}
    with api_client(args, f"{args.kind} export", timeout_s=None) as c, \
            c.stream("GET", f"/v1/exports/{args.kind}.csv", params=params) as r:
        if r.status_code // 100 != 2:
            r.read()
            print(_http_error(f"{args.kind} export", r), file=sys.stderr)
            return 1
        sink = args.out.open("wb") if args.out else sys.stdout.buffer
        try:
            for chunk in r.iter_bytes():
                sink.write(chunk)
        finally:
            if args.out:
                sink.close()
    return 0
