"""HTTP API of the control service (FastAPI)."""

from __future__ import annotations

from control.api.app import create_app

__all__ = ["create_app"]
