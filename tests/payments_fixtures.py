"""Fixtures for the payment tests: a Runtime wired to both provider simulators
(PayGate and MTN MoMo, real HTTP on free ports) over a real ledger database, extra keys
for maker-checker, and helpers to sign webhooks and provision kits.

Test modules import the ``*_fixture`` functions they use (pytest finds them by name=).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from cizo.clock import ManualClock
from cizo.settings import Settings
from control.ledger import accounts as ledger
from control.ledger import credit
from control.ledger.accounts import SYSTEM
from control.ledger.db import migrate
from control.ledger.models import Account, AuditEntry, Desco, LedgerEntry, Payment
from control.ledger.secrets import generate_secret_key
from control.payments.providers import webhook_secrets, webhook_signature
from control.runtime import Runtime
from control.security.api_keys import create_api_key, ensure_admin_key
from payment_sim.momo import MoMoHandle, MoMoSimConfig
from payment_sim.momo import run_in_thread as run_momo
from payment_sim.paygate import PayGateHandle
from tests.test_api_helpers import ADMIN_KEY, PAYGATE_TOKEN, RecordingPublisher

MOMO_SUB_KEY = "momo-subscription-key-SECRET-1"
MOMO_API_KEY = "momo-api-key-SECRET-2"
MOMO_USER = "3f2a6c1e-0000-4000-8000-000000000001"
PLAN = credit.Plan(deposit_fcfa=2000, daily_rate_fcfa=100, total_price_fcfa=50_000)


@pytest.fixture(name="momo_sim")
def momo_sim_fixture() -> Iterator[MoMoHandle]:
    """The MoMo simulator; its customers never answer: tests settle by hand."""
    handle = run_momo(MoMoSimConfig(subscription_key=MOMO_SUB_KEY, api_user=MOMO_USER,
                                    api_key=MOMO_API_KEY, outcome="never",
                                    retry_backoff_s=0.05))
    yield handle
    if handle.thread.is_alive():
        handle.stop()


@pytest.fixture(name="rt")
def payments_rt_fixture(database_url: str, paygate_sim: PayGateHandle,
                        momo_sim: MoMoHandle) -> Iterator[Runtime]:
    migrate(database_url)
    settings = Settings(
        database_url=database_url, secret_key=generate_secret_key(),
        admin_api_key=ADMIN_KEY, paygate_url=paygate_sim.url,
        paygate_auth_token=PAYGATE_TOKEN, paygate_timeout_s=1.0,
        momo_url=momo_sim.url, momo_subscription_key=MOMO_SUB_KEY, momo_api_user=MOMO_USER,
        momo_api_key=MOMO_API_KEY, momo_timeout_s=1.0, payment_poll_interval_s=5.0,
        influx_url="http://127.0.0.1:9",
        public_base_url="http://127.0.0.1:9",  # callbacks go nowhere unless a test serves
    )
    runtime = Runtime.build(settings, clock=ManualClock())
    runtime.service.publisher = RecordingPublisher()
    with runtime.db.session() as s:
        s.add(Desco(id="north", name="North DESCO", created_at=0.0))
    yield runtime
    runtime.paygate.close()
    if runtime.momo is not None:
        runtime.momo.close()
    runtime.db.dispose()


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
