"""Migration 0002_payments goes down and up again on both databases."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, inspect

from cizo.settings import sqlalchemy_url
from control.ledger.db import alembic_config, migrate


def test_payments_migration_down_and_up(database_url: str) -> None:
    migrate(database_url)
    cfg = alembic_config(database_url)
    engine = create_engine(sqlalchemy_url(database_url))
    try:
        assert "suspense_links" in inspect(engine).get_table_names()
        command.downgrade(cfg, "0002_payments@0001")
        insp = inspect(engine)
        assert not {"suspense_links", "recon_imports", "recon_proposals",
                    "webhook_secrets"} & set(insp.get_table_names())
        assert "kind" not in {c["name"] for c in insp.get_columns("payments")}
        command.upgrade(cfg, "heads")
        insp = inspect(engine)
        assert {"suspense_links", "recon_proposals"} <= set(insp.get_table_names())
        assert "next_check_at" in {c["name"] for c in insp.get_columns("payments")}
    finally:
        engine.dispose()
