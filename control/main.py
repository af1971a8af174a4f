"""The control process: HTTP API, MQTT link and scheduled jobs over one ``Runtime``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from cizo.clock import Clock
from cizo.production import CONTROL_PARTS, require_production_ready
from cizo.settings import Settings
from control import scheduler
from control.commands.mqtt_link import MqttLink
from control.ledger.db import migrate
from control.payments import receipts
from control.runtime import Runtime

log = logging.getLogger(__name__)


def build_app(
    settings: Settings, clock: Clock | None = None, *, migrate_db: bool = True
) -> FastAPI:
    """The control app; its lifespan connects to the broker and starts the sweep."""
    from control.api import create_app
    from control.security.api_keys import ensure_admin_key

    require_production_ready(settings, uses=CONTROL_PARTS)
    if migrate_db:
        migrate(settings.database_url)
    rt = Runtime.build(settings, clock)
    ensure_admin_key(rt)
    rt.on_credit(receipts.on_credit)  # the customer's receipt (and keypad token)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        link = MqttLink(settings, rt.service, client_id=settings.mqtt_client_id)
        rt.service.publisher = link
        link.start()
        jobs = scheduler.start(rt)
        try:
            yield
        finally:
            jobs.shutdown(wait=True)
            link.stop()
            rt.close()

    app = create_app(rt, lifespan=lifespan)
    app.state.runtime = rt
    return app


def main(settings: Settings, clock: Clock | None = None) -> None:
    """``cizo control``; ``clock``: the wall clock unless a simulation runs the platform on
    its own time (bench/chaos.py)."""
    app = build_app(settings, clock)
    uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_config=None)
