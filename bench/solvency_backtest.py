"""Solvency backtest: does the score at day 30 rank the households that default by day 90?

No server: pure logic over the simulator's plans (docs/analytics.md, "Backtest").

1. A 90-day fleet from the scenario planner (``firmware_sim.scenario.build_plan``): the
   default payment mix plus the gradual defaulters (``fades``, docs/simulation.md), the
   default sizes and households, every kit sold at the scenario's start (midnight UTC).
2. Each account's ledger from its planned payments with the ledger's own credit maths
   (``control.ledger.credit.apply_payment``, as provisioning does for the deposit and
   ``control.payments.posting`` for each payment): entries (time, kind, credit_until before,
   credit_until after).
3. Each kit's daily load energy over the analytics window from the simulator's usage model
   (``firmware_sim.physics``: the household's appliances, sun, weather and battery), the load
   cut while the account has no credit (the firmware's lock).
4. The score at day 30 (``now`` = the sale + 30 days) with ``telemetry.solvency`` exactly as
   ``control.fleet.jobs.run_analytics`` calls it: ``ledger_payments`` of the entries so far,
   ``window_start``, the daily loads of the job's window (ANALYTICS_WINDOW_DAYS days).
5. The truth at day 90: an account has defaulted when it is in PAR30 then, by the fleet
   page's rule (control/fleet/summary.py): not owned, and its credit ran out more than
   30 days earlier (or it never had any and was sold more than 30 days earlier).
6. ROC AUC (``telemetry.ranking``) of the score (lower = riskier) and of the baseline, whole
   days since the last payment at day 30 (more = riskier; the deposit at the sale counts), with
   a paired bootstrap 95 % interval for each and for their difference. Evaluated on the
   accounts current at day 30 (credit running: their default is not visible yet) and, apart,
   on every account with a balance at day 30. Kits owned by day 30 are left out of both:
   nothing is left to default on.

``--households`` (default 5,000), ``--seed`` (2026), ``--draws`` (bootstrap, 2,000),
``--step-s`` (the physics step, 3,600 s). Progress on stderr; the last line on stdout is one
JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from control.fleet.jobs import ANALYTICS_WINDOW_DAYS
from control.ledger import credit
from firmware_sim.physics import KitProfile, PhysicsState
from firmware_sim.scenario import DAY, KitPlan, Scenario, build_plan
from telemetry import ranking, solvency

SCORE_DAY = 30
OUTCOME_DAY = 90
ARREARS_DAYS = 30  # PAR30 at OUTCOME_DAY is "defaulted"
FADES_WEIGHT = 0.15  # the gradual defaulters, beside the default mix's weights (sum 1)
START_SOC = 70.0  # a new kit's charge (firmware_sim.firmware.KitFirmware's default)

Entry = tuple[float, str, int | None, int | None]  # (at, kind, credit_until before, after)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def scenario(households: int) -> Scenario:
    mix = {**Scenario().payments, "fades": FADES_WEIGHT}
    return Scenario(name="solvency-backtest", kits=households, days=OUTCOME_DAY,
                    payments=mix)


@dataclass(frozen=True, slots=True)
class Ledger:
    entries: tuple[Entry, ...]
    owned_from: float | None  # when the kit became owned (None: never)

    def credit_until(self, t: float) -> int | None:
        """The account's credit_until just after its last entry at or before ``t``."""
        until: int | None = None
        for at, _, _, after in self.entries:
            if at > t:
                break
            until = after
        return until

    def owned(self, t: float) -> bool:
        return self.owned_from is not None and self.owned_from <= t


def ledger(kit: KitPlan, plan: credit.Plan, sold_at: float) -> Ledger:
    """The account's entries: the deposit at the sale, then each planned payment."""
    state = credit.CreditState()
    entries: list[Entry] = []
    owned_from: float | None = None
    paid = [(sold_at, "deposit", plan.deposit_fcfa)] if plan.deposit_fcfa > 0 else []
    paid += [(p.at, "payment", p.amount_fcfa) for p in kit.payments]
    for at, kind, amount in paid:
        change = credit.apply_payment(plan, state, amount, int(at))
        entries.append((at, kind, None if kind == "deposit" else change.before.credit_until,
                        change.after.credit_until))
        if change.became_owned:
            owned_from = at
        state = change.after
    return Ledger(tuple(entries), owned_from)


def weather_seed(region: str) -> int:
    """Kits in one region share weather. A stable seed: ``hash(str)`` changes per process."""
    return zlib.crc32(region.encode()) & 0xFFFF


def daily_load(kit: KitPlan, book: Ledger, since: float, now: float, step_s: float
               ) -> list[tuple[float, float]]:
    """(day start, load Wh) for each whole UTC day in [since, now), the kit's physics stepped
    every ``step_s`` from ``since`` with the load on while the account has credit."""
    days = int((now - since) // DAY)
    ever_unlocked = any(after is not None and after > since for _, _, _, after in book.entries)
    if not ever_unlocked and not book.owned(now):
        return [(since + d * DAY, 0.0) for d in range(days)]  # locked throughout: no load
    profile = KitProfile.for_kit(kit.kit_id, household=kit.household, size=kit.size,
                                 weather_seed=weather_seed(kit.region))
    phys = PhysicsState(soc=START_SOC)
    out: list[tuple[float, float]] = []
    steps_per_day = round(DAY / step_s)
    entries = book.entries
    i, until = 0, None
    for d in range(days):
        day_start = since + d * DAY
        before = phys.load_wh_total
        for s in range(1, steps_per_day + 1):
            t = day_start + s * step_s
            while i < len(entries) and entries[i][0] <= t:
                until = entries[i][3]
                i += 1
            on = book.owned(t) or (until is not None and until > t)  # as the firmware locks
            phys.step(profile, t, step_s, load_enabled=on)
        out.append((day_start, phys.load_wh_total - before))
    return out


@dataclass(frozen=True, slots=True)
class Household:
    kit_id: str
    behaviour: str
    score: float
    days_since_payment: int
    owned: bool  # at the score day
    current: bool  # credit running at the score day
    defaulted: bool  # at the outcome day


def household(kit: KitPlan, plan: credit.Plan, sold_at: float, step_s: float) -> Household:
    book = ledger(kit, plan, sold_at)
    now = sold_at + SCORE_DAY * DAY
    seen = [e for e in book.entries if e[0] < now]  # what the ledger holds at day 30
    since = now - ANALYTICS_WINDOW_DAYS * DAY  # the job's analytics window (whole days)
    inputs = solvency.solvency_inputs(
        payments=solvency.ledger_payments(seen), window_start=solvency.window_start(sold_at, now),
        now=now, daily_load_wh=daily_load(kit, book, max(since, sold_at), now, step_s))
    last_paid = max(at for at, _, _, _ in seen) if seen else sold_at
    until_now = book.credit_until(now)
    end = sold_at + OUTCOME_DAY * DAY
    until_end = book.credit_until(end)
    cutoff = end - ARREARS_DAYS * DAY
    defaulted = not book.owned(end) and (
        until_end < cutoff if until_end is not None else sold_at < cutoff)
    return Household(
        kit_id=kit.kit_id, behaviour=kit.behaviour, score=solvency.solvency_score(inputs),
        days_since_payment=int((now - last_paid) // DAY), owned=book.owned(now),
        current=until_now is not None and until_now > now, defaulted=defaulted)


def evaluate(rows: list[Household], *, draws: int, seed: int) -> dict[str, Any]:
    bad = np.array([h.defaulted for h in rows])
    score_risk = np.array([-h.score for h in rows])  # a lower score is riskier
    days_risk = np.array([float(h.days_since_payment) for h in rows])
    out: dict[str, Any] = {"evaluated": len(rows), "defaulters": int(bad.sum())}
    if bad.all() or not bad.any():
        return out  # no AUC without both groups
    auc_s, auc_d = ranking.roc_auc(score_risk, bad), ranking.roc_auc(days_risk, bad)
    boot = ranking.bootstrap_aucs([score_risk, days_risk], bad, draws=draws, seed=seed)

    def ci(values: Any) -> list[float]:
        return [round(v, 4) for v in ranking.interval(values)]

    out |= {"auc_score": round(auc_s, 4), "auc_days_since_payment": round(auc_d, 4),
            "auc_diff": round(auc_s - auc_d, 4), "auc_score_ci95": ci(boot[:, 0]),
            "auc_days_since_payment_ci95": ci(boot[:, 1]),
            "auc_diff_ci95": ci(boot[:, 0] - boot[:, 1])}
    return out


def by_behaviour(rows: list[Household]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for b in sorted({h.behaviour for h in rows}):
        hs = [h for h in rows if h.behaviour == b]
        out[b] = {"households": len(hs), "current": sum(h.current for h in hs),
                  "owned": sum(h.owned for h in hs),
                  "defaulted": sum(h.defaulted for h in hs),
                  "mean_score": round(float(np.mean([h.score for h in hs])), 1),
                  "mean_days_since_payment": round(
                      float(np.mean([h.days_since_payment for h in hs])), 1)}
    return out


def run(households: int, seed: int, draws: int, step_s: float) -> dict[str, Any]:
    started = time.monotonic()
    sc = scenario(households)
    fleet = build_plan(sc, seed)
    plan = credit.Plan(sc.plan.deposit_fcfa, sc.plan.daily_rate_fcfa, sc.plan.total_price_fcfa)
    say(f"planned {households} households over {OUTCOME_DAY} days (seed {seed}): "
        f"{dict(sorted(Counter(k.behaviour for k in fleet.kits).items()))}")
    rows: list[Household] = []
    for n, kit in enumerate(fleet.kits, 1):
        rows.append(household(kit, plan, sc.start_ts, step_s))
        if n % 500 == 0 or n == households:
            say(f"scored {n}/{households} at day {SCORE_DAY} "
                f"({time.monotonic() - started:.0f} s)")
    behaviours = by_behaviour(rows)
    for b, figures in behaviours.items():
        say(f"  {b:7s} {figures}")
    balance = [h for h in rows if not h.owned]
    current = [h for h in balance if h.current]
    say(f"bootstrap ({draws} resamples) on {len(current)} current and {len(balance)} "
        f"accounts with a balance")
    primary = evaluate(current, draws=draws, seed=seed)
    everyone = evaluate(balance, draws=draws, seed=seed)
    return {
        "households": households, **primary,
        **{f"all_{k}": v for k, v in everyone.items()},
        "owned_at_score_day": len(rows) - len(balance),
        "score_day": SCORE_DAY, "outcome_day": OUTCOME_DAY, "arrears_days": ARREARS_DAYS,
        "mix": {k: round(v / sum(sc.payments.values()), 4)
                for k, v in sorted(sc.payments.items())},
        "behaviours": behaviours, "seed": seed, "draws": draws, "step_s": step_s,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--households", type=int, default=5_000)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--draws", type=int, default=2_000, help="bootstrap resamples")
    ap.add_argument("--step-s", type=float, default=3_600.0,
                    help="physics step, seconds (a divisor of a day)")
    args = ap.parse_args(argv)
    if args.households < 1 or args.draws < 1 or not 0 < args.step_s <= DAY or (
            not math.isclose(DAY / args.step_s, round(DAY / args.step_s))):
        ap.error("households and draws >= 1; step-s must divide a day")
    print(json.dumps(run(args.households, args.seed, args.draws, args.step_s)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
