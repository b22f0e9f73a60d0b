"""Shared fixtures: real databases (SQLite and PostgreSQL) and small datasets."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import create_engine, text

from jobs.datasets import BUILTIN
from services.store.db import Database, migrate
from services.store.models import Base

POSTGRES_URL = os.environ.get(
    "CRUCIBLE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _postgres_available() -> bool:
    try:
        with create_engine(POSTGRES_URL).connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


def _reset(url: str) -> None:
    engine = create_engine(url)
    Base.metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: SQLite in tmp_path, or the local PostgreSQL reset."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    if not _postgres_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_URL}")
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_URL}")
    _reset(POSTGRES_URL)
    yield POSTGRES_URL
    _reset(POSTGRES_URL)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    migrate(database.engine)
    yield database
    database.engine.dispose()


@pytest.fixture(scope="session")
def adult_table() -> pa.Table:
    return pq.read_table(BUILTIN["adult"].path)


@pytest.fixture(scope="session")
def adult_small(adult_table: pa.Table, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 Adult rows as Parquet: big enough to learn, small enough to train in seconds."""
    path = tmp_path_factory.mktemp("data") / "adult_small.parquet"
    pq.write_table(adult_table.slice(0, 3000), path)
    return path
