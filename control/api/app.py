"""The control service's HTTP API: one FastAPI app over a ``Runtime``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.responses import FileResponse, JSONResponse
from sqlalchemy import text
from starlette.types import Lifespan

from cizo.i18n import N_
from control.api import (
    dashboard,
    errors,
    exports,
    finance,
    keys,
    kits,
    locale,
    openpaygo_metrics,
    payments,
    prometheus,
    regulator,
    support,
)
from control.api.auth import RuntimeDep, roles_by_endpoint
from control.api.schemas import Health, Problem
from control.runtime import Runtime

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent.parent / "static"


# The pages, static files that ask for a key; the API checks every call they make.
PAGES = {
    "/": "index.html",  # the kit list
    "/dashboard": "dashboard.html",  # the fleet and kit pages (charts)
    "/finance": "finance.html",  # the suspense queue (maker-checker) and the payments list
    "/regulator": "regulator.html",  # the national view: DESCOs, the regions' map, the trend
}


def _page(name: str) -> Callable[[], FileResponse]:
    def page() -> FileResponse:
        return FileResponse(STATIC / name, media_type="text/html")
    page.__name__ = f"page_{name.split('.')[0]}"
    return page


def _static(folder: Path, name: str) -> FileResponse:
    """A file directly in ``folder``; nothing above or below it."""
    path = (folder / name).resolve()
    if path.parent != folder.resolve() or not path.is_file():
        raise errors.ApiError(status.HTTP_404_NOT_FOUND, "not_found", N_("not found"))
    media = "application/geo+json" if path.suffix == ".geojson" else None
    return FileResponse(path, media_type=media)


def create_app(rt: Runtime, *, lifespan: Lifespan[FastAPI] | None = None) -> FastAPI:
    """Build the app; the caller's ``lifespan`` starts the MQTT link and the scheduler."""
    app = FastAPI(
        title="CIZO kit backend",
        version="1",
        summary="PAYG solar home kits: provisioning, credit, signed lock/unlock commands",
        lifespan=lifespan,
    )
    app.state.rt = rt
    app.state.counters = prometheus.Counters()
    app.state.counters.describe(openpaygo_metrics.REQUESTS,
                                "OpenPAYGO Metrics requests (POST /dd), by outcome code.")
    app.state.counters.describe(openpaygo_metrics.READINGS,
                                "Readings stored from OpenPAYGO Metrics devices.")

    errors.install(app)  # every error body: detail, code, message in the caller's language

    @app.get("/healthz", response_model=Health, tags=["health"],
             summary="The process is alive")
    def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, tags=["health"],
             responses={503: {"model": Problem}}, summary="The database answers")
    def readyz(rt: RuntimeDep, request: Request) -> Health | JSONResponse:
        try:
            with rt.db.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            log.warning("not ready: database does not answer (%s)", type(exc).__name__)
            return errors.problem(request, status.HTTP_503_SERVICE_UNAVAILABLE,
                                  "database_unavailable", N_("database unavailable"))
        return Health(status="ready")

    for path, page in PAGES.items():
        app.add_api_route(path, _page(page), methods=["GET"], include_in_schema=False)

    @app.get("/static/{name}", include_in_schema=False)
    def static_file(name: str) -> FileResponse:
        return _static(STATIC, name)

    @app.get("/static/geo/{name}", include_in_schema=False)
    def geo_file(name: str) -> FileResponse:
        # boundary files (their source and licence: control/static/geo/README.md)
        return _static(STATIC / "geo", name)

    routers = (
        kits.router,
        payments.router,
        finance.router,
        dashboard.router,
        regulator.router,  # the regulator's national view
        locale.router,  # the dashboard's texts, from the catalogs
        keys.router,
        exports.router,
        support.router,  # support actions, keypad tokens, secret rotation
        openpaygo_metrics.router,  # POST /dd: OpenPAYGO Metrics devices
        prometheus.router,  # GET /metrics
    )
    for router in routers:
        app.include_router(router)
    # who may call each endpoint, for GET /v1/dashboard/me (what the pages may offer)
    app.state.roles = roles_by_endpoint(routers)
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
