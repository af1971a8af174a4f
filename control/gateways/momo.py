"""MTN MoMo Open API, collections product (sync, pooled urllib3): request-to-pay and its status.

A callback carries no signature and no referenceId: it only tells us to look, and
``GET /collection/v1_0/requesttopay/{referenceId}`` is the verdict. Network errors,
timeouts and 5xx raise ``MoMoUnavailable`` (retry later, never credit). The API user's
key and the subscription key are never logged.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from control.gateways.http_json import JsonHttp, Reply, TransportFailed
from control.ledger import money
from control.ledger.phone import PhoneError, normalise_phone

log = logging.getLogger(__name__)

PENDING, SUCCESSFUL, FAILED = "PENDING", "SUCCESSFUL", "FAILED"
FINAL = (SUCCESSFUL, FAILED)


class MoMoError(RuntimeError):
    """MoMo answered with something we cannot act on (bad credentials, bad request)."""


class MoMoUnavailable(MoMoError):
    """MoMo could not be reached or failed (timeout, network, 5xx): retry, never credit."""


@dataclass(frozen=True, slots=True)
class MoMoStatus:
    """A normalised request-to-pay status (the GET answer; callbacks have the same shape)."""

    status: str  # PENDING | SUCCESSFUL | FAILED (anything else is kept upper-cased)
    amount: int | None
    currency: str | None
    external_id: str | None
    financial_transaction_id: str | None
    payer_e164: str | None
    reason: str | None

    @property
    def final(self) -> bool:
        return self.status in FINAL


def parse_status(body: dict[str, Any]) -> MoMoStatus:
    """Amounts come as strings or numbers; ``reason`` as a code string or {code, message}."""
    amount: int | None
    try:
        amount = money.parse_amount(body.get("amount"))
    except money.AmountError:
        amount = None
    payer = body.get("payer")
    phone: str | None = None
    if isinstance(payer, dict) and payer.get("partyId") not in (None, ""):
        try:
            phone = normalise_phone(str(payer["partyId"]))
        except PhoneError:
            phone = None
    reason = body.get("reason")
    if isinstance(reason, dict):
        reason = reason.get("code") or reason.get("message")
    ftid = body.get("financialTransactionId")
    ext = body.get("externalId")
    currency = body.get("currency")
    return MoMoStatus(
        status=str(body.get("status") or "").strip().upper(),
        amount=amount,
        currency=str(currency).strip().upper() if currency is not None else None,
        external_id=str(ext) if ext not in (None, "") else None,
        financial_transaction_id=str(ftid) if ftid not in (None, "") else None,
        payer_e164=phone,
        reason=str(reason) if reason else None,
    )


class MoMoClient:
    """Thin sync client with a cached bearer token (refreshed before expiry or on 401)."""

    def __init__(self, base_url: str, *, subscription_key: str, api_user: str, api_key: str,
                 target_environment: str, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self._subscription_key = subscription_key
        self._auth = (api_user, api_key)
        self.target_environment = target_environment
        self._http = JsonHttp(self.base_url, timeout_s=timeout_s)
        self._token: str | None = None
        self._token_expires = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MoMoClient({self.base_url!r})"

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kw: Any) -> Reply:
        try:
            resp = self._http.request(method, path, **kw)
        except TransportFailed as exc:
            raise MoMoUnavailable(f"MoMo {path}: {exc}") from exc
        if resp.status_code >= 500:
            raise MoMoUnavailable(f"MoMo {path} answered HTTP {resp.status_code}")
        return resp

    def _bearer(self, *, refresh: bool = False) -> str:
        with self._lock:
            if refresh or self._token is None or time.monotonic() >= self._token_expires:
                resp = self._call("POST", "/collection/token/", auth=self._auth, headers={
                    "Ocp-Apim-Subscription-Key": self._subscription_key})
                if resp.status_code != 200:
                    raise MoMoError(f"MoMo token refused (HTTP {resp.status_code})")
                data = resp.json()
                self._token = str(data["access_token"])
                self._token_expires = time.monotonic() + float(data.get("expires_in", 3600)) - 60
            return self._token

    def _headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}",
                "X-Target-Environment": self.target_environment,
                "Ocp-Apim-Subscription-Key": self._subscription_key}

    def _authorised(self, method: str, path: str, headers: dict[str, str] | None = None,
                    **kw: Any) -> Reply:
        resp = self._call(method, path, headers={**self._headers(self._bearer()),
                                                 **(headers or {})}, **kw)
        if resp.status_code == 401:  # token revoked or expired early: once more
            resp = self._call(method, path, headers={
                **self._headers(self._bearer(refresh=True)), **(headers or {})}, **kw)
        return resp

    def request_to_pay(self, *, reference_id: str, amount: int, currency: str,
                       external_id: str, phone_e164: str, callback_url: str | None,
                       message: str) -> None:
        """POST requesttopay; MoMo answers 202 and the customer approves on the phone."""
        headers = {"X-Reference-Id": reference_id}
        if callback_url:
            headers["X-Callback-Url"] = callback_url
        body = {"amount": str(amount), "currency": currency, "externalId": external_id,
                "payer": {"partyIdType": "MSISDN", "partyId": phone_e164.lstrip("+")},
                "payerMessage": message, "payeeNote": message}
        resp = self._authorised("POST", "/collection/v1_0/requesttopay", headers, json=body)
        if resp.status_code != 202:
            raise MoMoError(f"MoMo requesttopay answered HTTP {resp.status_code}: "
                            f"{_code(resp)}")

    def status(self, reference_id: str) -> MoMoStatus | None:
        """GET requesttopay/{referenceId}; None when MoMo does not know it (404)."""
        resp = self._authorised("GET", f"/collection/v1_0/requesttopay/{reference_id}")
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise MoMoError(f"MoMo status answered HTTP {resp.status_code}: {_code(resp)}")
        try:
            data = resp.json()
        except ValueError as exc:
            raise MoMoUnavailable("MoMo status answered non-JSON") from exc
        if not isinstance(data, dict):
            raise MoMoUnavailable("MoMo status answered a non-object")
        return parse_status(data)


def _code(resp: Reply) -> str:
    try:
        data = resp.json()
    except ValueError:
        return "(no JSON)"
    return str(data.get("code", "")) if isinstance(data, dict) else "(no code)"
