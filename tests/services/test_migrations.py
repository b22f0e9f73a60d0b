"""Alembic migrations against the models, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, insert, inspect

from services.core.datasets import builtin_id, seed_builtins
from services.store.db import MIGRATIONS, Database, migrate, migration_connection
from services.store.models import Base, Dataset

# A landed migration is history: databases out there ran it, so it must never change.
# Schema changes go into a new revision instead.
LANDED = {
    "0001_initial_schema.py": "ea610a7beb2aca73def676c863d638d7eaed8668cf69f5f9a48e97a93f2c067c",
    "0002_audits.py": "fd86d2ca7601257052b884ddda9187a8d0e32250e0654f68ca5f169322d11244",
    "0003_dataset_uri_and_quality.py": (
        "19d980e488214b0c5d6bba5a73ee40b397fba90d111109505eca34dcd0abd444"
    ),
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
        with migration_connection(engine) as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0001")
        tables = set(inspect(engine).get_table_names())
        assert "audits" not in tables and "jobs" in tables
        migrate(engine)
        assert "audits" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_dataset_quality_migration_keeps_rows_and_goes_down_and_up(database_url: str) -> None:
    """From the previous schema (0002) with a dataset in it: the row survives 0003 with no
    report, and the next start fills one in for a built-in; down to 0002 drops the columns."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    adult = builtin_id("adult")
    db = Database(database_url)
    try:
        with migration_connection(db.engine) as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0002")
            conn.execute(
                insert(Dataset).values(
                    id=adult, name="adult", uri="builtin://adult", format="parquet",
                    sha256="0" * 64, num_rows=1, size_bytes=1, columns=[], builtin=True,
                )
            )  # fmt: skip
        migrate(db.engine)
        names = {c["name"] for c in inspect(db.engine).get_columns("datasets")}
        assert {"source_uri", "quality"} <= names
        with db.session() as s:
            row = s.get(Dataset, adult)
            assert row is not None and row.quality is None and row.source_uri is None
            seed_builtins(s)
        with db.session() as s:
            row = s.get(Dataset, adult)
            assert row is not None and row.quality is not None
            assert row.quality["label_balance"]["column"] == "income"
        with migration_connection(db.engine) as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0002")
        names = {c["name"] for c in inspect(db.engine).get_columns("datasets")}
        assert not {"source_uri", "quality"} & names
        with db.engine.connect() as conn:
            assert (conn.exec_driver_sql("SELECT count(*) FROM datasets").scalar() or 0) >= 1
        migrate(db.engine)
    finally:
        db.engine.dispose()


def test_scoring_runs_migration_from_the_previous_schema_goes_down_and_up(
    database_url: str,
) -> None:
    """From 0005 with a registered model in it: 0006 adds scoring_runs beside the rows, a run
    can reference the model, and down to 0005 drops the table and keeps the model."""
    zero = "0" * 64
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    engine = create_engine(database_url)
    try:
        with migration_connection(engine) as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0005")
            conn.exec_driver_sql(
                "INSERT INTO datasets (id, name, uri, format, sha256, num_rows, size_bytes, "
                "columns, builtin, created_at) VALUES ('ds_1', 'd', 'file:///d.parquet', "
                f"'parquet', '{zero}', 1, 1, '[]', false, CURRENT_TIMESTAMP)"
            )
            conn.exec_driver_sql(
                "INSERT INTO jobs (id, name, status, spec, dataset_id, created_at, attempts, "
                "cancel_requested, resumable) VALUES ('job_1', 'j', 'succeeded', '{}', 'ds_1', "
                "CURRENT_TIMESTAMP, 1, false, false)"
            )
            conn.exec_driver_sql(
                "INSERT INTO model_versions (id, job_id, candidate, trial_key, dataset_id, "
                "dataset_sha256, bundle_uri, bundle_digest, metrics, created_at) VALUES "
                f"('mdl_1', 'job_1', 'best', 't', 'ds_1', '{zero}', 'file:///b', '{zero}', '{{}}', "
                "CURRENT_TIMESTAMP)"
            )
        assert "scoring_runs" not in inspect(engine).get_table_names()
        migrate(engine)
        assert "scoring_runs" in inspect(engine).get_table_names()
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO scoring_runs (id, model_id, dataset_id, dataset_sha256, status, "
                f"request, rows_done, created_at) VALUES ('scr_1', 'mdl_1', 'ds_1', '{zero}', "
                "'queued', '{}', 0, CURRENT_TIMESTAMP)"
            )
            assert conn.exec_driver_sql("SELECT count(*) FROM scoring_runs").scalar() == 1
        with migration_connection(engine) as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0005")
        tables = set(inspect(engine).get_table_names())
        assert "scoring_runs" not in tables and "model_versions" in tables
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM model_versions").scalar() == 1
        migrate(engine)
        assert "scoring_runs" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_monitoring_migration_keeps_endpoints_and_goes_down_and_up(database_url: str) -> None:
    """From 0006 with a served endpoint: 0007 adds the monitoring tables and the endpoint's
    serving, canary and alert columns (NULL on the old row, read as the default serving
    settings); down to 0006 drops them and keeps the endpoint."""
    from services.core.monitoring import serving_spec
    from services.store.models import Endpoint

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    db = Database(database_url)
    try:
        with migration_connection(db.engine) as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0006")
            conn.exec_driver_sql(
                "INSERT INTO datasets (id, name, uri, format, sha256, num_rows, size_bytes, "
                "columns, builtin, created_at) VALUES ('ds_1', 'd', 'file:///d.parquet', "
                "'parquet', '" + "0" * 64 + "', 1, 1, '[]', false, CURRENT_TIMESTAMP)"
            )
            conn.exec_driver_sql(
                "INSERT INTO jobs (id, name, status, spec, dataset_id, created_at, attempts, "
                "cancel_requested, resumable) VALUES ('job_1', 'j', 'succeeded', '{}', 'ds_1', "
                "CURRENT_TIMESTAMP, 1, false, false)"
            )
            conn.exec_driver_sql(
                "INSERT INTO model_versions (id, job_id, candidate, trial_key, dataset_id, "
                "dataset_sha256, bundle_uri, bundle_digest, metrics, created_at) VALUES "
                "('mdl_1', 'job_1', 'best', 't', 'ds_1', '"
                + "0" * 64
                + "', 'file:///b', '"
                + "1" * 64
                + "', '{}', CURRENT_TIMESTAMP)"
            )
            conn.exec_driver_sql(
                "INSERT INTO endpoints (name, model_id, status, created_at, updated_at) VALUES "
                "('adult', 'mdl_1', 'running', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        migrate(db.engine)
        tables = set(inspect(db.engine).get_table_names())
        assert {"prediction_logs", "endpoint_events"} <= tables
        names = {c["name"] for c in inspect(db.engine).get_columns("endpoints")}
        assert {"serving", "canary_model_id", "canary_percent", "alert"} <= names
        with db.session() as s:
            row = s.get(Endpoint, "adult")
            assert row is not None and row.serving is None and row.alert is None
            assert serving_spec(row).monitoring_window == 1000
        with db.engine.begin() as conn:
            conn.exec_driver_sql(
                'INSERT INTO prediction_logs (endpoint, model_id, request_id, "index", ts, '
                "features, prediction, latency_ms) VALUES ('adult', 'mdl_1', 'r1', 0, "
                "CURRENT_TIMESTAMP, '{}', '1', 1.0)"
            )
        with migration_connection(db.engine) as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0006")
        tables = set(inspect(db.engine).get_table_names())
        assert not {"prediction_logs", "endpoint_events"} & tables
        names = {c["name"] for c in inspect(db.engine).get_columns("endpoints")}
        assert not {"serving", "canary_model_id", "canary_percent", "alert"} & names
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM endpoints").scalar() == 1
        migrate(db.engine)
        assert "prediction_logs" in inspect(db.engine).get_table_names()
    finally:
        db.engine.dispose()
