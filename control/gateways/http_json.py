"""Pooled, thread-safe sync JSON over HTTP for the mobile-money clients, on urllib3.

The provider's status check sits on the payment hot path (one per callback): urllib3 does
it for about a third of httpx's CPU per call (bench/payments.py). No retries here: the
callers decide (a provider that is down means "pending, retry later", never a credit).
"""

from __future__ import annotations

import json as jsonlib
from dataclasses import dataclass
from typing import Any

import urllib3


class TransportFailed(Exception):
    """No HTTP answer: refused, reset, timed out, protocol error."""


@dataclass(frozen=True, slots=True)
class Reply:
    status_code: int
    content: bytes

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return jsonlib.loads(self.content)


class JsonHttp:
    def __init__(self, base_url: str, *, timeout_s: float, maxsize: int = 32) -> None:
        self.base_url = base_url.rstrip("/")
        self._pool = urllib3.PoolManager(num_pools=4, maxsize=maxsize, retries=False,
                                         timeout=urllib3.Timeout(total=timeout_s))

    def request(self, method: str, path: str, *, json: Any = None,
                headers: dict[str, str] | None = None,
                auth: tuple[str, str] | None = None) -> Reply:
        hdrs = dict(headers or {})
        body: bytes | None = None
        if json is not None:
            body = jsonlib.dumps(json).encode()
            hdrs["Content-Type"] = "application/json"
        if auth is not None:
            hdrs.update(urllib3.util.make_headers(basic_auth=f"{auth[0]}:{auth[1]}"))
        try:
            resp = self._pool.request(method, self.base_url + path, body=body, headers=hdrs)
        except urllib3.exceptions.HTTPError as exc:
            raise TransportFailed(type(exc).__name__) from exc
        return Reply(resp.status, resp.data)

    def close(self) -> None:
        self._pool.clear()
