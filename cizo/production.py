"""Production mode: a process refuses to start on configuration fit only for development.

The defaults let a laptop run the whole stack with no set-up (``dev-...`` provider
credentials, MTN's sandbox, keys ``cizo up`` generates, an API on plain HTTP). In production
each of them is a hole that works silently, so with ``CIZO_ENV=production`` a process lists
every such problem and stops before it binds a port or connects to anything.

``production_problems`` is a pure function of Settings (every refusal is testable without
starting a process); each process passes the parts it uses, so a bridge is not refused for
a PayGate token it never reads.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable, Collection
from enum import StrEnum
from urllib.parse import urlsplit

from pydantic import SecretStr

from cizo.settings import Settings

# What `cizo up` generates starts with these, so a development key copied into a production
# environment is recognised wherever it ends up.
DEV_TOKEN_PREFIX = "cizo_dev_"
DEV_SECRET_KEY_MARK = b"cizo-dev-"  # first bytes of the Fernet key `cizo up` generates
# Placeholders people paste into templates; never a real credential.
PLACEHOLDERS = frozenset({"changeme", "change-me", "password", "secret"})
# Keys and passwords we choose ourselves: 32 characters is 128 bits even in hex.
MIN_SECRET_CHARS = 32
FERNET_KEY_BYTES = 32
MOMO_SANDBOX_HOST = "sandbox.momodeveloper.mtn.com"


class ConfigurationError(RuntimeError):
    """The configuration may not run here; the message says what to change."""


class Part(StrEnum):
    """What a process uses, and so which settings production mode checks for it."""

    BROKER = "broker"  # its own MQTT account
    BROKER_DOORS = "broker-doors"  # drives the broker's accounts (dynamic security)
    INFLUX = "influx"  # InfluxDB credentials
    DATABASE = "database"  # the ledger
    KEYS = "keys"  # admin API key, key encrypting kit secrets
    PROVIDERS = "providers"  # PayGate, MTN MoMo, SMS gateway, public callback URL


CONTROL_PARTS: frozenset[Part] = frozenset(Part)


def bridge_parts(settings: Settings) -> frozenset[Part]:
    """The bridge reads the ledger only to check kit ids against the kit registry."""
    parts = {Part.BROKER, Part.INFLUX}
    if settings.bridge_kit_registry:
        parts.add(Part.DATABASE)
    return frozenset(parts)


# --- development values ----------------------------------------------------------------


def development_token() -> str:
    """A key or password for the local stack, recognisable as such."""
    return DEV_TOKEN_PREFIX + secrets.token_urlsafe(32)


def development_secret_key() -> str:
    """A Fernet key for the local stack: valid, and recognisable by its first bytes."""
    random_part = secrets.token_bytes(FERNET_KEY_BYTES - len(DEV_SECRET_KEY_MARK))
    return base64.urlsafe_b64encode(DEV_SECRET_KEY_MARK + random_part).decode()


def is_development_value(value: str) -> bool:
    text = value.strip().lower()
    return text.startswith(("dev-", DEV_TOKEN_PREFIX)) or text in PLACEHOLDERS


def _fernet_key_bytes(key: str) -> bytes | None:
    try:
        raw = base64.urlsafe_b64decode(key.encode())
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == FERNET_KEY_BYTES else None


# --- checks, one per part ----------------------------------------------------------------


def env_name(field: str) -> str:
    return f"CIZO_{field.upper()}"


def _plain(value: SecretStr | str | None) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value or ""


def _credential(settings: Settings, field: str, fix: str, *, min_chars: int = 0,
                required: bool = True) -> list[str]:
    """A secret or account name: set (if required), not a development value, long enough."""
    value = _plain(getattr(settings, field))
    name = env_name(field)
    if not value:
        return [f"{name} is not set; {fix}"] if required else []
    if is_development_value(value):
        return [f"{name} is a development value; {fix}"]
    if len(value) < min_chars:
        return [f"{name} has {len(value)} characters, fewer than the safe minimum of "
                f"{min_chars}; {fix}"]
    return []


def _https(settings: Settings, field: str, fix: str) -> list[str]:
    """A URL providers call or we call with credentials: never in the clear."""
    value = _plain(getattr(settings, field))
    name = env_name(field)
    if not value:
        return [f"{name} is not set; {fix}"]
    url = urlsplit(value)
    if url.scheme != "https" or not url.hostname:
        return [f"{name} is {value!r}, not an https:// URL; {fix}"]
    return []


def _broker_problems(s: Settings) -> list[str]:
    fix = "set this process's own broker account (cizo-bridge or cizo-control)"
    found = []
    if not s.mqtt_username:
        found.append(f"CIZO_MQTT_USERNAME is not set: the process would connect to the "
                     f"broker anonymously; {fix}")
    found += _credential(s, "mqtt_password", f"{fix} and its password (openssl rand -hex 32)",
                         min_chars=MIN_SECRET_CHARS)
    return found


def _broker_door_problems(s: Settings) -> list[str]:
    """Control drives the broker's accounts; without an admin password kits never get in."""
    fix = "set the same value as the broker's (MQTT_{} in .env; openssl rand -hex 32)"
    return [problem for field, var in (("broker_admin_password", "ADMIN_PASSWORD"),
                                       ("broker_bridge_password", "BRIDGE_PASSWORD"),
                                       ("broker_control_password", "CONTROL_PASSWORD"))
            for problem in _credential(s, field, fix.format(var), min_chars=MIN_SECRET_CHARS)]


def _influx_problems(s: Settings) -> list[str]:
    fix = "set the token (or user and password) InfluxDB gave you"
    if s.influx_token is None and not (s.influx_username and s.influx_password):
        return ["CIZO_INFLUX_TOKEN is not set (nor CIZO_INFLUX_USERNAME with "
                "CIZO_INFLUX_PASSWORD): telemetry would be written without credentials; "
                f"{fix}"]
    found = [problem for field in ("influx_token", "influx_username", "influx_password")
             for problem in _credential(s, field, fix, required=False)]
    if s.influx_write_api == "v2":
        # /api/v2/write takes only a token and an org (user/password are v1 logins)
        if s.influx_token is None:
            found.append("CIZO_INFLUX_TOKEN is not set but CIZO_INFLUX_WRITE_API is v2, "
                         "which authenticates with a token only; set a token that may "
                         "write the raw bucket, or use the v1 API")
        if not s.influx_org:
            found.append("CIZO_INFLUX_ORG is not set but CIZO_INFLUX_WRITE_API is v2; set "
                         "the InfluxDB organisation of the raw bucket")
    return found


def _database_problems(s: Settings) -> list[str]:
    if s.database_url == Settings.model_fields["database_url"].default:
        return [f"CIZO_DATABASE_URL is the development SQLite file ({s.database_url}); "
                "set the PostgreSQL URL of the ledger"]
    return []


def _key_problems(s: Settings) -> list[str]:
    admin = _credential(
        s, "admin_api_key",
        "set your own (python -c 'import secrets; print(secrets.token_urlsafe(32))')",
        min_chars=MIN_SECRET_CHARS)
    return admin + _secret_key_problems(s)


def _secret_key_problems(s: Settings) -> list[str]:
    keygen = "generate one with `cizo keygen` and keep a copy in your secret store"
    if s.secret_key is None:
        return [f"CIZO_SECRET_KEY is not set; {keygen}"]
    key = _fernet_key_bytes(s.secret_key.get_secret_value())
    if key is None:
        return [f"CIZO_SECRET_KEY is not a Fernet key (URL-safe base64 of "
                f"{FERNET_KEY_BYTES} bytes); {keygen}"]
    if key.startswith(DEV_SECRET_KEY_MARK):
        return [f"CIZO_SECRET_KEY is the development key `cizo up` generated; {keygen}"]
    return []


def _provider_problems(s: Settings) -> list[str]:
    found = _https(s, "public_base_url",
                   "set the public https:// URL at which PayGate and MTN MoMo reach our "
                   "callbacks (through your TLS reverse proxy)")
    found += _https(s, "paygate_url", "set PayGate Global's https:// API URL")
    found += _credential(s, "paygate_auth_token", "set the token PayGate gave you")
    found += _momo_problems(s)
    if s.notify_backend != "http":
        found.append(f"CIZO_NOTIFY_BACKEND is {s.notify_backend!r}: customers would get no "
                     "receipts, reminders or keypad tokens; set CIZO_NOTIFY_BACKEND=http "
                     "with your SMS gateway (CIZO_SMS_GATEWAY_URL, CIZO_SMS_GATEWAY_TOKEN)")
    else:
        found += _https(s, "sms_gateway_url", "set your SMS gateway's https:// URL")
        found += _credential(s, "sms_gateway_token", "set the token your SMS gateway gave you",
                             required=False)
    return found


def _momo_problems(s: Settings) -> list[str]:
    fix_url = "set the production API URL MTN gave you at onboarding"
    found = _https(s, "momo_url", fix_url)
    if urlsplit(s.momo_url).hostname == MOMO_SANDBOX_HOST:
        found.append(f"CIZO_MOMO_URL is MTN's sandbox ({s.momo_url}); {fix_url}")
    if s.momo_target_environment.strip().lower() == "sandbox":
        found.append("CIZO_MOMO_TARGET_ENVIRONMENT is 'sandbox', a development value; set "
                     "the target environment MTN gave you at onboarding")
    portal = "from MTN's partner portal"
    found += _credential(s, "momo_subscription_key", f"set the subscription key {portal}")
    found += _credential(s, "momo_api_user", f"set the API user {portal}")
    found += _credential(s, "momo_api_key", f"set the API key {portal}")
    return found


CHECKS: dict[Part, Callable[[Settings], list[str]]] = {
    Part.BROKER: _broker_problems,
    Part.BROKER_DOORS: _broker_door_problems,
    Part.INFLUX: _influx_problems,
    Part.DATABASE: _database_problems,
    Part.KEYS: _key_problems,
    Part.PROVIDERS: _provider_problems,
}


# --- the verdict -----------------------------------------------------------------------


def production_problems(settings: Settings, *, uses: Collection[Part]) -> list[str]:
    """Every reason these settings may not run in production (none in development)."""
    if settings.env != "production":
        return []
    return [problem for part in Part if part in uses for problem in CHECKS[part](settings)]


def require_production_ready(settings: Settings, *, uses: Collection[Part]) -> None:
    """At a process's start: refuse, naming every problem at once, so one fix round does."""
    problems = production_problems(settings, uses=uses)
    if problems:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        raise ConfigurationError(
            f"refusing to start with CIZO_ENV=production: {len(problems)} problem(s)\n"
            f"{listed}\n"
            "Fix each one, or unset CIZO_ENV for a local development run.")


def require_development(settings: Settings) -> None:
    """The local stack generates its own keys and simulates the providers: never production."""
    if settings.env == "production":
        raise ConfigurationError(
            "the local development stack (generated keys, simulated payment providers) does "
            "not run with CIZO_ENV=production; unset CIZO_ENV, or deploy with "
            "docker-compose.yml")
