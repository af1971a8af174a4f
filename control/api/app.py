"""The control service's HTTP API: one FastAPI app over a ``Runtime``."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request, status
from fastapi.responses import FileResponse, JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from starlette.types import Lifespan

from control.api import kits, payments
from control.api.auth import RuntimeDep
from control.api.schemas import Health, Problem
from control.runtime import Runtime

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
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.include_router(kits.router)
    app.include_router(payments.router)
    return app
