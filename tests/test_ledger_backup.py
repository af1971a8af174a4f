"""``cizo backup`` and ``cizo restore`` (SQLite and PostgreSQL): a ledger with payments,
credits, commands and audit entries, backed up while its runtime is open, restored into a
fresh database, holds every row again, and every balance re-derives from its entries;
refusals say what to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from cizo.settings import sqlalchemy_url
from cizo_cli.main import main
from control.ledger.check import check_ledger
from control.ledger.db import Database
from control.ledger.models import AuditEntry, Base, Command, LedgerEntry, Payment
from control.runtime import Runtime
from tests.api_support import Keys, TestClient
from tests.payments_support import agent_payment, make_kit, post_webhook, webhook_secret

pytestmark = pytest.mark.payment_providers


def all_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    engine = create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as conn:
            rows = {t.name: sorted(map(tuple, conn.execute(select(t)).all()), key=repr)
                    for t in Base.metadata.sorted_tables}
            rows["alembic_version"] = sorted(map(tuple, conn.execute(
                text("SELECT version_num FROM alembic_version")).all()))
            return rows
    finally:
        engine.dispose()


def fill_ledger(rt: Runtime, client: TestClient, keys: Keys) -> None:
    make_kit(rt, "KIT-B1", phone="+22890000001")
    make_kit(rt, "KIT-B2", phone="+22890000002")
    secret = webhook_secret(rt)
    for tx, ref in (("T1", "KIT-B1"), ("T2", "KIT-B2"), ("T3", "NOBODY")):
        r = post_webhook(client, secret, agent_payment(tx, reference=ref, phone="+22899999999"))
        assert r.status_code == 200, r.text
    r = client.post("/v1/kits/KIT-B2/unlock", json={"days": 2, "reason": "panne réseau"},
                    headers=Keys.auth(keys.support))
    assert r.status_code == 200, r.text


@pytest.mark.usefixtures("cli_in_english")
def test_backup_restores_every_row_and_balance(
    rt: Runtime, client: TestClient, keys: Keys, database_url: str,
    another_database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    fill_ledger(rt, client, keys)
    before = all_rows(database_url)
    for model, at_least in ((Payment, 3), (LedgerEntry, 2), (Command, 3), (AuditEntry, 4)):
        assert len(before[model.__tablename__]) >= at_least, model

    out = tmp_path / "ledger.backup"
    assert main(["backup", "--database-url", database_url, str(out)]) == 0
    said = capsys.readouterr()
    assert "backup written" in said.out and said.err.strip()  # progress on stderr
    assert not list(tmp_path.glob(".*.partial"))

    assert main(["restore", "--database-url", another_database_url, str(out)]) == 0
    assert all_rows(another_database_url) == before
    restored = Database(another_database_url)
    try:
        with restored.session() as s:
            assert check_ledger(s) == []  # every balance re-derived from its entries
    finally:
        restored.dispose()

    # a target that holds a ledger is not overwritten by accident
    capsys.readouterr()
    assert main(["restore", "--database-url", another_database_url, str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["restore", "--force", "--database-url", another_database_url,
                 str(out)]) == 0
    assert all_rows(another_database_url) == before
    if database_url.startswith("postgresql"):
        # a table the backup does not hold would survive a forced restore: refused
        engine = create_engine(sqlalchemy_url(another_database_url))
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE newer_feature (id integer)"))
        engine.dispose()
        capsys.readouterr()
        assert main(["restore", "--force", "--database-url", another_database_url,
                     str(out)]) == 1
        assert "public.newer_feature" in capsys.readouterr().err


def test_restore_and_backup_refusals_say_what_to_do(
    database_url: str, another_database_url: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    not_a_backup = tmp_path / "notes.txt"
    not_a_backup.write_text("hello")
    assert main(["restore", "--database-url", another_database_url, str(not_a_backup)]) == 1
    assert "neither a pg_dump" in capsys.readouterr().err
    assert main(["backup", "--database-url", database_url,
                 str(tmp_path / "missing-dir" / "x.backup")]) == 1
    assert "does not exist" in capsys.readouterr().err
    if database_url.startswith("sqlite"):
        assert main(["backup", "--database-url", "sqlite:///" + str(tmp_path / "none.db"),
                     str(tmp_path / "x.backup")]) == 1
        assert "no such SQLite database" in capsys.readouterr().err
        return
    monkeypatch.setenv("PATH", str(tmp_path))  # no PostgreSQL client tools
    assert main(["backup", "--database-url", database_url, str(tmp_path / "x.backup")]) == 1
    assert "pg_dump not found" in capsys.readouterr().err
