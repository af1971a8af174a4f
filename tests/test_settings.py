"""One typed settings object: environment over TOML file over defaults, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from cizo.settings import Settings


def test_environment_overrides_the_file_which_overrides_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "cizo.toml"
    conf.write_text('mqtt_port = 2883\ninflux_db = "fromfile"\nsweep_interval_s = 0.25\n')
    monkeypatch.setenv("CIZO_CONFIG", str(conf))
    monkeypatch.setenv("CIZO_MQTT_PORT", "3883")
    s = Settings()
    assert s.mqtt_port == 3883  # environment wins
    assert s.influx_db == "fromfile"  # file beats the default
    assert s.sweep_interval_s == 0.25
    assert s.api_port == Settings.model_fields["api_port"].default


def test_unknown_keys_in_the_file_are_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "cizo.toml"
    conf.write_text("mqtt_prot = 1\n")
    monkeypatch.setenv("CIZO_CONFIG", str(conf))
    with pytest.raises(ValueError, match="mqtt_prot"):
        Settings()


def test_missing_config_file_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIZO_CONFIG", "/nonexistent/cizo.toml")
    with pytest.raises(FileNotFoundError, match=r"/nonexistent/cizo\.toml"):
        Settings()


def test_bad_values_fail_at_the_edge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIZO_MQTT_PORT", "not-a-port")
    with pytest.raises(ValidationError, match="mqtt_port"):
        Settings()


def test_secrets_are_hidden_and_the_secret_key_is_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CIZO_SECRET_KEY", raising=False)
    monkeypatch.setenv("CIZO_ADMIN_API_KEY", "very-secret-admin-key")
    s = Settings()
    assert "very-secret-admin-key" not in repr(s)
    with pytest.raises(RuntimeError, match="CIZO_SECRET_KEY"):
        s.require_secret_key()


def test_cli_reports_invalid_configuration_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cizo_cli.main import main

    monkeypatch.setenv("CIZO_SWEEP_INTERVAL_S", "soon")
    with pytest.raises(SystemExit) as exc:
        main(["migrate"])
    assert "invalid configuration" in str(exc.value) and "sweep_interval_s" in str(exc.value)
