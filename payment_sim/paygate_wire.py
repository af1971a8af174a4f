"""PayGate Global's wire formats as the simulator writes and reads them: the status codes,
the status and callback bodies, the format drift seen in the wild, phone numbers and amounts
as merchants send them. Pure: no I/O."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Outcome = Literal["approve", "decline", "never"]

PAID, PENDING, EXPIRED, CANCELLED = 0, 2, 4, 6
STATE_NAMES = {PAID: "paid", PENDING: "pending", EXPIRED: "expired", CANCELLED: "cancelled"}
PAY_OK, PAY_BAD_TOKEN, PAY_BAD_PARAMS, PAY_DUPLICATE = 0, 2, 4, 6
NETWORKS = {"FLOOZ": "FLOOZ", "TMONEY": "T-Money"}  # request value -> payment_method


@dataclass
class SimTransaction:
    """One push payment as PayGate holds it; every callback attempt is recorded on it."""

    tx_reference: int
    identifier: str
    amount: int
    phone_number: str  # 228XXXXXXXX
    network: str
    description: str
    outcome: Outcome
    created_at: float  # clock time
    created_mono: float
    state: int = PENDING
    paid_at: float | None = None
    payment_reference: str = ""
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    settled_perf: float | None = None  # perf_counter when the customer paid (benchmarks)

    @property
    def payment_method(self) -> str:
        return NETWORKS[self.network]

    def status_body(self) -> dict[str, Any]:
        return {
            "tx_reference": self.tx_reference,
            "identifier": self.identifier,
            "amount": self.amount,
            "payment_reference": self.payment_reference,
            "payment_method": self.payment_method,
            "datetime": iso_ms(self.paid_at if self.paid_at is not None else self.created_at),
            "phone_number": self.phone_number,
            "status": self.state,
        }

    def callback_body(self) -> dict[str, Any]:
        body = self.status_body()
        del body["status"]
        return body

    def sim_view(self) -> dict[str, Any]:
        return {
            **self.status_body(),
            "state": STATE_NAMES[self.state],
            "network": self.network,
            "description": self.description,
            "outcome": self.outcome,
            "callbacks_delivered": sum(1 for c in self.callbacks if c["ok"]),
            "callback_attempts": list(self.callbacks),
        }


def drift_body(body: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """The format drift seen in the wild: tx_reference as string, 'TMONEY' for 'T-Money',
    phone without 228 or with +228, dates without milliseconds."""
    out = dict(body)
    if rng.random() < 0.5:
        out["tx_reference"] = str(out["tx_reference"])
    if out.get("payment_method") == "T-Money" and rng.random() < 0.5:
        out["payment_method"] = "TMONEY"
    phone = str(out.get("phone_number", ""))
    roll = rng.random()
    if roll < 0.33 and phone.startswith("228"):
        out["phone_number"] = phone[3:]
    elif roll < 0.66 and phone.startswith("228"):
        out["phone_number"] = "+" + phone
    if rng.random() < 0.5 and isinstance(out.get("datetime"), str):
        out["datetime"] = out["datetime"][:19] + "Z"
    return out


def iso_ms(t: float) -> str:
    """``2025-09-09T13:03:31.000Z``, as PayGate writes times."""
    dt = datetime.fromtimestamp(t, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def normalise_phone(value: Any) -> str | None:
    """8-digit Togolese number, with or without 228 / +228 / 00228 -> ``228XXXXXXXX``."""
    if not isinstance(value, str | int) or isinstance(value, bool):
        return None
    digits = str(value).strip().replace(" ", "")
    for prefix in ("+228", "00228"):
        if digits.startswith(prefix):
            digits = "228" + digits[len(prefix):]
    if len(digits) == 8 and digits.isdigit():
        return "228" + digits
    if len(digits) == 11 and digits.isdigit() and digits.startswith("228"):
        return digits
    return None


def whole_amount(value: Any) -> int | None:
    """A positive whole number of XOF: an int, or a digit string as form posts send it."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.isdigit() and value.isascii():
        return int(value) if int(value) > 0 else None
    return None
