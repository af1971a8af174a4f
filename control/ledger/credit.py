"""Credit arithmetic for pay-as-you-go plans. Pure: integers in FCFA, times in unix seconds.

A plan is a deposit, a daily rate and a total price. Money first completes the deposit,
then buys whole days at the daily rate; what does not make a whole day is kept as a
remainder and counts toward the next payment, so no franc is ever lost. Days extend
credit from the later of *now* and the current end of credit. Once the total price is
paid the kit is owned: unlocked for good.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

DAY_S = 86_400


class CreditError(ValueError):
    """An amount or plan that the ledger must refuse."""


@dataclass(frozen=True, slots=True)
class Plan:
    deposit_fcfa: int
    daily_rate_fcfa: int
    total_price_fcfa: int

    def __post_init__(self) -> None:
        if self.daily_rate_fcfa <= 0:
            raise CreditError("daily rate must be a positive whole number of FCFA")
        if self.deposit_fcfa < 0 or self.total_price_fcfa <= 0:
            raise CreditError("deposit must be >= 0 and total price > 0")
        if self.deposit_fcfa > self.total_price_fcfa:
            raise CreditError("deposit cannot exceed the total price")


@dataclass(frozen=True, slots=True)
class CreditState:
    """What an account has paid and how long its kit may run."""

    paid_total_fcfa: int = 0
    remainder_fcfa: int = 0
    credit_until: int | None = None
    owned: bool = False


@dataclass(frozen=True, slots=True)
class CreditChange:
    before: CreditState
    after: CreditState
    days_added: int
    to_deposit_fcfa: int
    became_owned: bool


def apply_payment(plan: Plan, state: CreditState, amount_fcfa: int, now: int) -> CreditChange:
    """Credit ``amount_fcfa`` to an account; see the module docstring for the rules."""
    if not isinstance(amount_fcfa, int) or isinstance(amount_fcfa, bool) or amount_fcfa <= 0:
        raise CreditError(f"amount must be a positive whole number of FCFA, got {amount_fcfa!r}")
    deposit_due = max(0, plan.deposit_fcfa - state.paid_total_fcfa)
    to_deposit = min(deposit_due, amount_fcfa)
    buying = state.remainder_fcfa + amount_fcfa - to_deposit
    days, remainder = divmod(buying, plan.daily_rate_fcfa)
    paid_total = state.paid_total_fcfa + amount_fcfa
    owned = state.owned or paid_total >= plan.total_price_fcfa
    if owned:
        credit_until = None
        remainder = 0 if not state.owned else remainder
    else:
        credit_until = extend(state.credit_until, days, now)
    after = CreditState(paid_total, remainder, credit_until, owned)
    return CreditChange(state, after, days, to_deposit, owned and not state.owned)


def extend(credit_until: int | None, days: int, now: int) -> int | None:
    """Add whole days from the later of now and the current end of credit."""
    if days == 0:
        return credit_until
    base = max(now, credit_until or now)
    return base + days * DAY_S


def grant_days(state: CreditState, days: int, now: int) -> CreditState:
    """Free days from support staff: on top of paid credit, moving no money."""
    if days <= 0:
        raise CreditError("days must be a positive whole number")
    if state.owned:
        return state
    return replace(state, credit_until=extend(state.credit_until, days, now))


def balance_fcfa(plan: Plan, state: CreditState) -> int:
    """What is still owed on the kit."""
    return max(0, plan.total_price_fcfa - state.paid_total_fcfa)


def desired_action(state: CreditState, now: float) -> str:
    """What the kit should be doing now: 'own', 'unlock' or 'lock'."""
    if state.owned:
        return "own"
    if state.credit_until is not None and state.credit_until > now:
        return "unlock"
    return "lock"


def apply_reversal(plan: Plan, state: CreditState, amount_fcfa: int, now: int) -> CreditChange:
    """Take back ``amount_fcfa`` (a reversal or refund): the mirror of ``apply_payment``.

    Money leaves the day-buying pot first (the carried remainder, then whole days taken
    off ``credit_until``, rounded up so no unpaid day is kept), and the deposit last.
    A kit that was owned and no longer is paid in full stops being owned, with no days
    left: it locks. ``days_added`` is negative (the days removed).
    """
    if not isinstance(amount_fcfa, int) or isinstance(amount_fcfa, bool) or amount_fcfa <= 0:
        raise CreditError(f"amount must be a positive whole number of FCFA, got {amount_fcfa!r}")
    if amount_fcfa > state.paid_total_fcfa:
        raise CreditError("a reversal cannot take back more than was paid")
    paid_total = state.paid_total_fcfa - amount_fcfa
    deposit_before = min(plan.deposit_fcfa, state.paid_total_fcfa)
    deposit_after = min(plan.deposit_fcfa, paid_total)
    from_deposit = deposit_before - deposit_after
    from_days = amount_fcfa - from_deposit
    owned = state.owned and paid_total >= plan.total_price_fcfa
    if state.owned and not owned:
        # ownership cleared the remainder and the credit: what is left buys nothing now
        after = CreditState(paid_total, 0, now, False)
        return CreditChange(state, after, 0, -from_deposit, False)
    if owned:
        return CreditChange(state, replace(state, paid_total_fcfa=paid_total), 0,
                            -from_deposit, False)
    funds = state.remainder_fcfa - from_days
    days_removed = 0
    if funds < 0:
        days_removed = -(funds // plan.daily_rate_fcfa)  # ceil(-funds / rate)
        funds += days_removed * plan.daily_rate_fcfa
    credit_until = state.credit_until
    if days_removed and credit_until is not None:
        credit_until -= days_removed * DAY_S
    after = CreditState(paid_total, funds, credit_until, False)
    return CreditChange(state, after, -days_removed, -from_deposit, False)
