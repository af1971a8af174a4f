"""Fixtures that start real servers on free ports: Mosquitto, influxd, PostgreSQL databases.

Nothing here is mocked. PostgreSQL is the one server we do not start per run: the
test command (scripts/test) makes sure one is reachable at ``CIZO_TEST_PG_ADMIN_URL``
(default ``postgresql://postgres@127.0.0.1:5432/postgres``), and each run creates and
drops its own fresh databases there.

The fixtures built on these (the control Runtime, API keys, provider simulators) live in
the modules ``pytest_plugins`` names, so every test module can ask for them by name.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psycopg
import pytest

from cizo import services

if TYPE_CHECKING:
    from tests.bridge_support import FaultRig

pytest_plugins = ["tests.fixtures.runtime"]

PG_ADMIN_URL = os.environ.get(
    "CIZO_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture
def cli_in_english(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI speaks English (LANG), for tests that read its lines in English; without
    it the CLI follows the terminal, else ``default_locale`` (French)."""
    monkeypatch.setenv("LANG", "en_US.UTF-8")
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.delenv("LC_MESSAGES", raising=False)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.ManagedProcess]:
    """A private broker for the session (restartable: fault tests stop and start it)."""
    proc = services.mosquitto(tmp_path_factory.mktemp("mosquitto"), services.free_port())
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.InfluxProcess]:
    proc = services.influxd(tmp_path_factory.mktemp("influxd"), services.free_port())
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def fault_rig(tmp_path: Path) -> Iterator[FaultRig]:
    """A private Mosquitto and influxd that a bridge fault test may stop, kill and restart
    (tests/bridge_support.py); what the test started on them is stopped at its end."""
    from tests.bridge_support import FaultRig

    broker = services.mosquitto(tmp_path / "mosquitto", services.free_port())
    influxd = services.influxd(tmp_path / "influxd", services.free_port())
    with services.running(broker, influxd):
        rig = FaultRig(broker, influxd, tmp_path / "var")
        try:
            yield rig
        finally:
            rig.close()


@pytest.fixture
def influx_db(influxd: services.InfluxProcess) -> Iterator[str]:
    """A fresh InfluxDB database name per test, created on the session's influxd."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = f"http://127.0.0.1:{influxd.port}"
    httpx.post(f"{url}/query", params={"q": f'CREATE DATABASE "{name}"'}).raise_for_status()
    yield name
    httpx.post(f"{url}/query", params={"q": f'DROP DATABASE "{name}"'})


def _pg_url_for(dbname: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{dbname}"


@pytest.fixture(scope="session")
def pg_admin() -> str:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({exc}); "
            "run the tests through scripts/test, which installs and starts it"
        )
    return PG_ADMIN_URL


def _create_pg_database(admin_url: str) -> str:
    name = f"cizo_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def _drop_pg_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_database(pg_admin: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database (plain ``postgresql://`` URL, as psycopg takes
    it), dropped after the test whatever it left connected."""
    name = _create_pg_database(pg_admin)
    try:
        yield _pg_url_for(name)
    finally:
        _drop_pg_database(pg_admin, name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty ledger database URL: SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    url: str = request.getfixturevalue("pg_database")
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture
def another_database_url(request: pytest.FixtureRequest, database_url: str,
                         tmp_path: Path) -> Iterator[str]:
    """A second empty database of the same kind as ``database_url`` (a restore's target)."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'another.db'}"
        return
    admin: str = request.getfixturevalue("pg_admin")
    name = _create_pg_database(admin)
    try:
        yield _pg_url_for(name).replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        _drop_pg_database(admin, name)
