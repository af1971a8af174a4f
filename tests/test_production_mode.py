"""Production mode: each process refuses development configuration at start, naming every
problem and how to fix it; development mode accepts the defaults."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from cizo import services
from cizo.production import (
    CONTROL_PARTS,
    MIN_SECRET_CHARS,
    ConfigurationError,
    Part,
    bridge_parts,
    development_secret_key,
    development_token,
    env_name,
    production_problems,
    require_production_ready,
)
from cizo.settings import Settings
from control.ledger.secrets import SecretBox, generate_secret_key

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_cizo_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test passes counts, not the CIZO_* of the shell running the tests."""
    for var in [v for v in os.environ if v.startswith("CIZO_")]:
        monkeypatch.delenv(var)


def production_values() -> dict[str, str]:
    """A complete production configuration of the control service, by field name."""
    return {
        "env": "production",
        "mqtt_username": "cizo-control",
        "mqtt_password": secrets.token_hex(32),
        "broker_admin_password": secrets.token_hex(32),
        "broker_bridge_password": secrets.token_hex(32),
        "broker_control_password": secrets.token_hex(32),
        "influx_token": secrets.token_hex(32),
        "database_url": "postgresql://cizo:s3cret@postgres:5432/cizo",
        "admin_api_key": secrets.token_urlsafe(32),
        "secret_key": generate_secret_key(),
        "public_base_url": "https://api.cizo.example.org",
        "paygate_auth_token": "pg-merchant-token-from-the-dashboard",
        "momo_url": "https://proxy.momoapi.mtn.com",
        "momo_target_environment": "mtnbenin",
        "momo_subscription_key": secrets.token_hex(16),
        "momo_api_user": "e16510aa-7282-4a39-8b8b-da054889a33a",
        "momo_api_key": secrets.token_hex(16),
        "notify_backend": "http",
        "sms_gateway_url": "https://sms.example.org/send",
        "sms_gateway_token": secrets.token_hex(16),
    }


def production(**overrides: Any) -> Settings:
    return Settings(**{**production_values(), **overrides})


def control_problems(**overrides: Any) -> list[str]:
    return production_problems(production(**overrides), uses=CONTROL_PARTS)


def the_problem(problems: list[str], setting: str) -> str:
    """The one problem about this setting (its CIZO_* name leads the line)."""
    about = [p for p in problems if p.startswith(setting + " ")]
    assert len(about) == 1, problems
    return about[0]


def default(field: str) -> Any:
    return Settings.model_fields[field].default


# --- what is accepted ---------------------------------------------------------------------


def test_a_complete_production_configuration_is_accepted() -> None:
    settings = production(bridge_kit_registry=True)
    assert production_problems(settings, uses=CONTROL_PARTS) == []
    assert production_problems(settings, uses=bridge_parts(settings)) == []
    require_production_ready(settings, uses=CONTROL_PARTS)


def test_development_mode_accepts_the_defaults() -> None:
    settings = Settings()
    assert settings.env == "development"
    assert production_problems(settings, uses=CONTROL_PARTS) == []
    require_production_ready(settings, uses=CONTROL_PARTS)


def test_cizo_env_comes_from_the_environment_and_takes_only_the_two_modes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CIZO_ENV", "production")
    assert Settings().env == "production"
    monkeypatch.setenv("CIZO_ENV", "prod")
    with pytest.raises(ValidationError, match="env"):
        Settings()


# --- development secrets ------------------------------------------------------------------


@pytest.mark.parametrize("field", ["paygate_auth_token", "momo_subscription_key",
                                   "momo_api_user", "momo_api_key"])
def test_a_provider_credential_at_its_development_default_is_refused(field: str) -> None:
    problem = the_problem(control_problems(**{field: default(field)}),
                          f"CIZO_{field.upper()}")
    assert "development value" in problem


def test_the_message_says_how_to_fix_it() -> None:
    problem = the_problem(control_problems(paygate_auth_token="dev-paygate-token"),
                          "CIZO_PAYGATE_AUTH_TOKEN")
    assert problem == ("CIZO_PAYGATE_AUTH_TOKEN is a development value; "
                       "set the token PayGate gave you")


def test_placeholders_are_development_values() -> None:
    problem = the_problem(control_problems(influx_token="changeme"), "CIZO_INFLUX_TOKEN")
    assert "development value" in problem


def test_mtn_sandbox_is_a_development_value() -> None:
    problems = control_problems(momo_target_environment="sandbox",
                                momo_url=default("momo_url"))
    assert "'sandbox'" in the_problem(problems, "CIZO_MOMO_TARGET_ENVIRONMENT")
    assert "sandbox" in the_problem(problems, "CIZO_MOMO_URL")


# --- generated default keys ---------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "setting", "why"), [
    ({"admin_api_key": None}, "CIZO_ADMIN_API_KEY", "not set"),
    ({"admin_api_key": "x" * (MIN_SECRET_CHARS - 1)}, "CIZO_ADMIN_API_KEY", "safe minimum"),
    ({"admin_api_key": development_token()}, "CIZO_ADMIN_API_KEY", "development value"),
    ({"secret_key": None}, "CIZO_SECRET_KEY", "cizo keygen"),
    ({"secret_key": "too-short-for-fernet"}, "CIZO_SECRET_KEY", "not a Fernet key"),
    ({"secret_key": development_secret_key()}, "CIZO_SECRET_KEY", "`cizo up` generated"),
], ids=["admin-missing", "admin-short", "admin-generated", "secret-missing",
        "secret-invalid", "secret-generated"])
def test_generated_or_weak_keys_are_refused(overrides: dict[str, Any], setting: str,
                                            why: str) -> None:
    assert why in the_problem(control_problems(**overrides), setting)


def test_the_development_secret_key_works_for_the_local_stack() -> None:
    box = SecretBox(development_secret_key())
    assert box.decrypt(box.encrypt("kit secret")) == "kit secret"
    assert development_secret_key() != development_secret_key()


def test_the_local_stack_writes_recognisable_development_keys(tmp_path: Path) -> None:
    from cizo_cli.stack import Stack, StackOptions

    stack = Stack(StackOptions(mqtt_port=1, api_port=2, influx_port=3, paygate_port=4,
                               momo_port=5, kits=0, data_dir=tmp_path))
    env = stack.env()
    problems = control_problems(admin_api_key=env["CIZO_ADMIN_API_KEY"],
                                secret_key=env["CIZO_SECRET_KEY"],
                                mqtt_password=env["CIZO_BROKER_CONTROL_PASSWORD"],
                                broker_admin_password=env["CIZO_BROKER_ADMIN_PASSWORD"])
    for setting in ("CIZO_ADMIN_API_KEY", "CIZO_SECRET_KEY", "CIZO_MQTT_PASSWORD",
                    "CIZO_BROKER_ADMIN_PASSWORD"):
        the_problem(problems, setting)


# --- anonymous broker ---------------------------------------------------------------------


@pytest.mark.parametrize(("field", "setting"), [("mqtt_username", "CIZO_MQTT_USERNAME"),
                                                ("mqtt_password", "CIZO_MQTT_PASSWORD")])
def test_an_anonymous_broker_login_is_refused(field: str, setting: str) -> None:
    assert "not set" in the_problem(control_problems(**{field: None}), setting)


@pytest.mark.parametrize("field", ["broker_admin_password", "broker_bridge_password",
                                   "broker_control_password"])
def test_control_without_the_broker_doors_passwords_is_refused(field: str) -> None:
    """Without them the control service cannot give kits (or the bridge) their logins."""
    assert "not set" in the_problem(control_problems(**{field: None}), env_name(field))
    assert the_problem(control_problems(**{field: "dev-" + "x" * 40}), env_name(field))


def test_influxdb_without_credentials_is_refused() -> None:
    problem = the_problem(control_problems(influx_token=None), "CIZO_INFLUX_TOKEN")
    assert "CIZO_INFLUX_USERNAME" in problem
    assert control_problems(influx_token=None, influx_username="cizo",
                            influx_password=secrets.token_hex(16)) == []


def test_the_development_ledger_file_is_refused() -> None:
    problem = the_problem(control_problems(database_url=default("database_url")),
                          "CIZO_DATABASE_URL")
    assert "PostgreSQL" in problem


# --- plain HTTP towards providers ---------------------------------------------------------


@pytest.mark.parametrize(("overrides", "setting"), [
    ({"public_base_url": None}, "CIZO_PUBLIC_BASE_URL"),
    ({"public_base_url": "http://api.cizo.example.org"}, "CIZO_PUBLIC_BASE_URL"),
    ({"paygate_url": "http://paygateglobal.com"}, "CIZO_PAYGATE_URL"),
    ({"momo_url": "http://proxy.momoapi.mtn.com"}, "CIZO_MOMO_URL"),
    ({"notify_backend": "http", "sms_gateway_url": "http://sms.example.org/send"},
     "CIZO_SMS_GATEWAY_URL"),
], ids=["callback-missing", "callback-http", "paygate", "momo", "sms-gateway"])
def test_plain_http_to_or_from_providers_is_refused(overrides: dict[str, Any],
                                                    setting: str) -> None:
    problem = the_problem(control_problems(**overrides), setting)
    assert "https://" in problem


# --- each process checks what it uses; one message lists everything ----------------------


@pytest.mark.parametrize("backend", ["file", "log"])
def test_notifications_that_reach_no_customer_are_refused(backend: str) -> None:
    problem = the_problem(control_problems(notify_backend=backend), "CIZO_NOTIFY_BACKEND")
    assert "no receipts" in problem and "CIZO_SMS_GATEWAY_URL" in problem


def test_the_v2_write_api_needs_a_token_and_an_org() -> None:
    settings = production(influx_write_api="v2", influx_token=None, influx_username="cizo",
                          influx_password=secrets.token_hex(16))
    problems = production_problems(settings, uses=bridge_parts(settings))
    assert "token only" in the_problem(problems, "CIZO_INFLUX_TOKEN")
    the_problem(problems, "CIZO_INFLUX_ORG")
    settings = production(influx_write_api="v2", influx_org="cizo")
    assert production_problems(settings, uses=bridge_parts(settings)) == []


def test_the_bridge_checks_only_the_broker_influxdb_and_its_kit_registry() -> None:
    assert bridge_parts(production()) == {Part.BROKER, Part.INFLUX}
    dev_providers = production(paygate_auth_token=default("paygate_auth_token"),
                               admin_api_key=None, public_base_url=None,
                               database_url=default("database_url"))
    assert production_problems(dev_providers, uses=bridge_parts(dev_providers)) == []
    with_registry = production(database_url=default("database_url"), bridge_kit_registry=True)
    the_problem(production_problems(with_registry, uses=bridge_parts(with_registry)),
                "CIZO_DATABASE_URL")


def test_every_problem_is_listed_in_one_error() -> None:
    settings = Settings(env="production")
    problems = production_problems(settings, uses=CONTROL_PARTS)
    with pytest.raises(ConfigurationError) as refused:
        require_production_ready(settings, uses=CONTROL_PARTS)
    message = str(refused.value)
    assert f"{len(problems)} problem(s)" in message
    for setting in ("CIZO_MQTT_USERNAME", "CIZO_INFLUX_TOKEN", "CIZO_DATABASE_URL",
                    "CIZO_ADMIN_API_KEY", "CIZO_SECRET_KEY", "CIZO_PUBLIC_BASE_URL",
                    "CIZO_PAYGATE_AUTH_TOKEN", "CIZO_MOMO_API_KEY"):
        assert f"  - {the_problem(problems, setting)}" in message


# --- the real entry points ----------------------------------------------------------------


@pytest.fixture
def fake_broker() -> Iterator[socket.socket]:
    """A listening socket as the broker: after the run, a pending connection would show
    the process got as far as connecting."""
    with socket.create_server(("127.0.0.1", services.free_port())) as listener:
        listener.setblocking(False)
        yield listener


def run_cli(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CIZO_")}
    return subprocess.run([sys.executable, "-m", "cizo_cli", command], cwd=ROOT,
                          env={**clean, **env}, capture_output=True, text=True, timeout=120,
                          check=False)


def assert_refused_before_starting(run: subprocess.CompletedProcess[str], command: str,
                                   broker: socket.socket, data_dir: Path) -> None:
    assert run.returncode != 0, run.stderr
    assert f"cizo {command}: refusing to start with CIZO_ENV=production" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert "Uvicorn running" not in run.stderr + run.stdout
    with pytest.raises(BlockingIOError):
        broker.accept()  # nobody connected
    assert list(data_dir.iterdir()) == []  # no ledger, spool or dead-letter store either


def test_cizo_control_in_production_with_a_development_token_exits_before_starting(
    tmp_path: Path, fake_broker: socket.socket
) -> None:
    env = {env_name(field): value for field, value in production_values().items()}
    env |= {"CIZO_PAYGATE_AUTH_TOKEN": default("paygate_auth_token").get_secret_value(),
            "CIZO_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
            "CIZO_DATA_DIR": str(tmp_path),
            "CIZO_MQTT_PORT": str(fake_broker.getsockname()[1]),
            "CIZO_API_PORT": str(services.free_port())}
    run = run_cli("control", env)
    assert_refused_before_starting(run, "control", fake_broker, tmp_path)
    assert "CIZO_PAYGATE_AUTH_TOKEN is a development value" in run.stderr
    assert "1 problem(s)" in run.stderr  # nothing else in this configuration


def test_cizo_bridge_in_production_with_a_development_token_exits_before_starting(
    tmp_path: Path, fake_broker: socket.socket
) -> None:
    env = {"CIZO_ENV": "production", "CIZO_MQTT_USERNAME": "cizo-bridge",
           "CIZO_MQTT_PASSWORD": secrets.token_hex(32),
           "CIZO_MQTT_PORT": str(fake_broker.getsockname()[1]),
           "CIZO_INFLUX_TOKEN": "dev-influx-token", "CIZO_DATA_DIR": str(tmp_path),
           "CIZO_BRIDGE_METRICS_PORT": str(services.free_port())}
    run = run_cli("bridge", env)
    assert_refused_before_starting(run, "bridge", fake_broker, tmp_path)
    assert "CIZO_INFLUX_TOKEN is a development value" in run.stderr
    assert "CIZO_PAYGATE_AUTH_TOKEN" not in run.stderr  # the bridge never reads it


def test_cizo_up_refuses_production_mode(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    from cizo_cli.main import main

    monkeypatch.setenv("CIZO_ENV", "production")
    with pytest.raises(SystemExit) as refused:
        main(["up", "--data-dir", str(tmp_path / "stack")])
    assert "cizo up: the local development stack" in str(refused.value)
    assert "CIZO_ENV=production" in str(refused.value)
    assert not (tmp_path / "stack").exists()
