"""Rate limits hold across control processes: two apps with their own engines on one ledger
(PostgreSQL and SQLite) share every counter; concurrent hits are all counted; the
sliding-window arithmetic on its own; migration 0003_rate_limits goes down and up.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect

from cizo.clock import ManualClock
from cizo.settings import Settings, sqlalchemy_url
from control.api import create_app
from control.ledger.db import alembic_config, migrate
from control.ledger.secrets import generate_secret_key
from control.runtime import Runtime
from control.security.api_keys import create_api_key
from control.security.ratelimit import Counts, Rule, estimate, retry_after
from control.security.shared_limits import Limits, SharedLimit
from tests.api_support import PLAN, TestClient
from tests.security_support import auth

HOUR = 3600.0


def test_the_window_slides_over_two_counters() -> None:
    rule = Rule(limit=10, window_s=HOUR)
    start = 100 * HOUR
    # 10 hits in the previous hour, a quarter into this one: three quarters still count
    c = Counts(start - HOUR, 10, 0)
    assert estimate(rule, c, start + HOUR / 4) == pytest.approx(7.5)
    assert retry_after(rule, c, start + HOUR / 4) == 0
    full = Counts(start, 4, 10)  # 10 before, 4 now: 10 * (1 - t/h) + 4 >= 10 until t = 0.4 h
    assert retry_after(rule, full, start) == pytest.approx(0.4 * HOUR, abs=0.01)
    assert estimate(rule, full, start + 0.4 * HOUR + 1) < 10
    # a full current window: it must become the previous one and fade below the limit
    assert retry_after(rule, Counts(start, 20, 0), start) == pytest.approx(1.5 * HOUR,
                                                                           abs=0.01)
    # counters two windows old are forgotten
    assert estimate(rule, Counts(start - 2 * HOUR, 50, 50), start) == 0
    with pytest.raises(ValueError):
        Rule(limit=0, window_s=1)


@pytest.fixture(name="two")
def two_processes(database_url: str) -> Iterator[tuple[Runtime, Runtime]]:
    """Two runtimes, each with its own engine and pool, on the same ledger."""
    migrate(database_url)
    settings = Settings(database_url=database_url, secret_key=generate_secret_key(),
                        paygate_url="http://127.0.0.1:9", auth_fail_limit=5,
                        auth_fail_window_s=HOUR, unlock_limit=3, unlock_window_s=HOUR)
    clock = ManualClock()
    a, b = Runtime.build(settings, clock=clock), Runtime.build(settings, clock=clock)
    yield a, b
    a.close()
    b.close()


def test_failed_logins_and_unlocks_are_limited_across_processes(
    two: tuple[Runtime, Runtime],
) -> None:
    a, b = two
    admin = create_api_key(a, name="admin", role="admin")[1]
    support = create_api_key(a, name="support", role="support")[1]
    with ExitStack() as stack:
        ca = stack.enter_context(TestClient(create_app(a)))
        cb = stack.enter_context(TestClient(create_app(b)))
        r = ca.post("/v1/kits", json={"kit_id": "KIT-SL", "phone": "90123456", "plan": PLAN},
                    headers=auth(admin))
        assert r.status_code == 201, r.text
        # 5 failed logins, split between the processes, block the address on both
        for client in (ca, cb, ca, cb, ca):
            assert client.get("/v1/kits", headers=auth("cizo_guess")).status_code == 401
        for client in (ca, cb):
            r = client.get("/v1/kits", headers=auth(admin))
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        a.clock.advance(2 * HOUR)  # type: ignore[attr-defined]
        # 3 unlocks per key per hour, whichever process serves them
        body = {"days": 1, "reason": "customer travelling"}
        for client in (ca, cb, ca):
            r = client.post("/v1/kits/KIT-SL/unlock", json=body, headers=auth(support))
            assert r.status_code == 200, r.text
        for client in (cb, ca):
            r = client.post("/v1/kits/KIT-SL/unlock", json=body, headers=auth(support))
            assert r.status_code == 429 and "unlock" in r.json()["detail"]


def test_concurrent_hits_from_two_engines_are_all_counted(
    two: tuple[Runtime, Runtime],
) -> None:
    limits = [SharedLimit(rt.db, "test", Rule(limit=1_000_000, window_s=1e9)) for rt in two]
    now = two[0].clock.now()
    barrier = threading.Barrier(8)

    def hammer(limit: SharedLimit) -> None:
        barrier.wait()
        for _ in range(25):
            limit.add("one-key", now)

    threads = [threading.Thread(target=hammer, args=(limits[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert limits[0].counts("one-key").hits == 200
    assert limits[1].counts("one-key") == limits[0].counts("one-key")


def test_counters_that_no_longer_count_are_pruned(two: tuple[Runtime, Runtime]) -> None:
    a, _ = two
    limits = Limits.of(a)
    now = a.clock.now()
    limits.failed_auth.add("10.0.0.1", now - 3 * HOUR)  # long gone
    limits.failed_auth.add("10.0.0.2", now - HOUR)  # still weighs on this window
    limits.unlocks.add("key:1", now)
    assert limits.prune(now) == 1
    assert limits.failed_auth.counts("10.0.0.1") == Counts(0.0, 0, 0)
    assert limits.failed_auth.counts("10.0.0.2").hits == 1
    assert limits.unlocks.counts("key:1").hits == 1


def test_rate_limits_migration_down_and_up(database_url: str) -> None:
    migrate(database_url)
    cfg = alembic_config(database_url)
    engine = create_engine(sqlalchemy_url(database_url))
    try:
        assert "rate_limits" in inspect(engine).get_table_names()
        command.downgrade(cfg, "0003_rate_limits@0001")
        assert "rate_limits" not in inspect(engine).get_table_names()
        command.upgrade(cfg, "heads")
        assert "rate_limits" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
