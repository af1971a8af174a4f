"""One typed settings object for every CIZO process.

Values come from, in order of precedence: explicit keyword arguments, environment
variables prefixed ``CIZO_`` (``CIZO_MQTT_PORT=1884``), a TOML file named by
``CIZO_CONFIG`` (keys are the field names), then the defaults below. Defaults suit a
local development stack; production must set the secrets (``validate_for_production``
refuses the development ones).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


class _TomlFileSource(PydanticBaseSettingsSource):
    """Reads the TOML file named by ``CIZO_CONFIG`` (if any)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ returns the whole mapping

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("CIZO_CONFIG")
        if not path:
            return {}
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"CIZO_CONFIG names {file}, which does not exist")
        with file.open("rb") as fh:
            data = tomllib.load(fh)
        known = set(self.settings_cls.model_fields)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{file}: unknown setting(s) {', '.join(unknown)}")
        return data


class Settings(BaseSettings):
    """Every host, port, secret and tunable of the platform, in one place."""

    model_config = SettingsConfigDict(env_prefix="CIZO_", extra="forbid")

    # --- MQTT broker --------------------------------------------------------------
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_tls_ca: Path | None = None
    mqtt_keepalive_s: int = 30
    mqtt_client_id: str = "cizo-control"  # the control service's (persistent) session
    bridge_client_id: str = "cizo-bridge"  # unique per bridge process (persistent session)
    bridge_shared_group: str | None = None  # several bridges share the load via $share/<group>

    # --- InfluxDB (v1 wire API: /write + /query; 1.x, 2.x via DBRP, 3.x) -------------
    influx_url: str = "http://127.0.0.1:8086"
    influx_db: str = "cizo"
    influx_rp: str | None = None
    influx_token: SecretStr | None = None  # 2.x / 3.x: "Authorization: Token ..."
    influx_username: str | None = None  # 1.x with auth
    influx_password: SecretStr | None = None
    influx_batch_lines: int = 5000
    influx_flush_interval_s: float = 0.5

    # --- Ledger database -----------------------------------------------------------
    database_url: str = "sqlite:///./var/cizo.db"

    # --- HTTP API ------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    public_base_url: str | None = None  # how providers reach our callbacks
    admin_api_key: SecretStr | None = None  # first admin key, created at start-up

    # --- Secrets -------------------------------------------------------------------
    # Fernet key (urlsafe base64 of 32 bytes) that encrypts kit command secrets at rest.
    secret_key: SecretStr | None = None

    # --- PayGate Global --------------------------------------------------------------
    paygate_url: str = "https://paygateglobal.com"
    paygate_auth_token: SecretStr = SecretStr("dev-paygate-token")
    paygate_timeout_s: float = 5.0

    # --- Control loop ------------------------------------------------------------------
    sweep_interval_s: float = 5.0
    command_ttl_s: int = 7 * 24 * 3600
    command_resend_after_s: float = 30.0
    default_desco_id: str = "default"

    # --- Local stack (cizo up) -------------------------------------------------------
    data_dir: Path = Path("./var")
    sim_kits: int = Field(default=50, ge=0)
    sim_telemetry_interval_s: float = 10.0

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlFileSource(settings_cls), file_secret_settings)

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://{self.mqtt_host}:{self.mqtt_port}"

    @property
    def api_base_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"

    def callback_base_url(self) -> str:
        return (self.public_base_url or self.api_base_url).rstrip("/")

    def require_secret_key(self) -> str:
        """The Fernet key, or a clear error: secrets are never stored in the clear."""
        if self.secret_key is None:
            raise RuntimeError(
                "CIZO_SECRET_KEY is not set: it encrypts kit command secrets at rest. "
                "Generate one with: cizo keygen"
            )
        return self.secret_key.get_secret_value()
