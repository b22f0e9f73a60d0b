"""Running Crucible: ``up`` (a local Ray head and the API), ``api`` (the API alone), ``demo``
(the whole flow on a throwaway stack) and ``db upgrade`` (the schema's migrations)."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from services.cli.common import DEFAULT_DATA_DIR, JsonOpt, _out, app, console, db_app
from services.client import Crucible


@app.command()
def up(
    port: Annotated[int, typer.Option(envvar="CRUCIBLE_PORT")] = 8080,
    data_dir: Annotated[Path, typer.Option(envvar="CRUCIBLE_DATA_DIR")] = DEFAULT_DATA_DIR,
    ray_port: Annotated[int, typer.Option(envvar="CRUCIBLE_RAY_GCS_PORT")] = 6380,
    dashboard_port: Annotated[int, typer.Option(envvar="CRUCIBLE_RAY_DASHBOARD_PORT")] = 8265,
    serve_port: Annotated[int, typer.Option(envvar="CRUCIBLE_SERVE_PORT")] = 8000,
    client_server_port: int = 10001,
    agent_port: int = 52365,
    num_cpus: int | None = None,
) -> None:
    """Start a local Ray head and the API (SQLite and artifacts under --data-dir)."""
    from services.stack import (
        LocalStack,
        PortBusy,
        StackConfig,
        UnsafeDir,
        stop_on_signals,
    )

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop_on_signals()
    console.print(f"Starting Crucible (data in {data_dir}) ...")
    try:
        stack = LocalStack(
            StackConfig(
                data_dir=data_dir.expanduser(),
                port=port,
                ray_port=ray_port,
                dashboard_port=dashboard_port,
                serve_port=serve_port,
                client_server_port=client_server_port,
                agent_port=agent_port,
                num_cpus=num_cpus,
                ray_address=os.environ.get("RAY_ADDRESS") or None,
            )
        )
        stack.start()
    except KeyboardInterrupt:  # Ctrl-C while starting: start() has stopped what it started
        raise typer.Exit(0) from None
    except (PortBusy, UnsafeDir) as exc:
        console.print(f"[red]error[/]: {exc}")
        raise typer.Exit(1) from None
    console.print(
        f"[bold green]Crucible is up[/]: API {stack.cfg.api_url}, "
        f"Ray dashboard {stack.cfg.dashboard_url}; admin token in "
        f"{data_dir / 'token'} (or CRUCIBLE_BOOTSTRAP_TOKEN). Ctrl-C stops it."
    )
    raise typer.Exit(stack.supervise())


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="Default: CRUCIBLE_HOST or 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="Default: CRUCIBLE_PORT or 8080")] = None,
) -> None:
    """Run the API server alone (Ray elsewhere: CRUCIBLE_RAY_DASHBOARD_URL / RAY_ADDRESS)."""
    import uvicorn

    from services.api.app import create_app
    from services.config import Settings

    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    settings = Settings(**overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # One line per call to Ray's dashboard would drown what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning")


@app.command()
def demo(
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Where the demo stack keeps its data (default: a new temporary folder)"),
    ] = None,
    port: int = 8080,
) -> None:
    """Run the whole flow on the built-in Adult dataset, then stop."""
    from services.demo import run_demo
    from services.stack import LocalStack, PortBusy, StackConfig, UnsafeDir

    folder = data_dir or Path(tempfile.mkdtemp(prefix="crucible-demo-"))
    t0 = time.monotonic()
    console.print(f"Starting a local stack (Ray head + API on :{port}, data in {folder}) ...")
    try:
        stack = LocalStack(StackConfig(data_dir=folder, port=port))
        stack.start()
    except (PortBusy, UnsafeDir) as exc:
        console.print(f"[red]error[/]: {exc}")
        raise typer.Exit(1) from None
    try:
        console.print(f"Stack ready in {time.monotonic() - t0:.0f}s")
        token = (folder / "token").read_text().strip()
        with Crucible(stack.cfg.api_url, token) as client:
            code = run_demo(client, console)
    finally:
        console.print("Stopping the stack ...")
        stack.stop()
    console.print(f"Total {time.monotonic() - t0:.0f}s")
    raise typer.Exit(code)


@db_app.command("upgrade")
def db_upgrade(
    data_dir: Annotated[Path, typer.Option(envvar="CRUCIBLE_DATA_DIR")] = DEFAULT_DATA_DIR,
    database_url: Annotated[
        str | None,
        typer.Option(envvar="CRUCIBLE_DATABASE_URL", help="Default: SQLite in --data-dir."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Bring the database's schema to the newest migration (the API does it too when it
    starts); prints the revision before and after."""
    from alembic.migration import MigrationContext
    from sqlalchemy import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from services.store.db import make_engine, migrate

    url = database_url or f"sqlite:///{data_dir.expanduser() / 'crucible.db'}"
    shown = make_url(url).render_as_string(hide_password=True)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            before = MigrationContext.configure(conn).get_current_revision()
        migrate(engine)
        with engine.connect() as conn:
            after = MigrationContext.configure(conn).get_current_revision()
    except SQLAlchemyError as exc:
        console.print(f"[red]Migration of {shown} failed:[/] {exc}")
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    if as_json:
        _out({"database": shown, "before": before, "after": after}, True)
        return
    change = "already current" if before == after else f"{before or 'empty'} -> {after}"
    console.print(f"{shown}: {change} (revision {after})", highlight=False)
