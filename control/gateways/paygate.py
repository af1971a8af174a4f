"""PayGate Global merchant API client (sync, urllib3 pool): start and confirm payments.

PayGate's docs are private and its answers drift in format (numbers or strings, "T-Money"
or "TMONEY", phones with or without 228), so everything is normalised here, once. Any
answer we cannot trust to be PayGate's verdict (network error, timeout, 5xx) raises
``PayGateUnavailable``: the caller must retry later and never credit on it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from control.gateways.http_json import JsonHttp, Reply, TransportFailed
from control.ledger.phone import PhoneError, normalise_phone

log = logging.getLogger(__name__)

# /api/v1/pay answers
PAY_REGISTERED = 0
PAY_INVALID_TOKEN = 2
PAY_INVALID_PARAMS = 4
PAY_DUPLICATE = 6
PAY_STATUS_TEXT = {
    PAY_REGISTERED: "registered",
    PAY_INVALID_TOKEN: "invalid auth token",
    PAY_INVALID_PARAMS: "invalid parameters",
    PAY_DUPLICATE: "duplicate identifier",
}

# /api/v1/status and /api/v2/status answers (same numbers, other meaning than /pay)
STATUS_PAID = 0
STATUS_PENDING = 2
STATUS_EXPIRED = 4
STATUS_CANCELLED = 6
STATUS_TEXT = {
    STATUS_PAID: "paid",
    STATUS_PENDING: "pending",
    STATUS_EXPIRED: "expired",
    STATUS_CANCELLED: "cancelled",
}

NETWORKS = ("FLOOZ", "TMONEY")


class PayGateError(RuntimeError):
    """PayGate answered, but not with something we can act on (bad token, bad answer)."""


class PayGateUnavailable(PayGateError):
    """PayGate could not be reached or failed (timeout, network, 5xx): retry, never credit."""


@dataclass(frozen=True, slots=True)
class PayResult:
    tx_reference: str
    status: int

    @property
    def registered(self) -> bool:
        return self.status == PAY_REGISTERED

    @property
    def status_text(self) -> str:
        return PAY_STATUS_TEXT.get(self.status, f"unknown status {self.status}")


@dataclass(frozen=True, slots=True)
class PayGateStatus:
    """A normalised /api/v2/status answer: PayGate's verdict on one identifier."""

    identifier: str
    status: int
    tx_reference: str | None
    amount: int | None
    payment_reference: str | None
    payment_method: str | None  # FLOOZ | TMONEY | other text upper-cased
    phone_e164: str | None
    paid_at: float | None  # unix seconds

    @property
    def paid(self) -> bool:
        return self.status == STATUS_PAID

    @property
    def status_text(self) -> str:
        return STATUS_TEXT.get(self.status, f"unknown status {self.status}")


# --- normalisation ----------------------------------------------------------------------


def normalise_network(raw: object) -> str | None:
    """'T-Money', 'TMONEY', 'Tmoney', 'mixx' -> 'TMONEY'; 'Flooz' -> 'FLOOZ'."""
    if raw is None:
        return None
    text = "".join(ch for ch in str(raw).upper() if ch.isalnum())
    if not text:
        return None
    if text in ("TMONEY", "MIXX", "MIXXBYYAS"):
        return "TMONEY"
    if text in ("FLOOZ", "MOOVMONEY", "MOOV"):
        return "FLOOZ"
    return text


def normalise_amount(raw: object) -> int | None:
    """Whole XOF as int; 700, '700' and 700.0 agree, 700.5 is refused (XOF has no cents)."""
    if raw is None or isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    try:
        value = float(str(raw).strip())
    except ValueError as exc:
        raise PayGateError(f"PayGate amount is not a number: {raw!r}") from exc
    if not value.is_integer():
        raise PayGateError(f"PayGate amount is not a whole number of XOF: {raw!r}")
    return int(value)


def normalise_datetime(raw: object) -> float | None:
    """ISO 8601 with or without milliseconds / 'Z' / offset -> unix seconds (naive = UTC)."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        try:
            value = float(raw)
        except OverflowError:  # an int too large for a float (a fuzzer's favourite)
            value = math.inf
        if not math.isfinite(value):
            log.warning("PayGate datetime not understood: %r", raw)
            return None
        return value
    text = str(raw).strip().replace(" ", "T", 1)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        log.warning("PayGate datetime not understood: %r", raw)
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _text(raw: object) -> str | None:
    if raw is None or isinstance(raw, bool):
        return None
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    text = str(raw).strip()
    return text or None


def _status_code(raw: object) -> int | None:
    if isinstance(raw, bool) or raw is None:
        return None
    try:
        return int(str(raw).strip())
    except ValueError:
        return None


def parse_status(identifier: str, body: dict[str, Any]) -> PayGateStatus | None:
    """Normalise a status answer; None when it says PayGate does not know ``identifier``."""
    code = _status_code(body.get("status"))
    if code is None:
        return None  # an error object ({"error_code":..,"message":..}) rather than a status
    answered_for = _text(body.get("identifier"))
    if answered_for is not None and answered_for != identifier:
        log.warning("PayGate status answered for another identifier %s", answered_for)
        return None
    phone: str | None = None
    raw_phone = body.get("phone_number")
    if raw_phone not in (None, ""):
        try:
            phone = normalise_phone(str(raw_phone))
        except PhoneError:
            log.warning("PayGate phone number not understood")
    return PayGateStatus(
        identifier=identifier,
        status=code,
        tx_reference=_text(body.get("tx_reference")),
        amount=normalise_amount(body.get("amount")),
        payment_reference=_text(body.get("payment_reference")),
        payment_method=normalise_network(body.get("payment_method")),
        phone_e164=phone,
        paid_at=normalise_datetime(body.get("datetime")),
    )


# --- client -----------------------------------------------------------------------------


class PayGateClient:
    """Thin sync client; one connection pool, short timeouts, the token never logged."""

    def __init__(self, base_url: str, auth_token: str, *, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self._auth_token = auth_token
        self._http = JsonHttp(self.base_url, timeout_s=timeout_s)

    def __repr__(self) -> str:
        return f"PayGateClient({self.base_url!r})"

    def close(self) -> None:
        self._http.close()

    def _post(self, path: str, payload: dict[str, Any]) -> Reply:
        body = {"auth_token": self._auth_token, **payload}
        try:
            resp = self._http.request("POST", path, json=body)
        except TransportFailed as exc:  # connect, read, timeouts, protocol errors
            raise PayGateUnavailable(f"PayGate {path}: {exc}") from exc
        if resp.status_code >= 500:
            raise PayGateUnavailable(f"PayGate {path} answered HTTP {resp.status_code}")
        return resp

    @staticmethod
    def _json(resp: Reply, path: str) -> dict[str, Any]:
        try:
            data = resp.json()
        except ValueError as exc:
            raise PayGateError(f"PayGate {path} answered non-JSON (HTTP {resp.status_code})") \
                from exc
        if not isinstance(data, dict):
            raise PayGateError(f"PayGate {path} answered {type(data).__name__}, not an object")
        return data

    def pay(
        self, *, phone_local: str, amount: int, description: str, identifier: str, network: str
    ) -> PayResult:
        """POST /api/v1/pay: ask the customer's phone to approve ``amount`` XOF."""
        path = "/api/v1/pay"
        resp = self._post(path, {
            "phone_number": phone_local, "amount": amount, "description": description,
            "identifier": identifier, "network": network,
        })
        data = self._json(resp, path)
        code = _status_code(data.get("status"))
        if code is None:
            raise PayGateError(f"PayGate {path} answered without a status (HTTP "
                               f"{resp.status_code})")
        return PayResult(tx_reference=_text(data.get("tx_reference")) or "", status=code)

    def status_by_identifier(self, identifier: str) -> PayGateStatus | None:
        """POST /api/v2/status; None when PayGate does not know the identifier."""
        path = "/api/v2/status"
        resp = self._post(path, {"identifier": identifier})
        if resp.status_code == 404:
            return None  # "Transaction non trouvée."
        if resp.status_code == 401:
            raise PayGateError(f"PayGate {path} refused our auth token (HTTP 401)")
        data = self._json(resp, path)
        if resp.status_code >= 400 or "error_code" in data:
            if _not_found(data):
                return None
            raise PayGateError(
                f"PayGate {path} answered HTTP {resp.status_code} error_code "
                f"{data.get('error_code')!r}"
            )
        return parse_status(identifier, data)


def _not_found(data: dict[str, Any]) -> bool:
    """PayGate's 'unknown transaction' error, whatever HTTP code carries it."""
    message = str(data.get("error_message") or data.get("message") or "").lower()
    return "trouv" in message or "not found" in message or "unknown" in message
