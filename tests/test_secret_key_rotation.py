"""Rotating CIZO_SECRET_KEY: every stored secret re-encrypted with the new key, unchanged
in clear, all or nothing, and the command an operator runs (docs/deploy.md)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from cizo.production import development_secret_key
from cizo_cli.main import main
from control.ledger.models import AuditEntry, Kit, WebhookSecret
from control.ledger.secrets import SecretBox, generate_secret_key
from control.runtime import Runtime
from control.security.secret_key import encrypted_columns, rotate_secret_key
from tests.api_support import Keys, provision


def stored(rt: Runtime) -> dict[str, str]:
    with rt.db.session() as s:
        kits = list(s.scalars(select(Kit)))
        rows = {f"kit:{k.id}": k.secret_enc for k in kits}
        rows |= {f"kit-mqtt:{k.id}": k.mqtt_password_enc for k in kits
                 if k.mqtt_password_enc is not None}
        rows |= {f"hook:{w.desco_id}": w.secret_enc for w in s.scalars(select(WebhookSecret))}
    return rows


def clear(rows: dict[str, str], key: str) -> dict[str, str]:
    box = SecretBox(key)
    return {name: box.decrypt(token) for name, token in rows.items()}


@pytest.fixture
def secrets_at_rest(client: TestClient, keys: Keys, rt: Runtime) -> dict[str, str]:
    """Two kits' command secrets and broker passwords, and a webhook secret, in clear."""
    for kit_id in ("ROT-1", "ROT-2"):
        provision(client, keys.admin, kit_id)
    resp = client.post("/v1/descos/north/webhook-secret", headers=Keys.auth(keys.admin))
    assert resp.status_code in (200, 201), resp.text
    return clear(stored(rt), rt.settings.require_secret_key())


def test_every_secret_is_re_encrypted_and_unchanged_in_clear(
    rt: Runtime, secrets_at_rest: dict[str, str]
) -> None:
    from control.cli.admin import CLI_ACTOR

    old, new = rt.settings.require_secret_key(), generate_secret_key()
    done = rotate_secret_key(rt.db, current_key=old, new_key=new, actor=CLI_ACTOR, now=1.0)
    assert done.rewritten == {"kits.secret_enc": 2, "kits.mqtt_password_enc": 2,
                              "webhook_secrets.secret_enc": 1}
    assert done.already_new == 0
    rows = stored(rt)
    assert clear(rows, new) == secrets_at_rest
    with pytest.raises(ValueError):
        clear(rows, old)
    with rt.db.session() as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "secret_key.rotate")
                          ).one()
        assert entry.actor == CLI_ACTOR.name
    # again (say, after an interruption): nothing left to do, nothing broken
    again = rotate_secret_key(rt.db, current_key=old, new_key=new, actor=CLI_ACTOR, now=2.0)
    assert (again.rewritten, again.already_new) == ({}, 5)
    assert clear(stored(rt), new) == secrets_at_rest


def test_a_row_neither_key_opens_stops_the_rotation_and_changes_nothing(
    rt: Runtime, secrets_at_rest: dict[str, str]
) -> None:
    from control.cli.admin import CLI_ACTOR

    with rt.db.session() as s:
        s.get_one(Kit, "ROT-2").secret_enc = SecretBox(generate_secret_key()).encrypt("x")
    before = stored(rt)
    with pytest.raises(ValueError, match=r"kits.secret_enc of \('ROT-2',\)"):
        rotate_secret_key(rt.db, current_key=rt.settings.require_secret_key(),
                          new_key=generate_secret_key(), actor=CLI_ACTOR, now=1.0)
    assert stored(rt) == before


@pytest.mark.usefixtures("cli_in_english")
def test_the_cli_takes_the_new_key_from_the_environment(
    rt: Runtime, secrets_at_rest: dict[str, str], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CIZO_DATABASE_URL", rt.settings.database_url)
    monkeypatch.setenv("CIZO_SECRET_KEY", rt.settings.require_secret_key())
    monkeypatch.delenv("CIZO_NEW_SECRET_KEY", raising=False)
    with pytest.raises(SystemExit, match="set CIZO_NEW_SECRET_KEY"):
        main(["secret-key", "rotate"])
    monkeypatch.setenv("CIZO_ENV", "production")
    monkeypatch.setenv("CIZO_NEW_SECRET_KEY", development_secret_key())
    with pytest.raises(SystemExit, match="CIZO_NEW_SECRET_KEY is the development key"):
        main(["secret-key", "rotate"])
    assert stored(rt) and clear(stored(rt), rt.settings.require_secret_key())

    new = generate_secret_key()
    monkeypatch.setenv("CIZO_NEW_SECRET_KEY", new)
    assert main(["secret-key", "rotate"]) == 0
    out = capsys.readouterr().out
    assert ("re-encrypted 5 secret(s) (2 in kits.mqtt_password_enc, 2 in kits.secret_enc, "
            "1 in webhook_secrets.secret_enc)") in out
    assert clear(stored(rt), new) == secrets_at_rest


def test_every_encrypted_column_is_found_by_its_name() -> None:
    """Columns holding SecretBox ciphertext end in ``_enc``; the rotation finds them by that
    name, so none is forgotten when one is added."""
    found = {(model.__tablename__, name)
             for model, names in encrypted_columns().items() for name in names}
    assert {("kits", "secret_enc"), ("webhook_secrets", "secret_enc")} <= found
    for model, names in encrypted_columns().items():
        for name in names:
            column = model.__table__.columns[name]
            assert str(column.type) == "TEXT", (model, name)  # Fernet tokens are long
