"""``cizo support ...`` against the real API over HTTP (same roles and audit)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from cizo import services
from cizo_cli import main as cli
from control.api import create_app
from control.cli.support import parse_until
from control.ledger.models import Account, AuditEntry, Kit
from control.runtime import Runtime
from control.security.api_keys import create_api_key
from tests.api_support import DAY, Keys, TestClient, provision
from tests.support import ServerThread


@pytest.fixture
def server(rt: Runtime) -> Iterator[str]:
    with ServerThread(create_app(rt), services.free_port()) as srv:
        yield srv.url


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_support_cli_unlocks_locks_and_sets_credit_with_the_staff_key(
    client: TestClient, rt: Runtime, keys: Keys, server: str,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    provision(client, keys.admin, "CLI-1")
    base = ("support", "--url", server, "--api-key", keys.support)
    code, out, _ = run(capsys, *base, "unlock", "CLI-1", "--days", "3",
                       "--reason", "called in: storm")
    assert code == 0 and json.loads(out)["days"] == 3
    code, _, err = run(capsys, *base, "unlock", "CLI-1", "--days", "10", "--reason", "big")
    assert code == 1 and "HTTP 403" in err and "admin" in err
    code, out, _ = run(capsys, *base, "set-credit-until", "CLI-1", "--until",
                       "2099-01-01T00:00Z", "--reason", "x")
    assert code == 1  # far beyond 7 days: admin only
    code, out, _ = run(capsys, *base, "lock", "CLI-1", "--reason", "customer moved")
    assert code == 0 and json.loads(out)["action"] == "lock"
    # the key can also come from the environment
    monkeypatch.setenv("CIZO_SUPPORT_API_KEY", keys.operator)
    code, _, err = run(capsys, "support", "--url", server, "lock", "CLI-1", "--reason", "x")
    assert code == 1 and "HTTP 403" in err
    code, out, _ = run(capsys, "support", "--url", server, "show", "CLI-1")
    assert code == 0 and json.loads(out)["commands"]["items"][0]["action"] == "lock"
    with rt.db.session() as s:
        acts = [(a.action, a.actor, a.reason) for a in s.query(AuditEntry)
                .filter(AuditEntry.kit_id == "CLI-1").order_by(AuditEntry.id)]
        assert acts[-2:] == [("kit.unlock", "support-ama", "called in: storm"),
                             ("kit.lock", "support-ama", "customer moved")]
        acct = s.query(Account).filter(Account.kit_id == "CLI-1").one()
        assert acct.credit_until is not None and acct.credit_until <= rt.clock.now()
    _, admin2 = create_api_key(rt, name="admin-cli", role="admin")
    code, out, _ = run(capsys, "support", "--url", server, "--api-key", admin2,
                       "set-credit-until", "CLI-1", "--until",
                       str(int(rt.clock.now()) + 30 * DAY), "--reason", "warranty")
    assert code == 0 and json.loads(out)["after"]["credit_until"] > rt.clock.now()


def test_parse_until_accepts_unix_and_iso() -> None:
    assert parse_until("1767225600") == 1767225600
    assert parse_until("2026-01-01T00:00Z") == 1767225600
    assert parse_until("2026-01-01T01:00+01:00") == 1767225600
    with pytest.raises(ValueError):
        parse_until("tomorrow")


def test_kits_cli_provisions_an_openpaygo_metrics_device(
    rt: Runtime, keys: Keys, server: str, capsys: pytest.CaptureFixture[str],
) -> None:
    base = ("kits", "provision", "--url", server, "--api-key", keys.admin)
    plan = ("--phone", "90 12 34 56", "--deposit", "2000", "--daily-rate", "100",
            "--total-price", "50000")
    code, out, _ = run(capsys, *base, "OPM-CLI-1", *plan, "--kind", "openpaygo_metrics")
    creds = json.loads(out)
    assert code == 0 and creds["kind"] == "openpaygo_metrics"
    assert len(creds["openpaygo_key"]) == 32 and creds["command_secret"]
    code, out, _ = run(capsys, *base, "CLI-MQTT-1", *plan)
    assert code == 0 and json.loads(out)["openpaygo_key"] is None
    code, _, err = run(capsys, "kits", "provision", "--url", server, "--api-key",
                       keys.support, "OPM-CLI-2", *plan)
    assert code == 1 and "HTTP 403" in err
    with rt.db.session() as s:
        kinds = dict(s.query(Kit.id, Kit.kind).filter(Kit.id.in_(["OPM-CLI-1", "CLI-MQTT-1"])))
        assert kinds == {"OPM-CLI-1": "openpaygo_metrics", "CLI-MQTT-1": "mqtt"}
        assert s.get(Kit, "OPM-CLI-1").keypad_only  # type: ignore[union-attr]
