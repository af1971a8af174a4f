"""Customers hear about it: French receipts and reminders through the notifier
(file by default, a generic HTTP SMS gateway tested against a local recording endpoint),
templates a DESCO can override, at most one reminder a day, none for owned kits."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from control.gateways import sms
from control.ledger.accounts import SYSTEM
from control.ledger.models import Account
from control.payments import receipts
from control.payments.receive import Incoming, receive
from control.runtime import Runtime
from tests.api_support import DAY, Keys, TestClient, provision


class Gateway:
    """A local SMS gateway that records what it is sent (and can be told to fail)."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, Any], str | None]] = []
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.received.append((json.loads(body), self.headers.get("Authorization")))
                self.send_response(outer.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                return

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/sms"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    g = Gateway()
    yield g
    g.close()


@pytest.fixture
def hooks(rt: Runtime) -> None:
    rt.on_credit(receipts.on_credit)


def test_http_gateway_adapter_posts_the_message_and_raises_on_refusal(
    rt: Runtime, gateway: Gateway
) -> None:
    settings = rt.settings.model_copy(update={
        "notify_backend": "http", "sms_gateway_url": gateway.url,
        "sms_gateway_token": SecretStr("gw-token")})
    notifier = sms.notifier_for(settings)
    msg = sms.Message("receipt", "+22890123456", "CIZO : paiement reçu", "K-1", "default",
                         "42")
    notifier.send(msg)
    body, auth = gateway.received[0]
    assert body == {"to": "+22890123456", "text": "CIZO : paiement reçu", "kind": "receipt",
                    "ref": "K-1:receipt:42"}
    assert auth == "Bearer gw-token"
    gateway.status = 503
    with pytest.raises(RuntimeError, match="503"):
        notifier.send(msg)
    rt.notifier = notifier
    assert receipts.send(rt, msg) is False  # logged, not raised: money is never undone


def test_receipt_in_french_for_each_credited_payment(
    client: TestClient, rt: Runtime, keys: Keys, tmp_path: Path, hooks: None
) -> None:
    out = tmp_path / "sms.jsonl"
    rt.notifier = sms.FileNotifier(out)
    provision(client, keys.admin, "NT-1")
    receipt = receive(rt, Incoming(
        provider="test", provider_ref="r-1", desco_id=None, amount_fcfa=1500,
        reference="NT-1"), actor=SYSTEM)
    assert receipt.credited
    [line] = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    with rt.db.session() as s:
        until = s.query(Account).filter(Account.kit_id == "NT-1").one().credit_until
    assert line["kind"] == "receipt" and line["to"] == "+22890123456"
    assert line["text"] == (
        f"CIZO : paiement de 1500 FCFA reçu pour le kit NT-1. 15 jours ajoutés. "
        f"Crédit valable jusqu'au {receipts.french_time(until)}.")
    # a duplicate delivery of the same payment sends nothing more
    receive(rt, Incoming(provider="test", provider_ref="r-1", desco_id=None,
                                       amount_fcfa=1500, reference="NT-1"), actor=SYSTEM)
    assert len(out.read_text(encoding="utf-8").splitlines()) == 1


def test_reminders_once_a_day_before_credit_ends_none_for_owned_and_desco_wording(
    client: TestClient, rt: Runtime, keys: Keys, tmp_path: Path
) -> None:
    out = tmp_path / "sms.jsonl"
    templates = tmp_path / "templates"
    (templates / "north" / "fr").mkdir(parents=True)
    (templates / "north" / "fr" / "reminder.txt").write_text(
        "NORD : kit ${kit_id}, fin le ${credit_end}.", encoding="utf-8")
    rt.settings = rt.settings.model_copy(update={"notify_templates_dir": templates,
                                                 "reminder_lead_s": 2 * DAY})
    rt.notifier = sms.FileNotifier(out)
    for kid in ("RM-1", "RM-2", "RM-3", "RM-4"):
        provision(client, keys.admin, kid)
    provision(client, keys.north_admin, "RM-N")
    now = int(rt.clock.now())
    with rt.db.session() as s:
        ends = {"RM-1": now + DAY, "RM-2": now + 5 * DAY, "RM-3": now + DAY, "RM-4": now - 10,
                "RM-N": now + 3600}
        for acct in s.query(Account):
            acct.credit_until = ends[acct.kit_id]
            acct.owned = acct.kit_id == "RM-3"
    assert receipts.send_reminders(rt) == 2  # RM-1 and RM-N: within 2 days, not owned
    assert receipts.send_reminders(rt) == 0  # at most one a day
    rt.clock.advance(DAY / 2)  # type: ignore[attr-defined]
    assert receipts.send_reminders(rt) == 0
    rt.clock.advance(DAY / 2 + 5)  # type: ignore[attr-defined]
    assert receipts.send_reminders(rt) == 0  # RM-1 ended meanwhile, RM-N too
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    by_kit = {m["kit_id"]: m["text"] for m in lines}
    assert set(by_kit) == {"RM-1", "RM-N"}
    assert by_kit["RM-1"].startswith("CIZO : le crédit de votre kit RM-1 se termine le ")
    assert "Payez 100 FCFA par jour" in by_kit["RM-1"]
    assert by_kit["RM-N"] == f"NORD : kit RM-N, fin le {receipts.french_time(now + 3600)}."
