"""Every error answer of the API, made in one place.

The body is ``{"detail": ..., "code": ..., "message": ...}``: ``detail`` is the English
sentence (or request validation's list) clients already read, ``code`` is stable and
machine-readable, ``message`` says the same in the caller's language — the first of
``cizo.i18n.LOCALES`` its ``Accept-Language`` prefers, else ``default_locale`` — which
``Content-Language`` names. Routes raise ``ApiError``; the handlers installed here turn it,
Starlette's own errors, request validation and the domain refusals into that body.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException

from cizo.i18n import N_, gettext, negotiate
from control.api import bodies
from control.fleet.messages import MESSAGES, Refused
from control.support import actions

log = logging.getLogger(__name__)

# an error raised without a code of its own (Starlette's 404/405, a plain HTTPException)
# gets its status's
_BY_STATUS: dict[int, tuple[str, str]] = {
    400: ("bad_request", N_("the request is not valid")),
    401: ("unauthorized", N_("a valid API key is needed")),
    403: ("forbidden", N_("this key may not do this")),
    404: ("not_found", N_("not found")),
    405: ("method_not_allowed", N_("this method is not allowed here")),
    408: ("request_timeout", N_("the request was not received in time")),
    409: ("conflict", N_("the request conflicts with the current state")),
    413: ("content_too_large", N_("the request is too large")),
    415: ("unsupported_media_type", N_("this content type is not accepted")),
    422: ("unprocessable", N_("a value in the request is not accepted")),
    429: ("too_many_requests", N_("too many requests; retry later")),
    502: ("bad_gateway", N_("the payment provider failed; retry later")),
    503: ("unavailable", N_("service unavailable; retry later")),
}
_OTHER = ("error", N_("the request failed"))

# what a support action refuses (control.support.actions): status, code, message
_ACTIONS: dict[type[Exception], tuple[int, str, str]] = {
    actions.KitNotFound: (status.HTTP_404_NOT_FOUND, "kit_not_found", N_("kit not found")),
    actions.NeedsAdmin: (status.HTTP_403_FORBIDDEN, "needs_admin",
                         N_("only an admin may do this")),
    actions.SupportError: (status.HTTP_409_CONFLICT, "action_refused",
                           N_("the kit's state does not allow this action")),
    actions.TokenError: (status.HTTP_422_UNPROCESSABLE_CONTENT, "token_refused",
                         N_("no keypad token can be made for this kit")),
}


def status_message(status_code: int) -> str:
    """The msgid of what a status means, for an error without wording of its own."""
    return _BY_STATUS.get(status_code, _OTHER)[1]


class ApiError(HTTPException):
    """An error answer with its stable ``code`` and its English ``msgid`` (marked ``N_``),
    filled with ``params``; ``detail`` replaces the English sentence when a domain error
    already words it (``str(exc)``)."""

    def __init__(self, status_code: int, code: str, msgid: str, *,
                 detail: Any = None, headers: dict[str, str] | None = None,
                 **params: Any) -> None:
        super().__init__(status_code, detail=_fill(msgid, params) if detail is None else detail,
                         headers=headers)
        self.code = code
        self.msgid = msgid
        self.params = params


def _fill(msgid: str, params: dict[str, Any]) -> str:
    return msgid.format(**params) if params else msgid


def request_locale(request: Request) -> str:
    """The caller's language: its Accept-Language, else the stack's ``default_locale``."""
    default: str = request.app.state.rt.settings.default_locale
    return negotiate(request.headers.get("accept-language"), default)


def problem(request: Request, status_code: int, code: str, msgid: str, *,
            detail: Any = None, headers: Mapping[str, str] | None = None,
            params: dict[str, Any] | None = None) -> JSONResponse:
    """The one error body of the API."""
    params = params or {}
    locale = request_locale(request)
    body = {"detail": _fill(msgid, params) if detail is None else detail, "code": code,
            "message": gettext(locale, msgid, **params)}
    return JSONResponse(body, status_code=status_code,
                        headers={**(headers or {}), "Content-Language": locale})


def install(app: FastAPI) -> None:
    """Route every error of ``app`` through ``problem``."""

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        if isinstance(exc, ApiError):
            return problem(request, exc.status_code, exc.code, exc.msgid, detail=exc.detail,
                           headers=exc.headers, params=exc.params)
        code, msgid = _BY_STATUS.get(exc.status_code, _OTHER)
        return problem(request, exc.status_code, code, msgid, detail=exc.detail,
                       headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(request, status.HTTP_422_UNPROCESSABLE_CONTENT, "request_invalid",
                       N_("the request is not valid; detail lists what to change"),
                       detail=jsonable_encoder(exc.errors()))

    @app.exception_handler(OperationalError)
    async def _database_down(request: Request, exc: OperationalError) -> JSONResponse:
        # the database is away or busy: say so, and let clients and providers retry
        log.error("database error on %s: %s", request.url.path, type(exc).__name__)
        return problem(request, status.HTTP_503_SERVICE_UNAVAILABLE, "database_unavailable",
                       N_("database unavailable; retry later"), headers={"Retry-After": "30"})

    # an id or number beyond what the database column holds (the API fuzzer sends them) is
    # the client's error, not a crash: SQLite raises OverflowError, PostgreSQL DataError
    @app.exception_handler(OverflowError)
    @app.exception_handler(DataError)
    async def _out_of_range(request: Request, exc: Exception) -> JSONResponse:
        log.warning("value out of range on %s: %s", request.url.path, type(exc).__name__)
        return problem(request, status.HTTP_422_UNPROCESSABLE_CONTENT, "out_of_range",
                       N_("a value in the request is out of range"))

    @app.exception_handler(bodies.BodyRefused)
    async def _body_refused(request: Request, exc: bodies.BodyRefused) -> JSONResponse:
        log.info("body refused on %s: %s", request.url.path, exc.code)
        return body_refused(request, exc)

    async def _action_refused(request: Request, exc: Exception) -> JSONResponse:
        code, name, msgid = next(v for kind, v in _ACTIONS.items() if isinstance(exc, kind))
        if isinstance(exc, actions.KitNotFound):  # worded with its kit
            return problem(request, code, name, exc.msgid, params={"kit_id": exc.kit_id})
        return problem(request, code, name, msgid, detail=str(exc))

    for kind in _ACTIONS:
        app.add_exception_handler(kind, _action_refused)

    # the kit list, import and exports refuse with a stable code (control.fleet.messages)
    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> JSONResponse:
        return problem(request, exc.status, exc.code, MESSAGES[exc.code], params=exc.params)


def body_refused(request: Request, exc: bodies.BodyRefused) -> JSONResponse:
    """A body refused at the door; the connection closes when the body was not all read."""
    return problem(request, exc.status, exc.code, exc.message, headers=exc.headers)
