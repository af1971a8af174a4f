"""Pure payment rules: amounts, currencies, references, matching decisions, webhook
signatures, statement parsing and comparison, ledger replay."""

from __future__ import annotations

import pytest

from control.ledger import money
from control.ledger.check import replay
from control.ledger.credit import DAY_S, Plan
from control.ledger.models import LedgerEntry
from control.payments import matching, statements
from control.payments.providers import webhook_signature

NOW = 1_760_000_000


@pytest.mark.parametrize("raw,want", [(700, 700), ("700", 700), (" 700 ", 700), (700.0, 700),
                                      ("700.00", 700), (10_000_000, 10_000_000)])
def test_whole_xof_amounts_are_read(raw: object, want: int) -> None:
    assert money.parse_amount(raw) == want


@pytest.mark.parametrize("raw", [0, -5, "0", "-700", 700.5, "700.5", "7e2", True, None, "",
                                 10_000_001, 10**12, "abc", [700], {"v": 1}, float("nan")])
def test_bad_amounts_are_refused(raw: object) -> None:
    with pytest.raises(money.AmountError):
        money.parse_amount(raw)


def test_currency_must_be_xof() -> None:
    assert money.check_currency(None) == "XOF"
    assert money.check_currency(" xof ") == "XOF"
    for bad in ("EUR", "GHS", "", "XAF"):
        with pytest.raises(money.AmountError):
            money.check_currency(bad)


def test_references_tolerate_case_spaces_and_separators() -> None:
    assert matching.normalise_reference(" kit 0042 ") == "KIT0042"
    assert matching.normalise_reference("Kit-00_42.") == "KIT0042"
    assert matching.normalise_reference("   ") is None
    assert matching.normalise_reference(None) is None


def test_reference_wins_over_phone_and_ambiguity_parks() -> None:
    assert matching.decide([3], [4]) == matching.Match(3, "reference")
    assert matching.decide([], [4]) == matching.Match(4, "phone")
    amb = matching.decide([3, 5], [4])
    assert amb.account_id is None and "2 accounts" in (amb.reason or "")
    assert matching.decide([], [4, 6]).account_id is None
    assert matching.decide([], []).account_id is None


def test_x100_and_overpayment_are_flagged() -> None:
    assert matching.suspicious_amount(700, owed_fcfa=48_000, requested_fcfa=700) is None
    assert "x100" in (matching.suspicious_amount(70_000, owed_fcfa=48_000,
                                                 requested_fcfa=700) or "")
    assert "x100" in (matching.suspicious_amount(70_000, owed_fcfa=48_000,
                                                 requested_fcfa=None) or "")
    assert "paid in full" in (matching.suspicious_amount(700, owed_fcfa=0,
                                                         requested_fcfa=None) or "")
    assert matching.suspicious_amount(48_000, owed_fcfa=48_000, requested_fcfa=None) is None


def test_webhook_signatures() -> None:
    secret, body = "whsec_test", b'{"transaction_id":"T1"}'
    header = webhook_signature.sign_header(secret, NOW, body)
    assert webhook_signature.verify(secret, header, body, now=NOW + 299) == NOW
    with pytest.raises(webhook_signature.SignatureError, match="tolerance"):
        webhook_signature.verify(secret, header, body, now=NOW + 301)  # replayed later
    with pytest.raises(webhook_signature.SignatureError, match="tolerance"):
        webhook_signature.verify(secret, header, body, now=NOW - 301)
    with pytest.raises(webhook_signature.SignatureError, match="bad signature"):
        webhook_signature.verify(secret, header, body + b" ", now=NOW)  # body changed
    with pytest.raises(webhook_signature.SignatureError, match="bad signature"):
        webhook_signature.verify("whsec_other", header, body, now=NOW)
    # a fresh t on an old signature does not verify: t is signed
    sig = header.split("v1=")[1]
    with pytest.raises(webhook_signature.SignatureError, match="bad signature"):
        webhook_signature.verify(secret, f"t={NOW + 1000},v1={sig}", body, now=NOW + 1000)
    # several v1 (secret rotation): any one valid is enough
    assert webhook_signature.verify(secret, f"t={NOW},v1={'0' * 64},v1={sig}", body, now=NOW) == NOW
    for bad in (None, "", "garbage", "t=abc,v1=00", f"t={NOW}", "v1=00"):
        with pytest.raises(webhook_signature.SignatureError):
            webhook_signature.verify(secret, bad, body, now=NOW)


CSV = """Transaction_ID,Date,Amount,Currency,Phone
T1,2026-11-20,700,XOF,90123456
T2,2026-11-20T23:59:59Z,500,XOF,
T3,2026-11-21 08:00:00,1000,XOF,+22891000000
T4,2026-11-21,abc,XOF,
T5,2026-11-21,300,EUR,
,2026-11-21,300,XOF,
T3,2026-11-21,1000,XOF,
"""


def test_statement_parsing_reports_bad_lines() -> None:
    lines, errors = statements.parse_statement(CSV)
    assert [ln.transaction_id for ln in lines] == ["T1", "T2", "T3"]
    assert lines[0].phone == "+22890123456" and lines[1].day == "2026-11-20"
    assert len(errors) == 4 and errors[0].startswith("line 5")
    with pytest.raises(statements.StatementError):
        statements.parse_statement("foo,bar\n1,2\n")
    with pytest.raises(statements.StatementError):
        statements.parse_statement("")


def test_statement_comparison_per_day() -> None:
    lines, _ = statements.parse_statement(CSV)
    ours = [
        statements.OurPayment(1, frozenset({"T1"}), "2026-11-20", 700, "credited"),
        statements.OurPayment(2, frozenset({"CIZO-X", "T3"}), "2026-11-21", 100, "credited"),
        statements.OurPayment(3, frozenset({"T9"}), "2026-11-21", 400, "suspense"),
    ]
    rep = statements.compare(lines, ours)
    d20, d21 = rep["2026-11-20"], rep["2026-11-21"]
    assert [m["transaction_id"] for m in d20.missing_in_ours] == ["T2"]
    assert d20.matched == 1 and d20.statement_total == 1200 and d20.ours_total == 700
    assert d21.mismatches == [{"transaction_id": "T3", "payment_id": 2,
                               "statement_fcfa": 1000, "ours_fcfa": 100}]
    assert [m["payment_id"] for m in d21.missing_in_statement] == [3]


def _entry(i: int, kind: str, amount: int, days: int, rem: int, before: int | None,
           after: int | None, at: int) -> LedgerEntry:
    return LedgerEntry(id=i, account_id=1, kind=kind, amount_fcfa=amount, days=days,
                       remainder_after_fcfa=rem, credit_until_before=before,
                       credit_until_after=after, created_at=float(at))


def test_ledger_replay_derives_the_balance_and_spots_a_bad_entry() -> None:
    plan = Plan(2000, 100, 50_000)
    good = [
        _entry(1, "deposit", 2000, 0, 0, None, None, NOW),
        _entry(2, "payment", 750, 7, 50, None, NOW + 7 * DAY_S, NOW),
        _entry(3, "reversal", -750, -7, 0, NOW + 7 * DAY_S, NOW, NOW + 10),
        _entry(4, "free_days", 0, 2, 0, NOW, NOW + 10 + 2 * DAY_S, NOW + 10),
    ]
    state, problems = replay(plan, good)
    assert problems == []
    assert (state.paid_total_fcfa, state.remainder_fcfa) == (2000, 0)
    assert state.credit_until == NOW + 10 + 2 * DAY_S
    bad = [*good[:2], _entry(3, "payment", 700, 8, 0, NOW + 7 * DAY_S, NOW + 15 * DAY_S, NOW)]
    _, problems = replay(plan, bad)
    assert len(problems) == 1 and problems[0][0] == 3
