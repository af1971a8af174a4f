"""The one way the public endpoints (provider callbacks, the agents' webhook) read a body.

Anyone on the Internet can send these endpoints anything, so the body is refused with a
clear 4xx (control.api.errors: ``detail``, a stable ``code``, a translated ``message``)
before it costs anything:
a wrong content type, a body larger than ``api_max_body_bytes`` (by its Content-Length,
unread, or by counting what arrives), one that does not arrive in full within
``api_body_timeout_s`` (uvicorn has no body timeout: a client sending a byte a second
would hold a task for ever), an empty body, invalid UTF-8, JSON nested deeper than
``MAX_DEPTH``, NaN or Infinity, duplicate keys, or anything but a JSON object. A refusal
before the whole body was read closes the connection, so the unread rest is never parsed
as a next request.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from itertools import accumulate
from typing import Any

from fastapi import Request, status
from starlette.requests import ClientDisconnect

from cizo.i18n import N_
from cizo.settings import Settings

# Providers' callbacks are a few levels deep (MoMo's payer object is the deepest).
MAX_DEPTH = 32

# code -> (HTTP status, message): the English wording, each a msgid of cizo/locale's
# catalogs (tests/test_i18n.py checks each is translated)
REFUSALS: dict[str, tuple[int, str]] = {
    "unsupported_media_type": (status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                               N_("send the body as Content-Type: application/json")),
    "body_too_large": (status.HTTP_413_CONTENT_TOO_LARGE, N_("the body is too large")),
    "body_timeout": (status.HTTP_408_REQUEST_TIMEOUT, N_("the body was not received in time")),
    "body_incomplete": (status.HTTP_400_BAD_REQUEST, N_("the client left before the body ended")),
    "body_empty": (status.HTTP_400_BAD_REQUEST, N_("empty body")),
    "body_not_utf8": (status.HTTP_400_BAD_REQUEST, N_("the body is not valid UTF-8")),
    "body_too_deep": (status.HTTP_400_BAD_REQUEST,
                      f"the JSON body is nested more than {MAX_DEPTH} levels deep"),
    "body_not_json": (status.HTTP_400_BAD_REQUEST, N_("the body is not JSON")),
    "body_not_finite": (status.HTTP_400_BAD_REQUEST,
                        N_("the JSON body holds NaN or Infinity, which JSON does not allow")),
    "body_duplicate_key": (status.HTTP_400_BAD_REQUEST, N_("the JSON body repeats a key")),
    "body_not_object": (status.HTTP_422_UNPROCESSABLE_CONTENT,
                        N_("the body must be a JSON object")),
}
# refused before the whole body was read: the connection cannot serve another request
_UNREAD = frozenset({"body_too_large", "body_timeout", "body_incomplete"})


class BodyRefused(Exception):
    """A request body refused at the door; control.api.errors answers it."""

    def __init__(self, code: str) -> None:
        self.status, self.message = REFUSALS[code]
        self.code = code
        # refused unread: the connection cannot serve another request
        self.headers = {"Connection": "close"} if code in _UNREAD else None
        super().__init__(f"{code}: {self.message}")


async def read_raw(request: Request, settings: Settings, *,
                   media_types: tuple[str, ...] = ("application/json",),
                   limit: int | None = None) -> bytes:
    """The whole body as bytes, within the size (``limit``, else ``api_max_body_bytes``)
    and time limits, or ``BodyRefused``."""
    if media_type(request) not in media_types:
        raise BodyRefused("unsupported_media_type")
    limit = settings.api_max_body_bytes if limit is None else limit
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyRefused("body_too_large")  # refused unread
    raw = bytearray()
    try:
        # asyncio's own deadline: a quarter of anyio.fail_after's cost per request, and
        # uvicorn runs the app on asyncio
        async with asyncio.timeout(settings.api_body_timeout_s):
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > limit:  # a chunked body, or one longer than it said
                    raise BodyRefused("body_too_large")
    except TimeoutError as exc:
        raise BodyRefused("body_timeout") from exc
    except ClientDisconnect as exc:
        raise BodyRefused("body_incomplete") from exc
    return bytes(raw)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))


def depth(raw: bytes) -> int:
    """How deeply ``raw`` nests arrays and objects, counted before parsing so a deep body
    never reaches the recursive parser (brackets inside strings do not count)."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    return max(accumulate(1 if b in b"[{" else -1 for b in brackets), default=0)


def too_deep(raw: bytes) -> bool:
    # fewer opening brackets than the limit cannot nest deeper: most bodies skip the scan
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return False
    return depth(raw) > MAX_DEPTH


class _Refuse(ValueError):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999
        raise _Refuse("body_not_finite")
    return value


def _no_constants(name: str) -> Any:
    raise _Refuse("body_not_finite")  # NaN, Infinity, -Infinity


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Refuse("body_duplicate_key")
    return obj


def json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` as a strict JSON object, or ``BodyRefused``."""
    if not raw.strip():
        raise BodyRefused("body_empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyRefused("body_not_utf8") from exc
    if too_deep(raw):
        raise BodyRefused("body_too_deep")
    try:
        body = json.loads(text, parse_float=_finite, parse_constant=_no_constants,
                          object_pairs_hook=_unique_keys)
    except _Refuse as exc:
        raise BodyRefused(exc.code) from exc
    except ValueError as exc:  # JSONDecodeError, and integers too long to convert
        raise BodyRefused("body_not_json") from exc
    if not isinstance(body, dict):
        raise BodyRefused("body_not_object")
    return body


async def read_json_object(request: Request, settings: Settings) -> dict[str, Any]:
    """``read_raw`` then ``json_object``: the body of an endpoint that needs no raw bytes."""
    return json_object(await read_raw(request, settings))
