"""Helpers for the payment tests: kits provisioned straight through the ledger, what the
ledger holds, payments started and settled at the simulators, signed DESCO webhooks,
extra keys for maker-checker, the same request sent many times at once.

The runtime they work on is the ``rt`` fixture (tests/fixtures/runtime.py; payments
modules mark themselves ``payment_providers``); no tests live in this module.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
from sqlalchemy import func, select

from control.ledger import accounts as ledger
from control.ledger import credit
from control.ledger.accounts import SYSTEM
from control.ledger.models import Account, AuditEntry, LedgerEntry, Payment
from control.payments.providers import webhook_secrets, webhook_signature
from control.runtime import Runtime
from control.security.api_keys import create_api_key, ensure_admin_key
from payment_sim.momo import MoMoHandle
from payment_sim.paygate import PayGateHandle
from tests import api_support
from tests.api_support import Keys, TestClient

MOMO_SUB_KEY = "momo-subscription-key-SECRET-1"
MOMO_API_KEY = "momo-api-key-SECRET-2"
MOMO_USER = "3f2a6c1e-0000-4000-8000-000000000001"
PLAN = credit.Plan(**api_support.PLAN)
WEBHOOK_URL = "/v1/payments/webhook/default"


def start_intent(client: TestClient, keys: Keys, kit_id: str, amount: int = 700) -> str:
    resp = client.post("/v1/payments/intents", headers=Keys.auth(keys.finance), json={
        "kit_id": kit_id, "amount_fcfa": amount, "phone": "+228 90 12 34 56",
        "network": "TMONEY"})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["status"] == "pending" and body["tx_reference"]
    identifier: str = body["identifier"]
    assert identifier.startswith(f"CIZO-{kit_id}-")
    return identifier


def settle(sim: PayGateHandle, identifier: str, outcome: str = "approve") -> dict[str, Any]:
    resp = httpx.post(f"{sim.url}/_sim/settle", json={"identifier": identifier,
                                                      "outcome": outcome})
    resp.raise_for_status()
    view: dict[str, Any] = resp.json()
    return view


def callback_body(view: dict[str, Any]) -> dict[str, Any]:
    return {k: view[k] for k in ("tx_reference", "identifier", "payment_reference", "amount",
                                 "datetime", "payment_method", "phone_number")}


def make_kit(rt: Runtime, kit_id: str, *, phone: str = "+22890123456",
             desco_id: str = "default") -> int:
    """Provision straight through the ledger (faster than the API); returns the account id."""
    with rt.db.session() as s:
        ledger.provision_kit(s, kit_id=kit_id, desco_id=desco_id, phone_e164=phone, plan=PLAN,
                             box=rt.box, now=rt.clock.now(), actor=SYSTEM)
        acct = ledger.account_for_kit(s, kit_id)
        assert acct is not None
        return acct.id


def account(rt: Runtime, kit_id: str) -> Account:
    with rt.db.session() as s:
        acct = s.scalars(select(Account).where(Account.kit_id == kit_id)).one()
        s.expunge(acct)
    return acct


def count(rt: Runtime, model: Any, *where: Any) -> int:
    with rt.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def entries(rt: Runtime) -> int:
    return count(rt, LedgerEntry, LedgerEntry.kind.in_(("payment", "reversal")))


def payment_by_ref(rt: Runtime, provider: str, ref: str) -> Payment:
    with rt.db.session() as s:
        p = s.scalars(select(Payment).where(Payment.provider == provider,
                                            Payment.provider_ref == ref)).one()
        s.expunge(p)
    return p


def audits(rt: Runtime, action: str) -> int:
    return count(rt, AuditEntry, AuditEntry.action == action)


def webhook_secret(rt: Runtime, desco_id: str = "default") -> str:
    return webhook_secrets.rotate_secret(rt, desco_id, actor=SYSTEM)


def signed(secret: str, body: dict[str, Any] | bytes, *, t: int | None = None
           ) -> tuple[bytes, dict[str, str]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    ts = int(time.time()) if t is None else t
    return raw, {"content-type": "application/json",
                 webhook_signature.HEADER: webhook_signature.sign_header(secret, ts, raw)}


def agent_payment(tx: str, amount: Any = 700, **extra: Any) -> dict[str, Any]:
    """A DESCO agent's webhook body (``amount`` as sent: the bad-input tests vary its type)."""
    return {"transaction_id": tx, "amount": amount, "currency": "XOF", **extra}


def post_webhook(client: TestClient, secret: str, data: dict[str, Any] | bytes,
                 t: int | None = None, url: str = WEBHOOK_URL) -> httpx.Response:
    raw, headers = signed(secret, data, t=t)
    resp: httpx.Response = client.post(url, content=raw, headers=headers)
    return resp


def second_keys(rt: Runtime) -> dict[str, str]:
    ensure_admin_key(rt)
    return {
        "finance2": create_api_key(rt, name="finance-kofi", role="finance")[1],
        "support2": create_api_key(rt, name="support-efua", role="support")[1],
    }


def sim_settle(handle: MoMoHandle, reference_id: str, outcome: str = "approve",
               reason: str | None = None) -> dict[str, Any]:
    resp = httpx.post(f"{handle.url}/_sim/settle", json={
        "reference_id": reference_id, "outcome": outcome, "reason": reason})
    resp.raise_for_status()
    out: dict[str, Any] = resp.json()
    return out


def post_at_once(base_url: str, path: str, n: int, **request: Any
                 ) -> list[tuple[int, dict[str, Any]]]:
    """``n`` identical POSTs, each on its own connection, released together (a barrier) so
    they race inside the server; returns each answer's status and JSON body."""
    barrier = threading.Barrier(n)
    results: list[tuple[int, dict[str, Any]]] = []
    lock = threading.Lock()

    def deliver() -> None:
        with httpx.Client(base_url=base_url, timeout=60) as c:
            barrier.wait()
            r = c.post(path, **request)
            with lock:
                results.append((r.status_code, r.json()))

    threads = [threading.Thread(target=deliver) for _ in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    return results
