"""The control service's HTTP API: one FastAPI app over a ``Runtime``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.responses import FileResponse, JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import DataError, OperationalError
from starlette.types import Lifespan

from control.api import bodies, dashboard, exports, finance, keys, kits, payments, support
from control.api.auth import RuntimeDep
from control.api.schemas import Health, Problem
from control.fleet.messages import Refused
from control.runtime import Runtime
from control.support import actions

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent.parent / "static"


def create_app(rt: Runtime, *, lifespan: Lifespan[FastAPI] | None = None) -> FastAPI:
    """Build the app; the caller's ``lifespan`` starts the MQTT link and the scheduler."""
    app = FastAPI(
        title="CIZO kit backend",
        version="1",
        summary="PAYG solar home kits: provisioning, credit, signed lock/unlock commands",
        lifespan=lifespan,
    )
    app.state.rt = rt

    @app.exception_handler(OperationalError)
    async def _database_down(request: Request, exc: OperationalError) -> JSONResponse:
        # the database is away or busy: say so, and let clients and providers retry
        log.error("database error on %s: %s", request.url.path, type(exc).__name__)
        return JSONResponse({"detail": "database unavailable; retry later"},
                            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                            headers={"Retry-After": "30"})

    # an id or number beyond what the database column holds (the API fuzzer sends them) is
    # the client's error, not a crash: SQLite raises OverflowError, PostgreSQL DataError
    @app.exception_handler(OverflowError)
    @app.exception_handler(DataError)
    async def _out_of_range(request: Request, exc: Exception) -> JSONResponse:
        log.warning("value out of range on %s: %s", request.url.path, type(exc).__name__)
        return JSONResponse({"detail": "a value in the request is out of range"},
                            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(bodies.BodyRefused)
    async def _body_refused(request: Request, exc: bodies.BodyRefused) -> JSONResponse:
        log.info("body refused on %s: %s", request.url.path, exc.code)
        return exc.answer()

    # what a support action refuses, as HTTP answers (control.support.actions)
    errors: dict[type[Exception], int] = {
        actions.KitNotFound: status.HTTP_404_NOT_FOUND,
        actions.NeedsAdmin: status.HTTP_403_FORBIDDEN,
        actions.SupportError: status.HTTP_409_CONFLICT,
        actions.TokenError: status.HTTP_422_UNPROCESSABLE_CONTENT,
    }

    async def _refused(request: Request, exc: Exception) -> JSONResponse:
        code = next(c for kind, c in errors.items() if isinstance(exc, kind))
        return JSONResponse({"detail": str(exc)}, status_code=code)

    for kind in errors:
        app.add_exception_handler(kind, _refused)

    # the kit list, import and exports refuse with a stable code (control.fleet.messages)
    @app.exception_handler(Refused)
    async def _refused_with_code(request: Request, exc: Refused) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.get("/healthz", response_model=Health, tags=["health"],
             summary="The process is alive")
    def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, tags=["health"],
             responses={503: {"model": Problem}}, summary="The database answers")
    def readyz(rt: RuntimeDep) -> Health | JSONResponse:
        try:
            with rt.db.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            log.warning("not ready: database does not answer (%s)", type(exc).__name__)
            return JSONResponse({"detail": "database unavailable"},
                                status_code=status.HTTP_503_SERVICE_UNAVAILABLE)
        return Health(status="ready")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/dashboard", include_in_schema=False)
    def dashboard_page() -> FileResponse:
        # the fleet and kit pages (charts); "/" serves the plain kit list
        return FileResponse(STATIC / "dashboard.html", media_type="text/html")

    @app.get("/static/{name}", include_in_schema=False)
    def static_file(name: str) -> FileResponse:
        path = (STATIC / name).resolve()
        if path.parent != STATIC.resolve() or not path.is_file():
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail="not found")
        return FileResponse(path)

    app.include_router(kits.router)
    app.include_router(payments.router)
    app.include_router(finance.router)
    app.include_router(dashboard.router)
    app.include_router(keys.router)
    app.include_router(exports.router)
    app.include_router(support.router)  # support actions, keypad tokens, secret rotation
    _document_problem_422(app)
    return app


def _document_problem_422(app: FastAPI) -> None:
    """Say in the spec what a 422 really is: ``{"detail": ...}``, a list from
    request validation or a sentence from the endpoint (schemathesis checks the spec)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault("Problem", Problem.model_json_schema())
        ref = {"$ref": "#/components/schemas/Problem"}
        for item in schema.get("paths", {}).values():
            for op in item.values():
                resp = op.get("responses", {}).get("422") if isinstance(op, dict) else None
                if resp is not None:
                    resp["content"] = {"application/json": {"schema": ref}}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
