"""Issue 5, OpenPAYGO tokens: the plan (ADD_TIME / SET_TIME / DISABLE_PAYG), a token per
payment for keypad-only kits with the count persisted and never reused, every token checked
with the reference decoder, the simulator's keypad applying them, and a kit that gets both a
token and the MQTT command converging once."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openpaygo
import pytest

from cizo import protocol
from cizo.clock import FrozenClock
from control import intake, notify, tokens
from control.ledger import SYSTEM
from control.models import Account, Command, Kit, KitToken
from control.runtime import Runtime
from firmware_sim.firmware import KitFirmware
from firmware_sim.keypad import Keypad
from tests.test_api_helpers import (  # noqa: F401 - fixtures
    DAY,
    Keys,
    TestClient,
    client_fixture,
    keys_fixture,
    paygate_sim_fixture,
    provision,
    rt_fixture,
)

T0 = 1_767_225_600  # 2026-01-01T00:00Z


def test_plan_adds_days_on_the_chain_sets_time_to_shorten_and_disables_when_owned() -> None:
    p = tokens.plan(chain_until=T0, credit_until=T0 + 7 * DAY, owned=False, now=T0 + 100)
    assert (p.token_type, p.value_days, p.chain_until) == ("add_time", 7, T0 + 7 * DAY)
    # credit restarted from "now" (off the chain's day grid): the nearest whole day
    p = tokens.plan(chain_until=T0, credit_until=T0 + 10 * DAY + 3600, owned=False, now=T0)
    assert (p.value_days, p.chain_until) == (10, T0 + 10 * DAY)
    p = tokens.plan(chain_until=T0, credit_until=T0 + 10 * DAY + 13 * 3600, owned=False,
                    now=T0)
    assert (p.value_days, p.chain_until) == (11, T0 + 11 * DAY)
    p = tokens.plan(chain_until=T0 + 9 * DAY, credit_until=T0 + 2 * DAY, owned=False,
                    now=T0 + DAY + 5)
    assert (p.token_type, p.value_days, p.chain_until) == ("set_time", 1, T0 + 2 * DAY)
    assert tokens.plan(chain_until=T0, credit_until=None, owned=True, now=T0).token_type \
        == "disable_payg"
    with pytest.raises(tokens.TokenError):
        tokens.plan(chain_until=T0, credit_until=T0 + 2000 * DAY, owned=False, now=T0)


def test_keypad_applies_tokens_decoded_by_the_reference_decoder() -> None:
    clock = FrozenClock(T0)
    secret = protocol.new_command_secret()
    fw = KitFirmware("KP-1", secret, clock)
    pad = Keypad(fw, anchor=T0)
    key = tokens.openpaygo_key(secret)
    count, tok = openpaygo.generate_token(secret_key=key, count=0, value=3)
    assert pad.enter(tok).credit_until == T0 + 3 * DAY and not fw.locked
    assert pad.enter(tok).token_type == "already_used"  # a count is never accepted twice
    assert not pad.enter("123456789").accepted
    clock.advance(DAY + 10)
    count, tok = openpaygo.generate_token(secret_key=key, count=count, value=0,
                                          token_type=openpaygo.TokenType.SET_TIME)
    res = pad.enter(tok)
    assert res.token_type == "set_time" and fw.locked and res.credit_until == T0 + DAY
    count, tok = openpaygo.generate_token(secret_key=key, count=count,
                                          token_type=openpaygo.TokenType.DISABLE_PAYG)
    assert pad.enter(tok).token_type == "disable_payg" and fw.owned and not fw.locked


@pytest.fixture
def outbox(rt: Runtime, tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "sms.jsonl"
    notify.set_notifier(rt, notify.FileNotifier(path))
    notify.install_hooks()
    yield path
    intake.AFTER_CREDIT_HOOKS.remove(notify.on_credit)


def _pay(rt: Runtime, ref: str, amount: int, account: str) -> intake.Receipt:
    return intake.receive(rt, intake.Incoming(
        provider="test", provider_ref=ref, desco_id=None, amount_fcfa=amount,
        phone_e164=None, reference=account), actor=SYSTEM)


def test_keypad_kit_gets_a_token_per_payment_and_converges_once_with_mqtt(
    client: TestClient, rt: Runtime, keys: Keys, outbox: Path
) -> None:
    creds = provision(client, keys.admin, "KP-2")
    r = client.post("/v1/kits/KP-2/keypad", json={"keypad_only": True, "reason": "no 2G"},
                    headers=Keys.auth(keys.support))
    assert r.status_code == 200, r.text
    with rt.db.session() as s:
        kit = s.get(Kit, "KP-2")
        assert kit is not None
        anchor = int(kit.created_at)
    fw = KitFirmware("KP-2", creds["command_secret"], rt.clock)
    pad = Keypad(fw, anchor=anchor)
    seen: list[int] = []
    for i, amount in enumerate((700, 300, 1000)):
        receipt = _pay(rt, f"pay-{i}", amount, "KP-2")
        assert receipt.credited, receipt
        with rt.db.session() as s:
            tok = s.query(KitToken).filter(KitToken.payment_id == receipt.payment_id).one()
            acct = s.query(Account).filter(Account.kit_id == "KP-2").one()
            kit = s.get(Kit, "KP-2")
            assert kit is not None and kit.opaygo_count == tok.count
            token, count, until = tok.token, tok.count, acct.credit_until
            cmd = s.get(Command, receipt.command_id)
            assert cmd is not None
            fields = protocol.build_command(
                kit_id="KP-2", command_id=cmd.id, seq=cmd.seq, action="unlock",
                credit_until=cmd.credit_until, issued_at=cmd.issued_at,
                expires_at=cmd.expires_at, secret_hex=creds["command_secret"])
        assert count not in seen
        seen.append(count)
        # the reference decoder reads back exactly what we meant, from a fresh device state
        value, ttype, _c, _u = openpaygo.decode_token(
            token=token, secret_key=tokens.openpaygo_key(creds["command_secret"]),
            count=0, used_counts=[])
        assert ttype == openpaygo.TokenType.ADD_TIME and value == amount // 100
        # the kit gets the MQTT unlock AND types the token: one credit end, not two
        assert fw.handle_command(protocol.encode(fields))["result"] == "applied"
        assert pad.enter(token).accepted
        assert until is not None and fw.credit_until is not None
        assert until <= fw.credit_until <= until + DAY // 2
    assert (fw.credit_until or 0) < int(rt.clock.now()) + 21 * DAY  # 20 days paid, not 40
    lines = [json.loads(x) for x in outbox.read_text(encoding="utf-8").splitlines()]
    receipts = [m for m in lines if m["kind"] == "receipt"]
    assert len(receipts) == 3 and receipts[0]["to"] == "+22890123456"
    assert "700 FCFA" in receipts[0]["text"] and "7 jours ajoutés" in receipts[0]["text"]
    assert seen and all(str(m["text"]).count("Code clavier") == 1 for m in receipts)
    assert lines[-1]["text"].endswith(f"Code clavier : {token}.")
    # support reads the tokens out; operators may not
    listed = client.get("/v1/kits/KP-2/tokens", headers=Keys.auth(keys.support)).json()
    assert [t["count"] for t in listed["items"]] == sorted(seen, reverse=True)
    assert client.get("/v1/kits/KP-2/tokens",
                      headers=Keys.auth(keys.operator)).status_code == 403


def test_shortened_credit_gets_a_set_time_token_and_owned_a_disable(
    client: TestClient, rt: Runtime, keys: Keys, outbox: Path
) -> None:
    creds = provision(client, keys.admin, "KP-3")
    sup = Keys.auth(keys.support)
    client.post("/v1/kits/KP-3/keypad", json={"keypad_only": True, "reason": "no 2G"},
                headers=sup)
    assert _pay(rt, "p-kp3", 1000, "KP-3").credited
    r = client.post("/v1/kits/KP-3/lock", json={"reason": "asked by customer"}, headers=sup)
    assert r.status_code == 200
    with rt.db.session() as s:
        kit = s.get(Kit, "KP-3")
        assert kit is not None
        fw = KitFirmware("KP-3", creds["command_secret"], rt.clock)
        pad = Keypad(fw, anchor=int(kit.created_at))
        toks = s.query(KitToken).filter(KitToken.kit_id == "KP-3").order_by(KitToken.count)
        types = []
        for t in toks:
            res = pad.enter(t.token)
            assert res.accepted, t.token_type
            types.append(res.token_type)
    assert types == ["add_time", "set_time"] and fw.locked
    with rt.db.session() as s:
        acct = s.query(Account).filter(Account.kit_id == "KP-3").one()
        acct.credit_until = int(rt.clock.now()) + 3 * DAY
        acct.owned = True
    r = client.post("/v1/kits/KP-3/tokens", json={"reason": "paid off in cash"}, headers=sup)
    assert r.status_code == 200, r.text
    assert r.json()["token_type"] == "disable_payg"
    assert pad.enter(r.json()["token"]).token_type == "disable_payg" and fw.owned
    texts = [json.loads(x)["text"] for x in outbox.read_text(encoding="utf-8").splitlines()]
    assert any(r.json()["token"] in t and "clavier" in t for t in texts)


def test_a_kit_offline_longer_than_the_limit_gets_a_token_a_recent_one_does_not(
    client: TestClient, rt: Runtime, keys: Keys, outbox: Path
) -> None:
    provision(client, keys.admin, "OFF-1")
    provision(client, keys.admin, "OFF-2")
    now = rt.clock.now()
    limit = rt.settings.keypad_offline_after_s
    with rt.db.session() as s:
        for kid, seen in (("OFF-1", now - limit - 60), ("OFF-2", now - limit + 3600)):
            kit = s.get(Kit, kid)
            assert kit is not None
            kit.last_seen = seen
    assert _pay(rt, "off-1", 500, "OFF-1").credited
    assert _pay(rt, "off-2", 500, "OFF-2").credited
    with rt.db.session() as s:
        assert [t.kit_id for t in s.query(KitToken)] == ["OFF-1"]
        kit = s.get(Kit, "OFF-1")
        assert kit is not None and kit.opaygo_count == 2
