"""One typed settings object for every CIZO process.

Values come from, in order of precedence: explicit keyword arguments, environment
variables prefixed ``CIZO_`` (``CIZO_MQTT_PORT=1884``), a TOML file named by
``CIZO_CONFIG`` (keys are the field names), then the defaults below. Defaults suit a
local development stack; with ``env = "production"`` (``CIZO_ENV=production``) each
process refuses to start while a setting it uses still has a development value
(cizo/production.py says which and why).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


def sqlalchemy_url(url: str) -> str:
    """A database URL as SQLAlchemy takes it: plain ``postgresql://`` (and ``postgres://``)
    URLs get the psycopg 3 driver, which is the one installed; others are unchanged."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


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

    # --- Mode ------------------------------------------------------------------------
    # "production": refuse development secrets, generated keys, an anonymous broker and
    # plain-HTTP provider URLs at start (cizo/production.py).
    env: Literal["development", "production"] = "development"

    # --- Language ------------------------------------------------------------------
    # The language of API error messages, the dashboard and the CLI when the caller names
    # none it can have (Accept-Language, the dashboard's switch, LANG): staff in Lomé read
    # French. Catalogs are cizo/locale/<locale>/LC_MESSAGES/cizo.po.
    default_locale: Literal["fr", "en"] = "fr"

    # --- MQTT broker --------------------------------------------------------------
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_tls_ca: Path | None = None
    mqtt_keepalive_s: int = 30
    mqtt_client_id: str = "cizo-control"  # the control service's (persistent) session
    # several control processes (uvicorn workers, hosts): each its own mqtt_client_id, and
    # acks/status/telemetry shared among them via $share/<group> (each handled once)
    control_shared_group: str | None = None
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
    # PostgreSQL connections per process: at least the threads that use the database at once
    # (API worker threads in use, scheduler); overflow connections are opened and closed
    # per use (control.ledger.db.make_engine)
    db_pool_size: int = Field(default=20, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)

    # --- HTTP API ------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    public_base_url: str | None = None  # how providers reach our callbacks
    admin_api_key: SecretStr | None = None  # first admin key, created at start-up
    # Bodies of the public endpoints (provider callbacks, webhooks): a larger one is refused
    # (413) before it is read; one not received in full within the timeout is refused (408)
    # and its connection closed, since uvicorn has no body timeout of its own.
    api_max_body_bytes: int = Field(default=262_144, ge=1024)
    api_body_timeout_s: float = Field(default=10.0, gt=0)

    # --- Secrets -------------------------------------------------------------------
    # Fernet key (urlsafe base64 of 32 bytes) that encrypts kit command secrets at rest.
    secret_key: SecretStr | None = None

    # --- PayGate Global --------------------------------------------------------------
    paygate_url: str = "https://paygateglobal.com"
    paygate_auth_token: SecretStr = SecretStr("dev-paygate-token")
    paygate_timeout_s: float = 5.0

    # --- MTN MoMo collections, status polling, signed webhooks -----------------------
    momo_url: str = "https://sandbox.momodeveloper.mtn.com"
    momo_subscription_key: SecretStr = SecretStr("dev-momo-subscription-key")
    momo_api_user: str = "dev-momo-api-user"
    momo_api_key: SecretStr = SecretStr("dev-momo-api-key")
    momo_target_environment: str = "sandbox"
    momo_currency: str = "XOF"
    momo_timeout_s: float = 5.0
    payment_poll_interval_s: float = 30.0  # pending payments re-checked with their provider
    payment_poll_max_backoff_s: float = 3600.0
    webhook_tolerance_s: int = 300

    # --- Control loop ------------------------------------------------------------------
    sweep_interval_s: float = 5.0
    command_ttl_s: int = 7 * 24 * 3600
    command_resend_after_s: float = 30.0
    default_desco_id: str = "default"

    # how often kits report a reading (the contract's 15 minutes): the kit timeline calls a
    # silence of three intervals or more a telemetry gap
    kit_report_interval_s: float = Field(default=900.0, gt=0)

    # --- Local stack (cizo up) -------------------------------------------------------
    data_dir: Path = Path("./var")
    sim_kits: int = Field(default=50, ge=0)
    sim_telemetry_interval_s: float = 10.0
    # cizo up's first start plays this many simulated days of history (0: none) in about
    # history_real_s real seconds, one reading per kit every history_telemetry_interval_s
    # simulated, before the fleet goes live (cizo_cli/history.py)
    history_days: float = Field(default=7.0, ge=0)
    history_real_s: float = Field(default=30.0, gt=0)
    history_telemetry_interval_s: float = Field(default=3600.0, gt=0)

    # --- Dashboards, rollups and analytics -------------------------------------------
    influx_hourly_db: str | None = None  # hourly aggregates tier; default <influx_db>_hourly
    influx_daily_db: str | None = None  # daily aggregates tier; default <influx_db>_daily
    raw_retention_days: int = Field(default=30, ge=1)
    aggregate_retention_days: int = Field(default=3650, ge=1)
    # 0: the control service does not run the rollup job; a separate `cizo rollup --every`
    # process does, with its own InfluxDB login (docker-compose.yml, service rollup)
    rollup_interval_s: float = Field(default=300.0, ge=0)
    rollup_chunk_hours: int = Field(default=6, ge=1)
    fleet_summary_interval_s: float = 60.0  # the fleet page's figures are at most this old
    analytics_interval_s: float = 3600.0
    # rollups, analytics and the fleet summary once when the control service starts (cizo up:
    # its dashboard has every figure at first open); off in production, where a restart of a
    # large fleet's control process should not cost a full analytics run
    analytics_at_start: bool = False
    # how long a silent analytics run keeps other control processes off the job (renewed
    # at every step; a crashed holder's lease runs out after this)
    analytics_lease_s: float = Field(default=900.0, gt=0)
    # a day's hourly rollups are final this long after the day ends (the rollup job redoes
    # only the last hour it wrote): from then on its analytics numbers are kept in the
    # ledger and the day is never read from InfluxDB again
    analytics_day_final_after_s: float = Field(default=7200.0, ge=0)
    # InfluxQL queries that read one day for the nightly job side by side (influxd works
    # through a query's series on one core)
    analytics_read_parallel: int = Field(default=2, ge=1, le=16)
    silent_alert_days: float = 3.0
    opendata_min_households: int = Field(default=10, ge=1)
    # the first month of the programme's data: open data is served from it to this month
    programme_start_month: str = Field(default="2025-01", pattern=r"^\d{4}-(0[1-9]|1[0-2])$")
    opendata_licence: str = "CC-BY-4.0"
    opendata_publisher: str = "CIZO national solar home kit programme"
    opendata_dir: Path | None = None  # where the monthly job publishes; None: <data_dir>/opendata
    opendata_publish_day: int = Field(default=2, ge=1, le=28)  # of each month, 03:00 UTC

    # --- Telemetry bridge durability, dead letters, health ---------------------------
    # Local disk spool used while InfluxDB is down (None: <data_dir>/spool/<client_id>).
    bridge_spool_dir: Path | None = None
    bridge_spool_max_bytes: int = Field(default=1 << 30, ge=0)  # full: stop acking (broker buffers)
    # Dead-letter store (SQLite file deadletter.sqlite3 in this dir; None: <data_dir>/deadletter).
    bridge_deadletter_dir: Path | None = None
    bridge_deadletter_max_rows: int = Field(default=1_000_000, ge=1_000)
    bridge_deadletter_payload_bytes: int = Field(default=4096, ge=0)  # payload kept per row
    # Recent (kit_id, ts) -> payload hash and (kit_id, boot, seq) records, for conflicts.
    bridge_dedup_entries: int = Field(default=600_000, ge=1_000)
    # Check kit ids against the ledger's kits table (database_url): unknown kits and
    # readings from before a kit was provisioned (minus the slack) are dead-lettered.
    bridge_kit_registry: bool = False
    bridge_kit_ts_slack_s: int = Field(default=86_400, ge=0)
    # Subscribed again after losing the broker, a bridge asks every kit to publish again
    # what it sent from this long before the loss (kit clock): it covers the broker's
    # unsaved acknowledgements (autosave_interval) and the kits' clock error.
    bridge_replay_margin_s: int = Field(default=60, ge=0)
    # MQTT v5 Receive Maximum the bridge asks for (None: 2 x influx_batch_lines, >= 1000).
    bridge_receive_maximum: int | None = Field(default=None, ge=1, le=65_535)
    bridge_metrics_host: str = "127.0.0.1"
    bridge_metrics_port: int | None = None  # Prometheus /metrics; None: off, 0: any free port
    # "v1": /write (1.x, 2.x DBRP, 3.x); "v2": influxdb-client's /api/v2/write (2.x native).
    influx_write_api: str = Field(default="v1", pattern="^(v1|v2)$")
    influx_org: str | None = None  # v2 write API
    influx_bucket: str | None = None  # v2 write API (None: "<db>/<rp>" or "<db>")

    # --- Security: rate limits, broker credentials, personal data --------------------
    # Failed API authentications per client address in the window; beyond: 429 for all.
    auth_fail_limit: int = Field(default=20, ge=1)
    auth_fail_window_s: float = Field(default=60.0, gt=0)
    # Manual (support) unlocks per API key in the window; beyond: 429.
    unlock_limit: int = Field(default=30, ge=1)
    unlock_window_s: float = Field(default=3600.0, gt=0)
    # The broker's doors (control/security/broker_auth.py): the control service drives
    # Mosquitto's dynamic-security plugin as this admin user over the MQTT connection
    # settings above (mqtt_host, mqtt_port, mqtt_tls_ca). No admin password: the broker is
    # not driven (a development broker without the plugin). The service accounts'
    # passwords are set on the broker by the same convergence.
    broker_admin_username: str = "cizo-admin"
    broker_admin_password: SecretStr | None = None
    broker_bridge_password: SecretStr | None = None
    broker_control_password: SecretStr | None = None
    # Full reconcile of the broker with the ledger (also at start), and how long one
    # dynamic-security request may wait for its answer.
    broker_reconcile_interval_s: float = Field(default=300.0, gt=0)
    broker_timeout_s: float = Field(default=10.0, gt=0)
    # Days a closed account's phone number is kept (disputes, refunds) before erasure.
    personal_data_retention_days: int = Field(default=365, ge=0)

    # --- Command delivery, keypad tokens, notifications, support CLI -----------------
    # Re-sends of an unacked command back off from command_resend_after_s, doubling up to
    # this cap, each delay scaled by a random factor in [1 - jitter, 1 + jitter].
    command_backoff_max_s: float = Field(default=900.0, gt=0)
    command_backoff_jitter: float = Field(default=0.3, ge=0, lt=1)
    # Refuse acks without a valid signature (optional "sig" in v1; see docs/protocol.md).
    require_ack_sig: bool = False
    # A kit not seen for this long also gets an OpenPAYGO token for each payment.
    keypad_offline_after_s: float = Field(default=3 * 86_400.0, gt=0)
    # OpenPAYGO Metrics (POST /dd): the largest request body taken (a week offline at
    # 15-minute readings in the CIZO format is ~40 KB of JSON), its deepest nesting
    metrics_max_body_bytes: int = Field(default=65_536, ge=1024)
    metrics_max_depth: int = Field(default=6, ge=3)
    # "file" (JSON lines, the default), "log", or "http" (generic SMS gateway below).
    notify_backend: str = Field(default="file", pattern="^(file|log|http)$")
    notify_file: Path | None = None  # None: <data_dir>/notifications.jsonl
    notify_templates_dir: Path | None = None  # <dir>/<desco_id>/<name>.txt overrides ours
    notify_language: str = "fr"
    sms_gateway_url: str | None = None
    sms_gateway_token: SecretStr | None = None
    sms_gateway_timeout_s: float = 5.0
    reminder_lead_s: float = Field(default=2 * 86_400.0, gt=0)  # remind this long before
    reminder_interval_s: float = Field(default=3600.0, gt=0)  # how often the job looks
    support_api_url: str | None = None  # `cizo support`: the API (None: api_base_url)
    support_api_key: SecretStr | None = None  # `cizo support`: the staff member's own key

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


def load_settings() -> Settings:
    """Settings for a command-line process, or a clear exit naming what is wrong."""
    try:
        return Settings()
    except (ValidationError, ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"cizo: invalid configuration:\n{exc}") from None
