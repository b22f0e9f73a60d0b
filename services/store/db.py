"""Engine, sessions and schema migrations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str) -> Engine:
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        # The API serves requests from a thread pool; SQLite needs that said explicitly.
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    else:
        # A connection for each thread the API serves from (anyio's 40) and for its own
        # threads. With SQLAlchemy's default pool (5, +10 that close on return) an API under
        # load opened a new PostgreSQL connection every third request (benchmarks/api_load.py).
        # Opened only when needed: a quiet API holds few.
        kwargs.update(pool_size=40, max_overflow=10)
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL lets readers go on while the reconciler writes; foreign keys are off in
            # SQLite unless asked for.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    return engine


@contextmanager
def migration_connection(engine: Engine) -> Iterator[Connection]:
    """A connection, in a transaction, to change the schema with.

    SQLite alters a table by rebuilding it (Alembic's batch mode), and dropping the old copy
    would trip the foreign keys of rows that point at it (trials at jobs). So, as SQLite's
    own procedure for schema changes says, foreign keys are off during the change (the
    pragma only takes effect outside a transaction) and every one is checked before the
    commit: a change that broke one rolls back.
    """
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        try:
            with conn.begin():
                yield conn
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise RuntimeError(f"the migration broke foreign keys: {broken[:5]}")
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()


def migrate(engine: Engine, target: str = "head", down: bool = False) -> None:
    """Bring the schema to ``target`` (the newest migration by default; a no-op when it is
    there already); ``down`` goes back to an older revision."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with migration_connection(engine) as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, target)


class Database:
    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One unit of work: committed when the block ends, rolled back if it raises."""
        session = self.sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
