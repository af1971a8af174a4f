"""A small InfluxDB client for the v1 wire API (``/write``, ``/query``, ``/ping``).

That API is the one InfluxDB 1.x serves natively, 2.x through DBRP mappings and 3.x
Core directly, so one client covers every version we may be deployed on. Auth is a
``Token`` header (2.x/3.x) when a token is set, else ``u``/``p`` parameters (1.x).

Writes can instead go through influxdb-client's native 2.x API (``/api/v2/write`` with
org and bucket; setting ``influx_write_api = "v2"``), for a 2.x server without DBRP
mappings. Queries stay on the v1 API.

Errors are sorted for the caller (telemetry.errors): 5xx, 429 and connection failures
are retryable (:class:`InfluxUnavailable`); other 4xx carry the server's own message.
"""

from __future__ import annotations

import gzip as _gzip
import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from cizo.settings import Settings
from telemetry.errors import (
    InfluxQueryError,
    InfluxUnavailable,
    InfluxWriteRejected,
)
from telemetry.schema import PRECISION, TAG_KIT_ID, TELEMETRY_MEASUREMENT

log = logging.getLogger(__name__)


def quote_string(value: str) -> str:
    """An InfluxQL string literal: the value can never end the literal early."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"


def quote_ident(name: str) -> str:
    """An InfluxQL double-quoted identifier (database, measurement, tag names)."""
    escaped = name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _error_text(response: httpx.Response) -> str:
    """The server's ``{"error": ...}`` message, or the raw body."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500]
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    if isinstance(body, dict) and isinstance(body.get("message"), str):  # 2.x style
        return str(body["message"])
    return response.text.strip()[:500]


def _is_retryable(status_code: int) -> bool:
    return status_code >= 500 or status_code == 429


class InfluxClient:
    """Writes line protocol and runs InfluxQL against one database (and optional RP)."""

    def __init__(
        self,
        url: str,
        db: str,
        *,
        rp: str | None = None,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 10.0,
        gzip: bool = False,
        transport: httpx.BaseTransport | None = None,
        write_api: str = "v1",
        org: str | None = None,
        bucket: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.db = db
        self.rp = rp
        self.gzip = gzip
        if write_api not in ("v1", "v2"):
            raise ValueError(f"write_api must be 'v1' or 'v2', not {write_api!r}")
        self.write_api = write_api
        self._v2: _V2Writer | None = None
        if write_api == "v2":
            self._v2 = _V2Writer(
                self.url, token=token or "", org=org or "",
                bucket=bucket or (f"{db}/{rp}" if rp else db), timeout_s=timeout_s, gzip=gzip,
            )
        headers: dict[str, str] = {}
        self._auth_params: dict[str, str] = {}
        if token:
            headers["Authorization"] = f"Token {token}"
        elif username:
            self._auth_params = {"u": username, "p": password or ""}
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 3.0)),
            transport=transport,
        )

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> InfluxClient:
        """The client the ``influx_*`` settings describe; keyword overrides win."""
        kwargs: dict[str, Any] = {
            "rp": settings.influx_rp,
            "token": settings.influx_token.get_secret_value() if settings.influx_token else None,
            "username": settings.influx_username,
            "write_api": settings.influx_write_api,
            "org": settings.influx_org,
            "bucket": settings.influx_bucket,
            "password": (
                settings.influx_password.get_secret_value() if settings.influx_password else None
            ),
        }
        kwargs.update(overrides)
        return cls(settings.influx_url, settings.influx_db, **kwargs)

    # --- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()
        if self._v2 is not None:
            self._v2.close()

    def __enter__(self) -> InfluxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- requests ---------------------------------------------------------------------

    def _post(
        self, path: str, *, params: dict[str, str], content: bytes | None = None,
        data: dict[str, str] | None = None, headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        try:
            return self._http.post(
                path, params={**params, **self._auth_params}, content=content, data=data,
                headers=headers,
            )
        except httpx.TransportError as exc:  # connect refused, reset, timeout, ...
            raise InfluxUnavailable(f"{path}: {type(exc).__name__}: {exc}") from exc

    def ping(self) -> bool:
        """True when the server answers ``/ping``; never raises."""
        try:
            response = self._http.get("/ping", timeout=2.0)
        except httpx.TransportError as exc:
            log.debug("influx ping failed: %s", exc)
            return False
        return response.status_code == 204

    def write(self, body: bytes) -> None:
        """POST one line-protocol batch (``precision=s``); raises on anything but 204."""
        if self._v2 is not None:
            self._v2.write(body)
            return
        params = {"db": self.db, "precision": PRECISION}
        if self.rp:
            params["rp"] = self.rp
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.gzip:
            body = _gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        response = self._post("/write", params=params, content=body, headers=headers)
        if response.status_code == 204 or response.status_code == 200:
            return
        error = _error_text(response)
        if _is_retryable(response.status_code):
            raise InfluxUnavailable(f"/write: HTTP {response.status_code}: {error}",
                                    response.status_code)
        raise InfluxWriteRejected(response.status_code, error)

    def query(
        self,
        q: str,
        *,
        params: Mapping[str, Any] | None = None,
        epoch: str | None = "s",
        db: str | None = None,
    ) -> list[dict[str, Any]]:
        """Run InfluxQL; every row of every series as a dict, with the series' tags merged.

        ``params`` are InfluxQL bind parameters (``$name``) where the server supports
        them; ``epoch="s"`` returns ``time`` as unix seconds, like the writes.
        """
        return _rows(self.query_series(q, params=params, epoch=epoch, db=db))

    def query_series(
        self,
        q: str,
        *,
        params: Mapping[str, Any] | None = None,
        epoch: str | None = "s",
        db: str | None = None,
        chunk_size: int | None = None,
    ) -> list[dict[str, Any]]:
        """Run InfluxQL; the series as the server sends them (``tags``, ``columns``,
        ``values``): for bulk reads that build arrays without a dict per row.

        ``chunk_size``: the server streams the answer in chunks of that many points (a
        series may come in several parts) instead of building it whole, which is several
        times faster on 1.x for large answers; ``stream_series`` hands them over one by one.
        """
        if chunk_size:
            return [one for part in self.stream_series(q, chunk_size, params=params,
                                                       epoch=epoch, db=db) for one in part]
        response = self._post("/query", params=self._query_params(epoch, db),
                              data=self._query_form(q, params))
        _raise_for_query(response)
        try:
            return _series(response.json(), response.status_code)
        except ValueError as exc:
            raise InfluxQueryError(response.status_code, "response is not JSON") from exc

    def stream_series(
        self,
        q: str,
        chunk_size: int,
        *,
        params: Mapping[str, Any] | None = None,
        epoch: str | None = "s",
        db: str | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Run InfluxQL; the series of each chunk of ``chunk_size`` points as it arrives,
        so a reader of millions of points holds one chunk of them at a time."""
        url_params = {**self._query_params(epoch, db), "chunked": "true",
                      "chunk_size": str(chunk_size), **self._auth_params}
        try:
            with self._http.stream("POST", "/query", params=url_params,
                                   data=self._query_form(q, params)) as response:
                if response.status_code != 200:
                    response.read()
                    _raise_for_query(response)
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    try:
                        payload = json.loads(line)
                    except ValueError as exc:
                        raise InfluxQueryError(200, "response is not JSON") from exc
                    yield _series(payload, 200)
        except httpx.TransportError as exc:  # refused, reset, or cut off mid-answer
            raise InfluxUnavailable(f"/query: {type(exc).__name__}: {exc}") from exc

    def _query_params(self, epoch: str | None, db: str | None) -> dict[str, str]:
        out: dict[str, str] = {"db": self.db if db is None else db}
        if not out["db"]:
            del out["db"]
        if epoch:
            out["epoch"] = epoch
        return out

    @staticmethod
    def _query_form(q: str, params: Mapping[str, Any] | None) -> dict[str, str]:
        form = {"q": q}
        if params:
            form["params"] = json.dumps(dict(params))
        return form

    def create_database(self) -> None:
        """``CREATE DATABASE`` (idempotent on 1.x; 2.x/3.x refuse it: buckets exist there)."""
        self.query(f"CREATE DATABASE {quote_ident(self.db)}", db="", epoch=None)

    def last_telemetry(self, kit_id: str) -> dict[str, Any] | None:
        """The newest ``kit_telemetry`` point of one kit, or None.

        The kit id is an InfluxQL string literal built by :func:`quote_string`, which
        works on every server version (bind parameters are not served by all of them),
        and cannot be escaped out of: a kit id is only ever compared, never parsed as query
        text.
        """
        q = (
            f"SELECT * FROM {quote_ident(TELEMETRY_MEASUREMENT)} "
            f"WHERE {quote_ident(TAG_KIT_ID)} = {quote_string(kit_id)} "
            "ORDER BY time DESC LIMIT 1"
        )
        rows = self.query(q)
        return rows[0] if rows else None


class _V2Writer:
    """influxdb-client's synchronous write API, with its errors mapped to ours.

    The library's own retries are off: the bridge decides when to retry (and spools).
    """

    def __init__(self, url: str, *, token: str, org: str, bucket: str, timeout_s: float,
                 gzip: bool) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS
        from influxdb_client.domain.write_precision import WritePrecision

        self.org = org
        self.bucket = bucket
        self._precision: Any = WritePrecision.S
        self._client = InfluxDBClient(url=url, token=token, org=org,
                                      timeout=int(timeout_s * 1000), enable_gzip=gzip,
                                      retries=False)
        self._api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, body: bytes) -> None:
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError as Urllib3Error

        try:
            self._api.write(bucket=self.bucket, org=self.org, record=body,
                            write_precision=self._precision)
        except ApiException as exc:
            status = int(exc.status or 0)
            error = _v2_error_text(exc.body)
            if status == 0 or _is_retryable(status):
                raise InfluxUnavailable(f"/api/v2/write: HTTP {status}: {error}",
                                        status or None) from exc
            raise InfluxWriteRejected(status, error) from exc
        except (Urllib3Error, OSError) as exc:
            raise InfluxUnavailable(f"/api/v2/write: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]
        self._client.close()  # type: ignore[no-untyped-call]


def _v2_error_text(body: Any) -> str:
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    try:
        parsed = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        return str(parsed["message"])
    return text.strip()[:500]


def _raise_for_query(response: httpx.Response) -> None:
    if _is_retryable(response.status_code):
        raise InfluxUnavailable(
            f"/query: HTTP {response.status_code}: {_error_text(response)}",
            response.status_code,
        )
    if response.status_code != 200:
        raise InfluxQueryError(response.status_code, _error_text(response))


def _series(payload: Any, status_code: int) -> list[dict[str, Any]]:
    if not isinstance(payload, dict):
        raise InfluxQueryError(status_code, "unexpected response shape")
    if isinstance(payload.get("error"), str):
        raise InfluxQueryError(status_code, payload["error"])
    out: list[dict[str, Any]] = []
    for result in payload.get("results") or []:
        if "error" in result:
            raise InfluxQueryError(status_code, str(result["error"]))
        out.extend(result.get("series") or [])
    return out


def _rows(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for one in series:
        tags = one.get("tags") or {}
        columns = one.get("columns") or []
        for values in one.get("values") or []:
            row = dict(zip(columns, values, strict=False))
            row.update(tags)
            rows.append(row)
    return rows
