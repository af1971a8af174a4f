"""Engine, sessions and migrations for the ledger (SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from cizo.settings import sqlalchemy_url

MIGRATIONS = Path(__file__).with_name("migrations")

# SQLite's single writer lock, taken with a write that changes nothing (see Database.writing)
SQLITE_WRITE_LOCK = text("UPDATE kits SET cmd_seq = cmd_seq WHERE 0")


def make_engine(url: str, *, pool_size: int = 20, max_overflow: int = 10) -> Engine:
    """``pool_size`` (PostgreSQL): connections kept open. Size it to the threads that use
    the database at once (the API's worker threads, the scheduler): a checkout beyond it
    opens an overflow connection that is closed again on return, a new server process for
    each, which under load cost more CPU than the payment it served."""
    url = sqlalchemy_url(url)
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL is kept in the file: set it once. Setting it takes a lock that the busy
            # timeout does not wait for, so a connection opened while others write failed.
            if cur.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    # no pool_pre_ping: it cost a round trip per checkout on the payment path. A connection
    # that died (database restarted) fails its statement once (the API answers 503 and the
    # provider retries) and SQLAlchemy then invalidates the whole pool.
    return create_engine(url, pool_size=pool_size, max_overflow=max_overflow)


def alembic_config(url: str) -> Config:
    """Alembic's configuration for the ledger at ``url`` (our migrations)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return cfg


def migrate(url: str) -> None:
    """Bring the schema to the newest Alembic revision(s)."""
    command.upgrade(alembic_config(url), "heads")  # feature branches off 0001 may each add a head


class Database:
    """An engine plus a session factory; ``session()`` commits or rolls back."""

    def __init__(self, url: str, *, pool_size: int = 20, max_overflow: int = 10) -> None:
        self.url = sqlalchemy_url(url)
        self.engine = make_engine(url, pool_size=pool_size, max_overflow=max_overflow)
        self._factory = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._factory() as s, s.begin():
            yield s

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """A Core transaction that reads rows in order to write them back.

        PostgreSQL: the caller locks what it reads (``FOR UPDATE``). SQLite ignores
        ``FOR UPDATE`` and lets each read see whatever committed last, so its one writer
        lock is taken first: every read that follows sees the latest state and nobody else
        commits before this transaction ends."""
        with self.engine.begin() as conn:
            if not self.is_postgres:
                conn.execute(SQLITE_WRITE_LOCK)
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()
