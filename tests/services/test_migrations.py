"""Alembic migrations against the models, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from services.store.db import MIGRATIONS, migrate
from services.store.models import Base

# A landed migration is history: databases out there ran it, so it must never change.
# Schema changes go into a new revision instead.
LANDED = {
    "0001_initial_schema.py": "ea610a7beb2aca73def676c863d638d7eaed8668cf69f5f9a48e97a93f2c067c",
}


def test_upgrade_head_on_an_empty_database_matches_the_models(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        assert inspect(engine).get_table_names() == []
        migrate(engine)
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_landed_migrations_are_unchanged() -> None:
    versions = Path(MIGRATIONS) / "versions"
    for name, digest in LANDED.items():
        assert hashlib.sha256((versions / name).read_bytes()).hexdigest() == digest, name


def test_audits_migration_goes_down_and_up(database_url: str) -> None:
    engine = create_engine(database_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    try:
        migrate(engine)
        assert "audits" in inspect(engine).get_table_names()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0001")
        tables = set(inspect(engine).get_table_names())
        assert "audits" not in tables and "jobs" in tables
        migrate(engine)
        assert "audits" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
