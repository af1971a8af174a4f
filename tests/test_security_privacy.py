"""Personal data: erasure after an account closes keeps amounts and aggregates; no phone
number in logs or in the open-data export; the admin CLI (keys, the broker commands
without an admin, erasure).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from cizo import services
from cizo.clock import ManualClock
from cizo.settings import Settings
from cizo_cli import main as cli
from control.api import create_app
from control.ledger import privacy
from control.ledger.accounts import SYSTEM
from control.ledger.db import Database, migrate
from control.ledger.models import Account, ApiKey, AuditEntry, LedgerEntry, Payment
from control.ledger.secrets import ROLES, generate_secret_key
from control.runtime import Runtime
from control.security.api_keys import create_api_key
from payment_sim.paygate import PayGateSimConfig, run_in_thread
from telemetry import opendata
from tests.api_support import TestClient
from tests.security_support import auth

PHONE = "+22890555123"
LOCAL = "90555123"
PLAN = {"deposit_fcfa": 1000, "daily_rate_fcfa": 100, "total_price_fcfa": 20_000}


@dataclasses.dataclass
class World:
    rt: Runtime
    client: TestClient
    keys: dict[str, str]
    clock: ManualClock


@pytest.fixture
def world(database_url: str, influxd: services.InfluxProcess) -> Iterator[World]:
    migrate(database_url)
    sim = run_in_thread(PayGateSimConfig(auth_token="tok", outcome="never", callback_url=None))
    db = f"privacy_{abs(hash(database_url)) % 10**8}"
    for name in (db, f"{db}_daily"):
        httpx.post(f"http://127.0.0.1:{influxd.port}/query",
                   params={"q": f'CREATE DATABASE "{name}"'}).raise_for_status()
    clock = ManualClock()
    rt = Runtime.build(Settings(
        database_url=database_url, secret_key=generate_secret_key(), paygate_url=sim.url,
        paygate_auth_token="tok", paygate_timeout_s=3.0,
        influx_url=f"http://127.0.0.1:{influxd.port}", influx_db=db,
    ), clock=clock)
    keys = {role: create_api_key(rt, name=f"{role} key", role=role)[1] for role in ROLES}
    with TestClient(create_app(rt)) as client:
        yield World(rt, client, keys, clock)
    sim.stop()
    rt.paygate.close()
    rt.db.dispose()


def _customer_journey(w: World, kit_id: str = "KIT-P1") -> str:
    c = w.client
    r = c.post("/v1/kits", json={"kit_id": kit_id, "phone": "90 55 51 23", "plan": PLAN},
               headers=auth(w.keys["admin"]))
    assert r.status_code == 201, r.text
    r = c.post(f"/v1/kits/{kit_id}/unlock",
               json={"days": 2, "reason": f"called from {LOCAL}, +228 90 55 51 23"},
               headers=auth(w.keys["support"]))
    assert r.status_code == 200, r.text
    r = c.post("/v1/payments/intents", json={"kit_id": kit_id, "amount_fcfa": 700,
                                             "phone": LOCAL, "network": "TMONEY"},
               headers=auth(w.keys["finance"]))
    assert r.status_code == 201, r.text
    identifier: str = r.json()["identifier"]
    r = c.post("/v1/payments/paygate", json={"identifier": identifier, "phone_number": LOCAL,
                                             "amount": 700})
    assert r.status_code < 500, r.text
    return identifier


def test_no_phone_number_in_logs(world: World, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _customer_journey(world)
    world.client.get("/v1/kits/KIT-P1", headers=auth(world.keys["operator"]))
    assert len(caplog.records) >= 3, "the journey logged nothing: the test would prove nothing"
    digits = re.compile(r"\D")
    for rec in caplog.records:
        text = rec.getMessage() + " " + " ".join(
            f"{k}={v}" for k, v in rec.__dict__.items() if k not in logging.LogRecord(
                "", 0, "", 0, "", None, None).__dict__)
        assert LOCAL not in digits.sub("", text), (rec.name, text)


def test_erasure_after_closing_keeps_amounts_and_aggregates(world: World) -> None:
    identifier = _customer_journey(world)
    _customer_journey(world, "KIT-P2")  # another customer, same phone: stays until closed
    db, now = world.rt.db, world.clock.now()

    def totals() -> tuple[int, int, int]:
        with db.session() as s:
            return (s.scalar(select(func.sum(LedgerEntry.amount_fcfa))) or 0,
                    s.scalar(select(func.sum(LedgerEntry.days))) or 0,
                    s.scalar(select(func.count()).select_from(LedgerEntry)) or 0)

    before = totals()
    with pytest.raises(privacy.PrivacyError, match="open"):
        privacy.erase_account(db, "KIT-P1", now=now, actor=SYSTEM)
    privacy.close_account(db, "KIT-P1", now=now, actor=SYSTEM, reason="kit returned")
    assert privacy.erase_due(db, now=now + 10 * 86_400, retention_days=365, actor=SYSTEM) == []
    done = privacy.erase_due(db, now=now + 366 * 86_400, retention_days=365, actor=SYSTEM)
    assert [e.account_number for e in done] == ["KIT-P1"]
    assert totals() == before  # ledger amounts, days and entries untouched
    with db.session() as s:
        acct = s.scalars(select(Account).where(Account.account_number == "KIT-P1")).one()
        assert acct.customer_phone == "" and acct.personal_data_erased_at is not None
        assert acct.paid_total_fcfa > 0
        pay = s.scalars(select(Payment).where(Payment.provider_ref == identifier)).one()
        assert pay.phone is None and pay.requested_fcfa == 700
        dumped = json.dumps([[e.reason, e.before, e.after] for e in s.scalars(
            select(AuditEntry).where(AuditEntry.kit_id == "KIT-P1"))])
        assert LOCAL not in re.sub(r"[\s+.\-]", "", dumped)
        assert "[erased]" in dumped
        other = s.scalars(select(Account).where(Account.account_number == "KIT-P2")).one()
        assert other.customer_phone == PHONE  # an open account keeps its phone
    detail = world.client.get("/v1/kits/KIT-P1", headers=auth(world.keys["admin"])).json()
    assert LOCAL not in json.dumps(detail)
    assert detail["paid_total_fcfa"] > 0


def test_open_data_export_has_no_personal_data(world: World) -> None:
    for n in range(3):
        _customer_journey(world, f"KIT-O{n}")
    fields = {f.name for f in dataclasses.fields(opendata.HouseholdMonth)}
    assert not fields & {"kit_id", "phone", "customer_phone", "name", "account_number"}
    month = "2026-01"
    r = world.client.get(f"/v1/opendata/{month}.csv", headers=auth(world.keys["regulator"]))
    assert r.status_code == 200, r.text
    assert r.text.startswith("region,")
    assert "KIT-O" not in r.text and LOCAL not in r.text and "228" not in r.text


@pytest.mark.usefixtures("cli_in_english")
def test_admin_cli_keys_broker_and_erasure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("CIZO_DATABASE_URL", url)
    monkeypatch.setenv("CIZO_SECRET_KEY", generate_secret_key())
    assert cli.main(["keys", "create", "--name", "ops desk", "--role", "operator"]) == 0
    created = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert created["key"].startswith("cizo_") and created["role"] == "operator"
    assert cli.main(["keys", "create", "--name", "r", "--role", "regulator",
                     "--desco", "default"]) == 2
    capsys.readouterr()
    assert cli.main(["keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert "ops desk" in listed and created["key"] not in listed
    assert cli.main(["keys", "revoke", str(created["id"])]) == 0
    db = Database(url)
    with db.session() as s:
        assert s.get(ApiKey, created["id"]).revoked_at is not None  # type: ignore[union-attr]
    # the broker commands need the broker's admin (tests/test_security_broker.py runs them)
    monkeypatch.delenv("CIZO_BROKER_ADMIN_PASSWORD", raising=False)
    with pytest.raises(SystemExit, match="CIZO_BROKER_ADMIN_PASSWORD is not set"):
        cli.main(["broker", "sync"])
    assert cli.main(["erase-personal-data", "account", "NOPE"]) == 1
    assert cli.main(["erase-personal-data", "due", "--retention-days", "0"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"erased": []}
    db.dispose()
