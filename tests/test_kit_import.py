"""Kits imported from CSV (API and ``cizo kits import``): every row checked by the same
validator as POST /v1/kits, refused rows reported with a code, a re-run creates nothing,
credentials handed out once."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cizo import services
from cizo_cli import main as cli
from control.api import create_app
from control.ledger.models import Account, AuditEntry, Kit, LedgerEntry
from control.ledger.secrets import verify_mqtt_password
from control.runtime import Runtime
from tests.api_support import Keys, TestClient
from tests.support import ServerThread

HEADER = "kit_id,phone,deposit_fcfa,daily_rate_fcfa,total_price_fcfa,region,deposit_paid\n"
GOOD = [f"IMP-{i:03d},90 00 01 {i:02d},2000,100,50000,Kara,true\n" for i in range(5)]
BAD = [
    "IMP.DOT,90000200,2000,100,50000,,\n",  # outside the kit-id pattern
    "IMP-PHONE,12,2000,100,50000,,\n",
    "IMP-PLAN,90000201,9000,100,5000,,\n",  # deposit above the price
    "IMP-000,90000202,2000,100,50000,,\n",  # the same kit twice in the file
    "IMP-REGION,90000203,2000,100,50000,Lomé,\n",
    "IMP-NUM,90000204,deux mille,100,50000,,\n",
    "IMP-FLAG,90000205,2000,100,50000,,peut-être\n",
]
FILE = HEADER + "".join(GOOD) + "".join(BAD)
CODES = {"IMP.DOT": "kit_id_invalid", "IMP-PHONE": "phone_invalid", "IMP-PLAN": "plan_invalid",
         "IMP-000": "kit_duplicate_in_file", "IMP-REGION": "region_unknown",
         "IMP-NUM": "number_invalid", "IMP-FLAG": "flag_invalid"}


def _import(client: TestClient, key: str, text: str, **params: int) -> dict:  # type: ignore[type-arg]
    r = client.post("/v1/kits/import", content=text.encode(), params=params,
                    headers={**Keys.auth(key), "Content-Type": "text/csv"})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_import_checks_every_row_and_a_rerun_creates_nothing(
    client: TestClient, rt: Runtime, keys: Keys
) -> None:
    out = _import(client, keys.admin, FILE)
    assert (out["rows"], out["created"], out["unchanged"], out["rejected"]) == (12, 5, 0, 7)
    assert {e["kit_id"]: e["code"] for e in out["errors"]} == CODES
    rows = {e["kit_id"]: e["row"] for e in out["errors"]}
    assert rows["IMP.DOT"] == 7 and rows["IMP-FLAG"] == 13  # lines of the file
    assert all(e["message"] for e in out["errors"])
    creds = {c["kit_id"]: c for c in out["credentials"]}
    assert sorted(creds) == [f"IMP-{i:03d}" for i in range(5)]
    with rt.db.session() as s:
        kit = s.get(Kit, "IMP-003")
        assert kit is not None and kit.region == "Kara" and kit.desco_id == "default"
        assert verify_mqtt_password(creds["IMP-003"]["mqtt_password"], kit.mqtt_password_hash)
        assert rt.box.decrypt(kit.secret_enc) == creds["IMP-003"]["command_secret"]
        acct = s.scalars(select(Account).where(Account.kit_id == "IMP-003")).one()
        assert acct.customer_phone == "+22890000103" and acct.paid_total_fcfa == 2000
        deposits = s.scalar(select(func.count()).select_from(LedgerEntry)
                            .where(LedgerEntry.kind == "deposit"))
        audits = s.scalar(select(func.count()).select_from(AuditEntry)
                          .where(AuditEntry.action == "kit.provision"))
        assert deposits == 5 and audits == 5

    # the refused rows, to download as CSV; only the importer's DESCO (or national) sees them
    report = client.get(f"/v1/kits/imports/{out['import_id']}/errors.csv",
                        headers=Keys.auth(keys.admin))
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(report.text)))
    assert {r["kit_id"]: r["code"] for r in lines} == CODES and lines[0]["row"] == "7"
    hidden = client.get(f"/v1/kits/imports/{out['import_id']}/errors.csv",
                        headers=Keys.auth(keys.north_admin))
    assert hidden.status_code == 404 and hidden.json()["code"] == "import_unknown"

    again = _import(client, keys.admin, FILE)
    assert (again["created"], again["unchanged"], again["rejected"]) == (0, 5, 7)
    assert again["credentials"] == []
    with rt.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Kit)) == 5
        assert s.scalar(select(func.count()).select_from(AuditEntry)
                        .where(AuditEntry.action == "kit.provision")) == 5


def test_import_and_single_provisioning_refuse_alike(client: TestClient, keys: Keys) -> None:
    single = client.post("/v1/kits", headers=Keys.auth(keys.admin), json={
        "kit_id": "IMP.DOT", "phone": "90000200",
        "plan": {"deposit_fcfa": 0, "daily_rate_fcfa": 100, "total_price_fcfa": 1000}})
    assert single.status_code == 422  # the contract's pattern: no "."
    single = client.post("/v1/kits", headers=Keys.auth(keys.admin), json={
        "kit_id": "IMP-R", "phone": "90000200", "region": "Lomé",
        "plan": {"deposit_fcfa": 0, "daily_rate_fcfa": 100, "total_price_fcfa": 1000}})
    assert single.status_code == 422 and single.json()["code"] == "region_unknown"

    # another DESCO's existing kit is refused, not "unchanged"; the DESCO scope holds
    _import(client, keys.admin, HEADER + GOOD[0])
    north = _import(client, keys.north_admin, HEADER + GOOD[0] + GOOD[1].replace("IMP", "N"),
                    line_offset=100)
    assert north["created"] == 1 and north["credentials"][0]["desco_id"] == "north"
    assert [(e["code"], e["row"]) for e in north["errors"]] == [("kit_exists", 102)]
    scoped = _import(client, keys.north_admin,
                     "kit_id,phone,deposit_fcfa,daily_rate_fcfa,total_price_fcfa,desco_id\n"
                     "N-9,90000300,0,100,1000,default\n")
    assert [e["code"] for e in scoped["errors"]] == ["desco_forbidden"]

    missing = client.post("/v1/kits/import", content=b"kit_id,phone\nA,90000000\n",
                          headers={**Keys.auth(keys.admin), "Content-Type": "text/csv"})
    assert missing.status_code == 422 and missing.json()["code"] == "column_missing"
    forbidden = client.post("/v1/kits/import", content=FILE.encode(),
                            headers={**Keys.auth(keys.operator), "Content-Type": "text/csv"})
    assert forbidden.status_code == 403
    huge = client.post("/v1/kits/import", content=FILE.encode() * 20_000,
                       headers={**Keys.auth(keys.admin), "Content-Type": "text/csv"})
    assert huge.status_code == 413 and huge.json()["code"] == "file_too_large"


def test_an_import_may_name_each_kits_kind(
    client: TestClient, rt: Runtime, keys: Keys
) -> None:
    header = "kit_id,phone,deposit_fcfa,daily_rate_fcfa,total_price_fcfa,kind\n"
    opm = "K-OPM,90000401,0,100,1000,openpaygo_metrics\n"
    out = _import(client, keys.admin, header + "K-MQTT,90000400,0,100,1000,\n" + opm
                  + "K-ODD,90000402,0,100,1000,lorawan\n")
    creds = {c["kit_id"]: c for c in out["credentials"]}
    assert creds["K-MQTT"]["kind"] == "mqtt" and creds["K-MQTT"]["openpaygo_key"] is None
    assert creds["K-OPM"]["kind"] == "openpaygo_metrics"
    assert len(creds["K-OPM"]["openpaygo_key"]) == 32
    assert [e["code"] for e in out["errors"]] == ["kind_unknown"]
    with rt.db.session() as s:
        device = s.get(Kit, "K-OPM")
        assert device is not None and device.kind == "openpaygo_metrics" and device.keypad_only
    # the same row again is unchanged; the same kit as another kind is refused
    again = _import(client, keys.admin,
                    header + opm + "K-MQTT,90000400,0,100,1000,openpaygo_metrics\n")
    assert (again["created"], again["unchanged"]) == (0, 1)
    assert [e["code"] for e in again["errors"]] == ["kit_exists"]


@pytest.fixture
def server(rt: Runtime) -> Iterator[str]:
    with ServerThread(create_app(rt), services.free_port()) as srv:
        yield srv.url


@pytest.mark.usefixtures("cli_in_english")
def test_cli_import_writes_credentials_once_and_a_report(
    server: str, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "factory.csv"
    src.write_text(FILE)
    args = ["kits", "import", str(src), "--url", server, "--api-key", keys.admin,
            "--rows-per-request", "4"]
    assert cli.main(args) == 1  # some rows were refused
    out = capsys.readouterr()
    assert "5 created" in out.out and "7 refused" in out.out  # nothing taken as a re-run
    assert "import" in out.err and "12/12" in out.err  # the progress bar got to the end
    creds_file = tmp_path / "factory.credentials.csv"
    assert creds_file.stat().st_mode & 0o777 == 0o600
    creds = list(csv.DictReader(io.StringIO(creds_file.read_text())))
    assert sorted(c["kit_id"] for c in creds) == [f"IMP-{i:03d}" for i in range(5)]
    assert all(len(c["command_secret"]) == 64 and c["mqtt_password"] for c in creds)
    report = list(csv.DictReader(io.StringIO((tmp_path / "factory.errors.csv").read_text())))
    # parts of 4 rows: the repeated kit is met in a later part, as a kit already there
    assert {r["kit_id"]: r["code"] for r in report} == {**CODES, "IMP-000": "kit_exists"}
    assert {r["kit_id"]: int(r["row"]) for r in report}["IMP-FLAG"] == 13  # across parts

    # credentials are written once: the same output file is refused, a new one stays empty
    assert cli.main(args) == 2
    assert "exists" in capsys.readouterr().err
    again = tmp_path / "again.csv"
    assert cli.main([*args, "--credentials-out", str(again)]) == 1
    assert "0 created, 5 already there" in capsys.readouterr().out
    assert again.read_text().strip() == ",".join(
        ("kit_id", "account_number", "desco_id", "mqtt_username", "mqtt_password",
         "command_secret", "kind", "openpaygo_key"))
