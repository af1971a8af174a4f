"""The README's first command, run from a fresh clone: it installs, starts the whole stack,
answers on its ports, and Ctrl-C stops every process it started. Its broker has the
production door: anonymous refused, a provisioned kit's own credentials accepted, on the
plain listener and on the TLS one (a local CA generated on first start), which the
simulated fleet is told to use here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cizo import services
from cizo_cli.stack import mqtt_login_accepted
from tests.support import wait_for

ROOT = Path(__file__).resolve().parents[1]


def _ports() -> dict[str, int]:
    return {name: services.free_port()
            for name in ("mqtt", "mqtt-tls", "api", "influx", "paygate", "momo")}


def test_scripts_up_from_a_fresh_clone_starts_answers_and_stops(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    ports = _ports()
    # French is the local stack's language when the terminal names none
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CIZO_") and k not in ("LANG", "LC_ALL", "LC_MESSAGES")}
    env["CIZO_ADMIN_API_KEY"] = "quickstart-admin-key-0123456789"
    env["CIZO_HISTORY_REAL_S"] = "15"  # the first start's simulated week, faster here
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(
        ["scripts/up", "--kits", "3", "--pay-every", "1", "--fleet-tls",
         *[arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))]],
        cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    api = f"http://127.0.0.1:{ports['api']}"
    headers = {"Authorization": "Bearer quickstart-admin-key-0123456789"}
    try:
        wait_for(lambda: "La pile CIZO est démarrée".encode() in (tmp_path / "up.log")
                 .read_bytes()
                 or proc.poll() is not None, timeout_s=420, what="the stack to come up")
        up_at = time.monotonic()
        out = (tmp_path / "up.log").read_text()
        assert proc.poll() is None, out
        assert f"{api}/dashboard" in out and f"mqtt://127.0.0.1:{ports['mqtt']}" in out
        assert f"mqtts://127.0.0.1:{ports['mqtt-tls']}" in out and "lien parc  TLS" in out
        assert httpx.get(f"{api}/readyz").status_code == 200
        assert httpx.get(f"{api}/dashboard").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{ports['influx']}/ping").status_code == 204
        # the broker answers, refuses anonymous and a wrong password, admits a kit's own login
        assert mqtt_login_accepted(ports["mqtt"], None, None, timeout_s=10) is False
        fleet = json.loads((clone / "var" / "stack" / "fleet.json").read_text())
        kit1 = next(k for k in fleet if k["kit_id"] == "SIM00001")
        assert mqtt_login_accepted(ports["mqtt"], kit1["mqtt_username"], "wrong-password",
                                   timeout_s=10) is False
        assert mqtt_login_accepted(ports["mqtt"], kit1["mqtt_username"], kit1["mqtt_password"],
                                   timeout_s=10) is True
        ca = clone / "var" / "stack" / "tls" / "ca.crt"
        assert mqtt_login_accepted(ports["mqtt-tls"], kit1["mqtt_username"],
                                   kit1["mqtt_password"], timeout_s=10, tls_ca=ca) is True
        assert mqtt_login_accepted(ports["mqtt-tls"], None, None, timeout_s=10,
                                   tls_ca=ca) is False
        kit = httpx.get(f"{api}/v1/kits/SIM00001", headers=headers)
        assert kit.status_code == 200, kit.text
        # the simulated kit is online and its telemetry lands in InfluxDB
        wait_for(lambda: httpx.get(f"{api}/v1/kits/SIM00001", headers=headers)
                 .json().get("online"), timeout_s=30, what="SIM00001 online")
        query = {"db": "cizo", "q": "SELECT count(soc) FROM kit_telemetry"}
        wait_for(lambda: "series" in httpx.get(
            f"http://127.0.0.1:{ports['influx']}/query", params=query).json()["results"][0],
            timeout_s=30, what="telemetry in InfluxDB")
        # a first start played a week of history: the dashboard has a past at once
        assert "7.0/7 | 3 kits" in out and "historique joué en" in out
        chart = httpx.get(f"{api}/v1/dashboard/kits/SIM00001/telemetry",
                          params={"hours": 168}, headers=headers).json()
        assert min(p["t"] for p in chart["points"]) < time.time() - 5 * 86_400
        wait_for(lambda: httpx.get(f"{api}/v1/dashboard/kits/SIM00001", headers=headers)
                 .json()["metrics"] is not None, timeout_s=60, what="the start-up analytics")
        _charts_drawn_in_french(api, headers["Authorization"].split()[1], up_at)
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does in a terminal
        try:
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    out = (tmp_path / "up.log").read_text()
    assert code == 0, out
    assert "tous les processus lancés par cizo up sont arrêtés" in out
    time.sleep(0.5)
    for name, port in ports.items():
        assert services.port_is_free(port), f"{name} port {port} still held after Ctrl-C"
    leftover = subprocess.run(["pgrep", "-f", str(clone)], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", f"processes left behind: {leftover.stdout}"


def _charts_drawn_in_french(api: str, key: str, up_at: float) -> None:
    """What an operator sees in Chromium, waiting at most until 60 s after "stack is up"
    (the promise of a first open): the fleet page's charts and tiles and a kit's week of
    charts drawn, in French."""
    from playwright.sync_api import sync_playwright

    from tests.browser_support import CHROMIUM_ARGS, french_page

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = french_page(browser, f"{api}/dashboard#/fleet", key)
            page.wait_for_function("window.cizoCharts && window.cizoCharts['c-health']",
                                   timeout=max(1_000, (up_at + 60 - time.monotonic()) * 1000))
            charts = page.evaluate("window.cizoCharts")
            assert sum(charts["c-online"]["series"][0]["values"]) == 3
            assert sum(charts["c-health"]["series"][0]["values"]) == 3
            assert page.inner_text("#t-kits") == "3" and "FCFA" in page.inner_text("#t-month")
            assert "Santé des batteries" in page.inner_text("body")
            page.goto(f"{api}/dashboard#/kit/SIM00001")
            page.wait_for_function("window.cizoKit && window.cizoCharts['c-power']",
                                   timeout=max(1_000, (up_at + 60 - time.monotonic()) * 1000))
            charts = page.evaluate("window.cizoCharts")
            assert len(charts["c-soc"]["series"][0]["points"]) > 24  # days, not minutes
            assert max(max(s["values"]) for s in charts["c-power"]["series"]) > 0
        finally:
            browser.close()


@pytest.mark.parametrize("how", ["flag", "env"])
@pytest.mark.parametrize("name", ["mqtt", "momo"])
def test_up_refuses_a_taken_port_naming_it(tmp_path: Path, name: str, how: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = _ports()
        ports[name] = port
        env = {k: v for k, v in os.environ.items() if not k.startswith("CIZO_")}
        if how == "env":  # the port from CIZO_<NAME>_PORT, the others from flags
            env[f"CIZO_{name.upper()}_PORT"] = str(ports.pop(name))
        result = subprocess.run(
            [sys.executable, "-m", "cizo_cli", "up", "--data-dir", str(tmp_path / "stack"),
             *[a for n, p in ports.items() for a in (f"--{n}-port", str(p))]],
            capture_output=True, text=True, timeout=60, env=env,
        )
    assert result.returncode == 1
    assert f"{name} port {port}" in result.stderr and "already in use" in result.stderr
