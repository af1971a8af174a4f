"""The fleet page's derived figures, as pure functions: the battery-health histogram, the
repayment rate and the portfolio-at-risk shares, PAR30 and the default rate
(docs/analytics.md, "Pre-aggregation" and "The regulator's view").

Both must stay consistent however the parts were summed: every kit counted lands in exactly
one histogram bin ("unknown" when no analytics figure exists for it), and a rate is a share
in [0, 1] or ``None`` where it is not defined (nothing due yet).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from telemetry import analytics

UNKNOWN = "unknown"
HEALTH_BINS: tuple[str, ...] = (*(name for _, name in analytics.HEALTH_BUCKETS), UNKNOWN)


def complete_health_bins(counts: Mapping[str, int], kits: int) -> dict[str, int]:
    """Every bin of the histogram for ``kits`` kits, given counts of some bins.

    Kits the counts do not place (no metrics row yet) are "unknown", so the bins always sum
    to ``kits``. Counts placing more kits than there are mean the parts were summed over
    different sets of kits: refused rather than shown as an inconsistent chart.
    """
    if kits < 0:
        raise ValueError(f"kits must be >= 0, not {kits}")
    strange = set(counts) - set(HEALTH_BINS)
    if strange:
        raise ValueError(f"unknown health bins {sorted(strange)}")
    out = {name: int(counts.get(name, 0)) for name in HEALTH_BINS}
    if any(n < 0 for n in out.values()):
        raise ValueError(f"negative bin counts {out}")
    placed = sum(out.values())
    if placed > kits:
        raise ValueError(f"{placed} kits in the bins, {kits} kits counted")
    out[UNKNOWN] += kits - placed
    return out


def health_histogram(health_pcts: Iterable[float | None]) -> dict[str, int]:
    """The histogram of some kits' battery health (``None``: not computed for that kit)."""
    values = list(health_pcts)
    return complete_health_bins(Counter(analytics.health_bucket(v) for v in values),
                                len(values))


def paid_towards_due(paid_fcfa: int, expected_fcfa: int) -> int:
    """What an account paid that counts against what it owed by now: a deposit or days
    paid ahead are not "more than repaid", so the part above what is due is left out."""
    return max(0, min(paid_fcfa, expected_fcfa))


def repayment_rate(paid_due_fcfa: int, expected_fcfa: int) -> float | None:
    """Σ paid towards what was due / Σ due, in [0, 1]; ``None`` when nothing is due."""
    if expected_fcfa <= 0:
        return None
    return round(min(1.0, max(0.0, paid_due_fcfa / expected_fcfa)), 4)


def accounts_repayment_rate(accounts: Iterable[tuple[int, int]]) -> float | None:
    """The repayment rate of accounts given as (paid, expected by now) pairs."""
    due = paid = 0
    for p, e in accounts:
        e = max(0, e)
        due += e
        paid += paid_towards_due(p, e)
    return repayment_rate(paid, due)


# Days without credit after which an unpaid balance counts as in default (PAR90 by value).
DEFAULT_AFTER_DAYS = 90


def portfolio_share(at_risk_fcfa: int, outstanding_fcfa: int) -> float | None:
    """Σ outstanding of the accounts at risk / Σ outstanding, in [0, 1]; ``None`` when
    nothing is outstanding. PAR30 and the default rate are both this share."""
    if outstanding_fcfa <= 0:
        return None
    return round(min(1.0, max(0.0, at_risk_fcfa / outstanding_fcfa)), 4)
