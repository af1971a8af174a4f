"""HTTP API of the control service (FastAPI)."""

from __future__ import annotations

from control.api.app import create_app
from control.api.auth import create_api_key, ensure_admin_key

__all__ = ["create_api_key", "create_app", "ensure_admin_key"]
