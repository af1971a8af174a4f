"""What a kit should be commanded, and when to try again: pure rules, no I/O.

A kit's desired state follows from its account alone (owned, end of credit, closed); a
command is issued whenever that differs from what the kit was last commanded. Re-sends back
off exponentially with jitter so a fleet that reconnects together does not re-send together.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from control.ledger import credit

PENDING = ("queued", "sent")
FINAL = ("applied", "rejected", "expired", "superseded")
STATE_ACTIONS = ("unlock", "lock", "own")
REISSUE_ON = ("expired", "replayed_seq")  # other refusals are alerts, not retried blindly


@dataclass(frozen=True, slots=True)
class Desired:
    action: str  # unlock | lock | own
    credit_until: int | None

    @property
    def lock_due_at(self) -> int | None:
        """The kit's ``lock_due_at`` once this is commanded: set only while it is commanded
        unlocked (the sweep's index of kits coming due)."""
        return self.credit_until if self.action == "unlock" else None


def desired_from(owned: bool, credit_until: int | None, now: float,
                 closed: bool = False) -> Desired:
    """The kit's desired state from its account's columns."""
    if closed:
        return Desired("lock", credit_until)  # repossessed: locked for good
    action = credit.desired_action(credit.CreditState(0, 0, credit_until, owned), now)
    return Desired(action, None if action == "own" else credit_until)


def commanded(action: str | None, credit_until: int | None) -> Desired | None:
    """What the kit was last commanded (None: nothing, or forgotten so it is re-issued)."""
    return None if action is None else Desired(action, credit_until)


def backoff_s(attempts: int, *, base_s: float, cap_s: float, jitter: float,
              rnd: Callable[[], float] = random.random) -> float:
    """Delay before re-sending after ``attempts`` publications: base * 2^(n-1), capped,
    scaled by a random factor in [1 - jitter, 1 + jitter] so a fleet does not move in step.
    A cap below the base never shortens the first delay (a 6 h base with the default 15 min
    cap re-sent every sweep: ``effective_cap_s``)."""
    raw = min(effective_cap_s(base_s, cap_s), base_s * (2 ** max(0, attempts - 1)))
    return float(raw * (1 - jitter + 2 * jitter * rnd()))


def effective_cap_s(base_s: float, cap_s: float) -> float:
    """The longest wait between re-sends: the cap, but never less than the first delay."""
    return max(base_s, cap_s)
