"""OpenPAYGO tokens: the plan (ADD_TIME / SET_TIME / DISABLE_PAYG), a token per
payment for keypad-only kits with the count persisted and never reused, every token checked
with the reference decoder, the simulator's keypad applying them, and a kit that gets both a
token and the MQTT command converging once."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import openpaygo
import pytest
from sqlalchemy import select, update

from cizo import protocol
from cizo.clock import FrozenClock
from control.commands import tokens
from control.gateways import sms
from control.ledger.accounts import SYSTEM
from control.ledger.models import Account, Command, Kit, KitToken
from control.payments import receipts, reversals
from control.payments.posting import Receipt
from control.payments.receive import Incoming, receive
from control.runtime import Runtime
from firmware_sim.firmware import KitFirmware
from firmware_sim.keypad import Keypad
from tests.api_support import DAY, Keys, TestClient, provision

T0 = 1_767_225_600  # 2026-01-01T00:00Z


def test_plan_adds_days_on_the_chain_sets_time_to_shorten_and_disables_when_owned() -> None:
    p = tokens.plan(chain_until=T0, credit_until=T0 + 7 * DAY, owned=False, now=T0 + 100)
    assert p is not None
    assert (p.token_type, p.value_days, p.chain_until) == ("add_time", 7, T0 + 7 * DAY)
    # credit restarted from "now" (off the chain's day grid): the nearest whole day
    p = tokens.plan(chain_until=T0, credit_until=T0 + 10 * DAY + 3600, owned=False, now=T0)
    assert p is not None
    assert (p.value_days, p.chain_until) == (10, T0 + 10 * DAY)
    p = tokens.plan(chain_until=T0, credit_until=T0 + 10 * DAY + 13 * 3600, owned=False,
                    now=T0)
    assert p is not None
    assert (p.value_days, p.chain_until) == (11, T0 + 11 * DAY)
    # shortened by a staff action (read out, typed at once): SET_TIME from today's start
    p = tokens.plan(chain_until=T0 + 9 * DAY, credit_until=T0 + 2 * DAY, owned=False,
                    now=T0 + DAY + 5, staff=True)
    assert p is not None
    assert (p.token_type, p.value_days, p.chain_until) == ("set_time", 1, T0 + 2 * DAY)
    p = tokens.plan(chain_until=T0, credit_until=None, owned=True, now=T0)
    assert p is not None and p.token_type == "disable_payg"
    with pytest.raises(tokens.TokenError):
        tokens.plan(chain_until=T0, credit_until=T0 + 2000 * DAY, owned=False, now=T0)


def _kind(p: tokens.TokenPlan | None) -> tuple[str, int | None, int | None] | None:
    return None if p is None else (p.token_type, p.value_days, p.chain_until)


def test_plan_sends_set_time_only_for_staff_actions_and_beyond_995_days() -> None:
    """A SET_TIME counts from the day it is typed (firmware_sim.keypad, the OpenPAYGO
    meaning), which the server cannot know: a receipt (payment or reversal) never carries
    one where an ADD_TIME, or no token, keeps the kit exact."""
    now = T0 + 5 * DAY + 20 * 3600  # 20:00 on day 5
    # a reversal left the ledger (day 7) short of the kit's chain (day 9): the kit keeps its
    # days, no token; a staff action may shorten it (read out, typed at once)
    assert tokens.plan(chain_until=T0 + 9 * DAY, credit_until=T0 + 7 * DAY, owned=False,
                       now=now) is None
    assert _kind(tokens.plan(chain_until=T0 + 9 * DAY, credit_until=T0 + 7 * DAY,
                             owned=False, now=now, staff=True)) \
        == ("set_time", 2, T0 + 7 * DAY)
    # ... later payments pay those days off: nothing until the ledger passes the chain by
    # half a day, then an ADD_TIME that lands on it
    assert tokens.plan(chain_until=T0 + 9 * DAY, credit_until=T0 + 9 * DAY + 11 * 3600,
                       owned=False, now=now) is None
    assert _kind(tokens.plan(chain_until=T0 + 9 * DAY, credit_until=T0 + 11 * DAY,
                             owned=False, now=now)) == ("add_time", 2, T0 + 11 * DAY)
    # a chain rounded up past the ledger's end, then a payment too small for a day: nothing
    # (this was a shortening SET_TIME before)
    assert tokens.plan(chain_until=T0 + 8 * DAY, credit_until=T0 + 7 * DAY + 13 * 3600,
                       owned=False, now=now) is None
    # the ledger lapsed (or never had credit): the kit is locked by its own chain already;
    # no catch-up ADD_TIME that could unlock it for up to half a day
    for ended in (None, int(now) - 3600):
        assert tokens.plan(chain_until=T0, credit_until=ended, owned=False, now=now) is None
    # a staff lock: SET_TIME 0 only if the kit's chain still runs
    assert _kind(tokens.plan(chain_until=T0 + 6 * DAY, credit_until=int(now), owned=False,
                             now=now, staff=True)) == ("set_time", 0, T0 + 5 * DAY)
    assert tokens.plan(chain_until=T0 + 5 * DAY, credit_until=int(now), owned=False,
                       now=now, staff=True) is None
    # support's resync restates the credit: a token even when the chain holds it
    assert _kind(tokens.plan(chain_until=T0 + 9 * DAY, credit_until=T0 + 9 * DAY,
                             owned=False, now=now, resync=True)) \
        == ("set_time", 4, T0 + 9 * DAY)
    assert _kind(tokens.plan(chain_until=T0 + 2 * DAY, credit_until=None, owned=False,
                             now=now, resync=True)) == ("add_time", 0, T0 + 2 * DAY)
    # more than 995 days to add (a chain left far behind): the one automatic SET_TIME
    far = tokens.plan(chain_until=T0 - 1000 * DAY, credit_until=T0 + 7 * DAY, owned=False,
                      now=now)
    assert _kind(far) == ("set_time", 2, T0 + 7 * DAY)
    # owned: one DISABLE_PAYG; an un-owning reversal meters the kit again on its chain
    assert tokens.plan(chain_until=T0, credit_until=None, owned=True, now=now,
                       disabled=True) is None
    assert _kind(tokens.plan(chain_until=T0 + 3 * DAY, credit_until=int(now), owned=False,
                             now=now, disabled=True)) == ("add_time", 0, T0 + 3 * DAY)


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
def outbox(rt: Runtime, tmp_path: Path) -> Path:
    path = tmp_path / "sms.jsonl"
    rt.notifier = sms.FileNotifier(path)
    rt.on_credit(receipts.on_credit)
    return path


def _pay(rt: Runtime, ref: str, amount: int, account: str) -> Receipt:
    return receive(rt, Incoming(
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


def _new_tokens(rt: Runtime, kit_id: str, after: int) -> list[KitToken]:
    with rt.db.session() as s:
        return list(s.scalars(select(KitToken).where(KitToken.kit_id == kit_id,
                                                     KitToken.count > after)
                              .order_by(KitToken.count)))


def test_set_time_counts_from_the_day_it_is_typed_receipts_never_carry_one(
    client: TestClient, rt: Runtime, keys: Keys, outbox: Path
) -> None:
    """Two copies of one keypad kit type the same codes; only the support lock's SET_TIME is
    typed on different days. Typed the day it was issued, the kit stays on the server's
    chain; typed the next day, it stays one day ahead (docs/commands.md, the limit left).
    A reversal sends no code (the kit keeps its days) and later payments pay them off."""
    day0 = tokens.day_start(rt.clock.now()) + 2 * DAY
    rt.clock.set(day0 + 8 * 3600)  # type: ignore[attr-defined]
    creds = provision(client, keys.admin, "KP-7")
    sup = Keys.auth(keys.support)
    assert client.post("/v1/kits/KP-7/keypad", json={"keypad_only": True, "reason": "no 2G"},
                       headers=sup).status_code == 200
    with rt.db.session() as s:
        kit = s.get(Kit, "KP-7")
        assert kit is not None
        anchor = int(kit.created_at)
    key = tokens.openpaygo_key(creds["command_secret"])
    clocks = {"same_day": FrozenClock(day0), "next_day": FrozenClock(day0)}
    pads = {name: Keypad(KitFirmware("KP-7", creds["command_secret"], c), anchor=anchor)
            for name, c in clocks.items()}
    typed: list[KitToken] = []

    def type_new(at: dict[str, float]) -> list[KitToken]:
        fresh = _new_tokens(rt, "KP-7", typed[-1].count if typed else 0)
        for tok in fresh:
            # the reference decoder reads back what the server meant
            value, ttype, _c, _u = openpaygo.decode_token(
                token=tok.token, secret_key=key, count=typed[-1].count if typed else 0,
                used_counts=[])
            assert ttype == tokens._TYPES[tok.token_type] and value == tok.value_days
            for name, pad in pads.items():
                clocks[name].advance(at[name] - clocks[name].now())
                assert pad.enter(tok.token).accepted, (name, tok.token_type)
            typed.append(tok)
        return fresh

    def ends() -> dict[str, int | None]:
        return {name: pad.firmware.credit_until for name, pad in pads.items()}

    assert _pay(rt, "kp7-1", 1000, "KP-7").credited  # 10 days (the deposit was paid)
    [add] = type_new({"same_day": day0 + 9 * 3600, "next_day": day0 + 9 * 3600})
    assert (add.token_type, add.value_days) == ("add_time", 10)
    # 20:00: support shortens the credit to day 3, noon; the code is read out on the phone
    rt.clock.set(day0 + 20 * 3600)  # type: ignore[attr-defined]
    r = client.post("/v1/kits/KP-7/set-credit-until",
                    json={"credit_until": day0 + 3 * DAY + 12 * 3600,
                          "reason": "payment disputed"}, headers=sup)
    assert r.status_code == 200, r.text
    [st] = type_new({"same_day": day0 + 22 * 3600, "next_day": day0 + DAY + 2 * 3600})
    assert (st.token_type, st.value_days, st.chain_until) == ("set_time", 4, day0 + 4 * DAY)
    assert ends() == {"same_day": day0 + 4 * DAY, "next_day": day0 + 5 * DAY}
    sms = [json.loads(x) for x in outbox.read_text(encoding="utf-8").splitlines()]
    assert st.token in sms[-1]["text"] and "aujourd'hui" in sms[-1]["text"]
    # a reversal takes 5 days off the ledger (now lapsed): no code, the kit keeps its days
    rt.clock.set(day0 + DAY + 3 * 3600)  # type: ignore[attr-defined]
    rev = reversals.reverse(rt, provider="test", provider_ref="kp7-rev", original_ref="kp7-1",
                         desco_id=None, amount_fcfa=500, actor=SYSTEM, reason="disputed")
    assert rev.outcome == "reversed", rev
    assert _new_tokens(rt, "KP-7", st.count) == []
    # 3 days paid: the ledger (day 4, 04:00) has not passed the chain by half a day: no code
    rt.clock.set(day0 + DAY + 4 * 3600)  # type: ignore[attr-defined]
    assert _pay(rt, "kp7-2", 300, "KP-7").credited
    assert _new_tokens(rt, "KP-7", st.count) == []
    assert "Code clavier" not in json.loads(
        outbox.read_text(encoding="utf-8").splitlines()[-1])["text"]
    # 5 more days: an ADD_TIME that lands on the ledger's end, to the day
    assert _pay(rt, "kp7-3", 500, "KP-7").credited
    [add2] = type_new({"same_day": day0 + DAY + 5 * 3600, "next_day": day0 + DAY + 5 * 3600})
    with rt.db.session() as s:
        acct = s.query(Account).filter(Account.kit_id == "KP-7").one()
        until = acct.credit_until
    assert until == day0 + 9 * DAY + 4 * 3600
    assert (add2.token_type, add2.value_days, add2.chain_until) == ("add_time", 5,
                                                                    day0 + 9 * DAY)
    # typed the day it was issued: on the server's chain; a day late: a day ahead, for good
    assert ends() == {"same_day": day0 + 9 * DAY, "next_day": day0 + 10 * DAY}
    assert [t.token_type for t in typed] == ["add_time", "set_time", "add_time"]


def test_concurrent_token_issues_for_one_kit_take_each_count_once(
    client: TestClient, rt: Runtime, keys: Keys
) -> None:
    """Eight transactions issue a token for one kit at once, each reading the kit the way
    the receipt hook does (``FOR UPDATE``, which SQLite ignores) and then adding a day: every
    count is used once, no token is lost, and the kit accepts them all in order."""
    creds = provision(client, keys.admin, "KP-8")
    with rt.db.session() as s:
        kit = s.get(Kit, "KP-8")
        acct = s.query(Account).filter(Account.kit_id == "KP-8").one()
        assert kit is not None
        anchor = int(kit.created_at)
        acct.credit_until = anchor + 3600  # the chain's start, roughly: each day adds 1
    n = 8
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def one() -> None:
        try:
            barrier.wait(10)
            with rt.db.session() as s:
                kit = s.scalars(select(Kit).where(Kit.id == "KP-8").with_for_update()).one()
                until = s.execute(update(Account).where(Account.kit_id == "KP-8")
                                  .values(credit_until=Account.credit_until + DAY)
                                  .returning(Account.credit_until)).scalar_one()
                assert until is not None
                tok = tokens.issue_token(s, kit=kit, box=rt.box, credit_until=int(until),
                                         owned=False, now=rt.clock.now(), created_by="test")
                assert tok is not None
        except BaseException as exc:  # reported below, with the thread's traceback
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    toks = _new_tokens(rt, "KP-8", 0)
    counts = [t.count for t in toks]
    assert len(toks) == n and len(set(counts)) == n
    with rt.db.session() as s:
        kit = s.get(Kit, "KP-8")
        assert kit is not None and kit.opaygo_count == max(counts)
        assert kit.opaygo_until == anchor + n * DAY
    key = tokens.openpaygo_key(creds["command_secret"])
    pad = Keypad(KitFirmware("KP-8", creds["command_secret"], FrozenClock(anchor)),
                 anchor=anchor)
    for tok in toks:
        value, ttype, _c, _u = openpaygo.decode_token(token=tok.token, secret_key=key,
                                                      count=0, used_counts=[])
        assert ttype == openpaygo.TokenType.ADD_TIME and value == 1
        assert pad.enter(tok.token).accepted
    assert pad.firmware.credit_until == anchor + n * DAY
