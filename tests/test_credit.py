"""Pure credit arithmetic: days bought, remainders kept, deposit first, ownership."""

from __future__ import annotations

import pytest

from control.ledger.credit import (
    DAY_S,
    CreditError,
    CreditState,
    Plan,
    apply_payment,
    balance_fcfa,
    desired_action,
    grant_days,
)

NOW = 1_760_000_000
PLAN = Plan(deposit_fcfa=2000, daily_rate_fcfa=100, total_price_fcfa=50_000)
AFTER_DEPOSIT = CreditState(paid_total_fcfa=2000, remainder_fcfa=0, credit_until=None)


def test_700_on_100_a_day_buys_exactly_7_days_from_now() -> None:
    change = apply_payment(PLAN, AFTER_DEPOSIT, 700, NOW)
    assert change.days_added == 7
    assert change.after.credit_until == NOW + 7 * DAY_S
    assert change.after.remainder_fcfa == 0
    assert change.after.paid_total_fcfa == 2700
    assert change.to_deposit_fcfa == 0


def test_days_extend_from_the_later_of_now_and_credit_end() -> None:
    future = CreditState(2000, 0, NOW + 3 * DAY_S)
    assert apply_payment(PLAN, future, 700, NOW).after.credit_until == NOW + 10 * DAY_S
    lapsed = CreditState(2000, 0, NOW - 5 * DAY_S)
    assert apply_payment(PLAN, lapsed, 700, NOW).after.credit_until == NOW + 7 * DAY_S


def test_remainders_are_kept_across_payments() -> None:
    first = apply_payment(PLAN, AFTER_DEPOSIT, 150, NOW)
    assert (first.days_added, first.after.remainder_fcfa) == (1, 50)
    second = apply_payment(PLAN, first.after, 50, NOW)
    assert (second.days_added, second.after.remainder_fcfa) == (1, 0)
    assert second.after.credit_until == NOW + 2 * DAY_S
    small = apply_payment(PLAN, AFTER_DEPOSIT, 99, NOW)
    assert (small.days_added, small.after.remainder_fcfa) == (0, 99)
    assert small.after.credit_until is None


def test_money_completes_the_deposit_first() -> None:
    change = apply_payment(PLAN, CreditState(), 2300, NOW)
    assert change.to_deposit_fcfa == 2000
    assert change.days_added == 3
    assert change.after.credit_until == NOW + 3 * DAY_S


def test_paying_the_total_price_makes_the_kit_owned() -> None:
    state = CreditState(49_000, 40, NOW + DAY_S)
    change = apply_payment(PLAN, state, 1000, NOW)
    assert change.became_owned and change.after.owned
    assert change.after.credit_until is None
    assert balance_fcfa(PLAN, change.after) == 0
    assert desired_action(change.after, NOW) == "own"
    assert balance_fcfa(PLAN, state) == 1000


@pytest.mark.parametrize("amount", [0, -100, 1.5, True, "700", None])
def test_bad_amounts_are_refused(amount: object) -> None:
    with pytest.raises(CreditError):
        apply_payment(PLAN, AFTER_DEPOSIT, amount, NOW)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("deposit", "rate", "total"), [(0, 0, 100), (-1, 100, 1000), (2000, 100, 1000), (0, 100, 0)]
)
def test_bad_plans_are_refused(deposit: int, rate: int, total: int) -> None:
    with pytest.raises(CreditError):
        Plan(deposit, rate, total)


def test_free_days_move_no_money() -> None:
    state = CreditState(2700, 30, NOW + DAY_S)
    after = grant_days(state, 2, NOW)
    assert after.credit_until == NOW + 3 * DAY_S
    assert (after.paid_total_fcfa, after.remainder_fcfa) == (2700, 30)
    with pytest.raises(CreditError):
        grant_days(state, 0, NOW)


def test_desired_action_follows_credit_end() -> None:
    assert desired_action(CreditState(2000, 0, NOW + 1), NOW) == "unlock"
    assert desired_action(CreditState(2000, 0, NOW), NOW) == "lock"
    assert desired_action(CreditState(2000, 0, None), NOW) == "lock"


# --- reversals: the mirror of a payment -----------------------------------------------------

from control.ledger.credit import apply_reversal  # noqa: E402


def test_reversal_takes_back_whole_days_rounding_up_and_keeps_the_remainder_exact() -> None:
    paid = apply_payment(PLAN, CreditState(2000, 30, None), 750, NOW).after
    assert (paid.remainder_fcfa, paid.credit_until) == (80, NOW + 7 * DAY_S)
    back = apply_reversal(PLAN, paid, 750, NOW)
    assert back.after == CreditState(2000, 30, NOW, False)
    assert back.days_added == -7
    part = apply_reversal(PLAN, paid, 130, NOW)  # 80 from the remainder, 50 from a day
    assert part.after == CreditState(2620, 50, NOW + 6 * DAY_S, False)


def test_reversal_into_the_deposit_and_of_an_owned_kit() -> None:
    back = apply_reversal(PLAN, AFTER_DEPOSIT, 500, NOW)
    assert back.after.paid_total_fcfa == 1500 and back.to_deposit_fcfa == -500
    owned = CreditState(50_000, 0, None, True)
    lost = apply_reversal(PLAN, owned, 1000, NOW)
    assert lost.after == CreditState(49_000, 0, NOW, False)  # no longer owned: locks now
    assert desired_action(lost.after, NOW + 1) == "lock"
    with pytest.raises(CreditError):
        apply_reversal(PLAN, AFTER_DEPOSIT, 2001, NOW)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(CreditError):
            apply_reversal(PLAN, AFTER_DEPOSIT, bad, NOW)  # type: ignore[arg-type]
