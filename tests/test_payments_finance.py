"""Finance side: suspense links under maker-checker, statement reconciliation (API and
CLI), daily settlement that adds up to the ledger, and the ledger as the proof."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from sqlalchemy import text

from cizo_cli import main as cli
from control.ledger.models import AuditEntry
from control.runtime import Runtime
from payment_sim.paygate import PayGateHandle
from tests.api_support import Keys, TestClient
from tests.payments_support import (
    account,
    agent_payment,
    callback_body,
    count,
    entries,
    make_kit,
    payment_by_ref,
    post_webhook,
    second_keys,
    settle,
    start_intent,
    webhook_secret,
)

pytestmark = pytest.mark.payment_providers


def webhook(client: TestClient, secret: str, tx: str, amount: int = 700, **extra: object
            ) -> dict[str, object]:
    r = post_webhook(client, secret, agent_payment(tx, amount, **extra))
    assert r.status_code == 200, r.text
    out: dict[str, object] = r.json()
    return out


def test_suspense_link_is_proposed_by_support_and_approved_by_another_user(
    client: TestClient, rt: Runtime, keys: Keys
) -> None:
    make_kit(rt, "KIT-F1", phone="+22890000101")
    secret = webhook_secret(rt)
    pid = webhook(client, secret, "U1", reference="typo-kit-f")["payment_id"]
    listed = client.get("/v1/suspense", headers=Keys.auth(keys.support)).json()
    assert [p["payment_id"] for p in listed] == [pid]
    assert listed[0]["amount_fcfa"] == 700 and listed[0]["reference"] == "typo-kit-f"
    assert client.get("/v1/suspense", headers=Keys.auth(keys.operator)).status_code == 403
    r = client.post(f"/v1/suspense/{pid}/links", headers=Keys.auth(keys.finance),
                    json={"account": "KIT-F1", "reason": "customer called"})
    assert r.status_code == 403  # proposing is support's job
    r = client.post(f"/v1/suspense/{pid}/links", headers=Keys.auth(keys.support),
                    json={"account": "KIT-F1", "reason": "customer called, typo"})
    assert r.status_code == 201, r.text
    link = r.json()["link_id"]
    assert entries(rt) == 0  # a proposal moves no money
    r = client.post(f"/v1/suspense/links/{link}/approve", headers=Keys.auth(keys.support))
    assert r.status_code == 403
    # an admin who proposes cannot approve their own link either (maker-checker)
    pid2 = webhook(client, secret, "U2", reference="nobody")["payment_id"]
    r = client.post(f"/v1/suspense/{pid2}/links", headers=Keys.auth(keys.admin),
                    json={"account": "KIT-F1", "reason": "admin proposes"})
    r = client.post(f"/v1/suspense/links/{r.json()['link_id']}/approve",
                    headers=Keys.auth(keys.admin))
    assert r.status_code == 403 and "maker-checker" in r.json()["detail"]
    r = client.post(f"/v1/suspense/links/{link}/approve", headers=Keys.auth(keys.finance),
                    json={"reason": "checked the agent's receipt"})
    assert r.status_code == 200 and r.json()["credited"] is True and r.json()["kit_id"] == "KIT-F1"
    assert account(rt, "KIT-F1").paid_total_fcfa == 2700
    assert payment_by_ref(rt, "agent", "default:U1").matched_by == "link"
    again = client.post(f"/v1/suspense/links/{link}/approve", headers=Keys.auth(keys.finance))
    assert again.status_code == 409 and entries(rt) == 1
    for action in ("suspense.propose", "suspense.approved", "payment.credit"):
        assert count(rt, AuditEntry, AuditEntry.action == action) >= 1
    assert client.get("/v1/suspense", headers=Keys.auth(keys.finance)).json()[0][
        "payment_id"] == pid2


def _statement(rt: Runtime, paygate_sim: PayGateHandle, client: TestClient,
               keys: Keys) -> tuple[str, str]:
    make_kit(rt, "KIT-F2", phone="+22890000201")
    ident = start_intent(client, keys, "KIT-F2")
    view = settle(paygate_sim, ident)
    assert client.post("/v1/payments/paygate", json=callback_body(view)).json()["credited"]
    ident2 = start_intent(client, keys, "KIT-F2", amount=300)
    view2 = settle(paygate_sim, ident2)
    assert client.post("/v1/payments/paygate", json=callback_body(view2)).json()["credited"]
    day = view["datetime"][:10]
    csv = (f"identifier,date,amount,phone,reference\n"
           f"{ident},{view['datetime']},700,,\n"          # matches
           f"{ident2},{day},3000,,\n"                     # amount mismatch
           f"MISSED-1,{day},500,,kit f2\n"                # we never got the callback
           f"BAD,{day},-5,,\n")                           # unreadable line
    return csv, day


def test_statement_import_reports_and_proposals_need_a_second_finance_user(
    client: TestClient, rt: Runtime, keys: Keys, paygate_sim: PayGateHandle
) -> None:
    csv, day = _statement(rt, paygate_sim, client, keys)
    extra = second_keys(rt)
    r = client.post("/v1/reconciliation/paygate/statements", content=csv,
                    headers={**Keys.auth(keys.finance), "content-type": "application/json"})
    assert r.status_code == 415
    r = client.post("/v1/reconciliation/paygate/statements", content=csv,
                    headers={**Keys.auth(keys.finance), "content-type": "text/csv"})
    assert r.status_code == 201, r.text
    rep = r.json()["report"]
    d = rep["days"][day]
    assert (d["statement_count"], d["matched"]) == (3, 2)
    assert [m["transaction_id"] for m in d["missing_in_ours"]] == ["MISSED-1"]
    assert d["mismatches"][0]["statement_fcfa"] == 3000 and d["mismatches"][0]["ours_fcfa"] == 300
    assert d["missing_in_statement"] == [] and len(rep["errors"]) == 1
    prop = d["missing_in_ours"][0]["proposal_id"]
    assert entries(rt) == 2  # the upload moved no money
    r = client.post(f"/v1/reconciliation/proposals/{prop}/approve",
                    headers=Keys.auth(keys.finance))
    assert r.status_code == 403  # the importer cannot approve
    r = client.post(f"/v1/reconciliation/proposals/{prop}/approve",
                    headers=Keys.auth(extra["finance2"]))
    assert r.status_code == 200 and r.json()["outcome"] == "credited", r.text
    assert account(rt, "KIT-F2").paid_total_fcfa == 3500
    assert payment_by_ref(rt, "paygate", "MISSED-1").matched_by == "reference"
    # importing the same statement again proposes nothing new
    r = client.post("/v1/reconciliation/paygate/statements", content=csv,
                    headers={**Keys.auth(keys.finance), "content-type": "text/csv"})
    assert r.json()["report"]["proposals"] == 0
    assert r.json()["report"]["days"][day]["matched"] == 3
    assert count(rt, AuditEntry, AuditEntry.action == "reconcile.approved") == 1


def test_reconcile_and_settlement_from_the_cli(
    client: TestClient, rt: Runtime, keys: Keys, paygate_sim: PayGateHandle,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        _cli_flow(client, rt, keys, paygate_sim, tmp_path, monkeypatch, capsys)
    finally:  # cizo_cli.main configures logging onto capsys's stream: put it back
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def _cli_flow(
    client: TestClient, rt: Runtime, keys: Keys, paygate_sim: PayGateHandle,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    csv, day = _statement(rt, paygate_sim, client, keys)
    f = tmp_path / "paygate-statement.csv"
    f.write_text(csv)
    monkeypatch.setenv("CIZO_DATABASE_URL", rt.settings.database_url)
    assert rt.settings.secret_key is not None
    monkeypatch.setenv("CIZO_SECRET_KEY", rt.settings.secret_key.get_secret_value())
    assert cli.main(["reconcile", "import", str(f), "--provider", "paygate",
                     "--user", "ama"]) == 0
    out = json.loads(capsys.readouterr().out)
    prop = out["days"][day]["missing_in_ours"][0]["proposal_id"]
    assert cli.main(["reconcile", "approve", str(prop), "--user", "ama"]) == 1
    capsys.readouterr()
    assert cli.main(["reconcile", "approve", str(prop), "--user", "kofi"]) == 0
    assert json.loads(capsys.readouterr().out)["outcome"] == "credited"
    assert cli.main(["settlement", "report", "--from", day]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["agrees_with_ledger"] is True
    assert rep["totals"]["credited_fcfa"] == 1500 and rep["totals"]["net_fcfa"] == 1500
    assert cli.main(["settlement", "check-ledger"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_settlement_adds_up_to_the_ledger_to_the_franc(
    client: TestClient, rt: Runtime, keys: Keys
) -> None:
    make_kit(rt, "KIT-F3", phone="+22890000301")
    make_kit(rt, "KIT-F4", phone="+22890000302", desco_id="north")
    secret = webhook_secret(rt)
    webhook(client, secret, "S1", 700, reference="KIT-F3")
    webhook(client, secret, "S2", 1_234, reference="KIT-F3")
    webhook(client, secret, "S3", 999, reference="nobody")        # suspense
    webhook(client, secret, "S4", 555, reference="nobody-either")  # suspense, then voided
    webhook(client, secret, "S4-R", 555, type="reversal", reverses="S4")
    webhook(client, secret, "S2-R", 234, type="reversal", reverses="S2")
    r = client.post(f"/v1/payments/{'default:S1'}/refunds", headers=Keys.auth(keys.finance),
                    json={"amount_fcfa": 100, "reason": "kit returned early", "refund_id": "RF1"})
    assert r.status_code == 200 and r.json()["outcome"] == "reversed", r.text
    r = client.post(f"/v1/payments/{'default:S1'}/refunds", headers=Keys.auth(keys.finance),
                    json={"amount_fcfa": 100, "reason": "kit returned early", "refund_id": "RF1"})
    assert r.json()["outcome"] == "duplicate"  # same refund id: recorded once
    rep = client.get("/v1/settlement", headers=Keys.auth(keys.finance)).json()
    assert rep["agrees_with_ledger"] is True, rep
    row = rep["rows"][0]
    assert (row["desco_id"], row["provider"]) == ("default", "agent")
    assert row["collected_fcfa"] == 700 + 1_234 + 999 + 555
    assert row["credited_fcfa"] == 1_934 and row["suspense_fcfa"] == 999
    assert row["voided_fcfa"] == 555 and row["reversed_fcfa"] == 334
    assert row["net_fcfa"] == 1_600 == rep["totals"]["ledger_net_fcfa"]
    assert account(rt, "KIT-F3").paid_total_fcfa == 2000 + 1_600
    north = client.get("/v1/settlement", headers=Keys.auth(keys.north_admin)).json()
    assert north["rows"] == []  # tenancy: another DESCO sees none of it
    check = client.get("/v1/ledger/check", headers=Keys.auth(keys.finance)).json()
    assert check == {"ok": True, "problems": []}


def test_the_ledger_is_append_only_and_the_check_catches_tampering(
    client: TestClient, rt: Runtime, keys: Keys
) -> None:
    make_kit(rt, "KIT-F5", phone="+22890000501")
    secret = webhook_secret(rt)
    webhook(client, secret, "T1", 700, reference="KIT-F5")
    for sql in ("UPDATE ledger_entries SET amount_fcfa = 7000",
                "DELETE FROM ledger_entries"):
        with pytest.raises(Exception, match="append-only"), rt.db.session() as s:
            s.execute(text(sql))
    assert entries(rt) == 1
    with rt.db.session() as s:  # someone edits the running total behind the ledger's back
        s.execute(text("UPDATE accounts SET paid_total_fcfa = paid_total_fcfa + 5000"))
    check = client.get("/v1/ledger/check", headers=Keys.auth(keys.finance)).json()
    assert check["ok"] is False and "ledger gives" in check["problems"][0]["problem"]
