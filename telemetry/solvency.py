"""Each account's solvency score from its payments and its kit's use. Pure numpy.

Apart from ``telemetry.analytics`` because it reads the ledger's side (payments and the
credit they bought) as much as the kit's; docs/analytics.md gives the formula and weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from telemetry.analytics import DAY_S

# the solvency score's weights (docs/analytics.md): they sum to 1
USED_DAY_WH = 20.0  # a day with at least this much load energy counts as "used"
W_ON_TIME = 0.5
W_UNLOCKED = 0.3
W_USAGE = 0.2
NEUTRAL = 0.5  # an input with no evidence yet (new account, no telemetry)
WINDOW_DAYS = 90  # the score looks back this far, or to the sale


@dataclass(frozen=True, slots=True)
class SolvencyInputs:
    """What the score is made of, shown as is on the kit page."""

    payments: int  # payments in the window (deposits excluded)
    on_time_share: float | None  # payments made before the paid credit ran out
    window_days: int
    locked_days: int  # days in the window without credit (output locked)
    used_days: int | None  # credited days with at least USED_DAY_WH of load (None: no data)
    credited_days: int


def window_start(created_at: float, now: float) -> float:
    """Where an account's score window starts: WINDOW_DAYS back, or at the sale."""
    return max(created_at, now - WINDOW_DAYS * DAY_S)


def ledger_payments(
    entries: Iterable[tuple[float, str, float | None, float | None]],
) -> list[tuple[float, float | None, float | None]]:
    """An account's ledger entries ``(created_at, kind, credit_until_before,
    credit_until_after)``, in ledger order, as ``solvency_inputs`` reads them.

    The deposit is not a payment (``before`` None). Any other entry with no credit before
    it (the account's first top-up) counts as made after the credit ran out (``before`` 0).
    """
    return [(at, None if kind == "deposit" else float(before or 0.0),
             None if after is None else float(after))
            for at, kind, before, after in entries]


def solvency_inputs(
    *,
    payments: Sequence[tuple[float, float | None, float | None]],
    window_start: float,
    now: float,
    daily_load_wh: Sequence[tuple[float, float]] | None = None,
) -> SolvencyInputs:
    """Inputs from ledger entries ``(at, credit_until_before, credit_until_after)``.

    The first entry may be the deposit (counted for coverage, not for regularity: callers
    pass ``credit_until_before=None`` for it, and such entries are not counted as payments).
    """
    start_day = int(window_start // DAY_S)
    n_days = max(1, math.ceil((now - start_day * DAY_S) / DAY_S))
    covered = np.zeros(n_days, dtype=bool)
    paid = 0
    on_time = 0
    for at, before, after in payments:
        if before is not None:
            paid += 1
            if before >= at:  # credit was still running when the money came
                on_time += 1
        if after is None:
            continue
        lo = max(0, int(at // DAY_S) - start_day)
        hi = min(n_days, math.ceil(after / DAY_S) - start_day)
        if hi > lo:
            covered[lo:hi] = True
    credited = int(covered.sum())
    used: int | None = None
    if daily_load_wh is not None:
        used = 0
        for day_t, wh in daily_load_wh:
            i = int(day_t // DAY_S) - start_day
            if 0 <= i < n_days and covered[i] and wh >= USED_DAY_WH:
                used += 1
    return SolvencyInputs(
        payments=paid, on_time_share=(on_time / paid) if paid else None,
        window_days=n_days, locked_days=n_days - credited, used_days=used,
        credited_days=credited,
    )


def solvency_score(x: SolvencyInputs) -> float:
    """0..100 = 100 * (0.5*on-time share + 0.3*(1 - locked share) + 0.2*usage share).

    A missing input counts as NEUTRAL (0.5): no evidence neither helps nor hurts.
    """
    on_time = NEUTRAL if x.on_time_share is None else x.on_time_share
    unlocked = 1.0 - x.locked_days / x.window_days if x.window_days else NEUTRAL
    if x.used_days is None or x.credited_days == 0:
        usage = NEUTRAL
    else:
        usage = x.used_days / x.credited_days
    return round(100.0 * (W_ON_TIME * on_time + W_UNLOCKED * unlocked + W_USAGE * usage), 1)
