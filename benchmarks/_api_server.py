"""The API load benchmark's servers, each a process of its own, served alike: uvicorn, one
worker, ``log_level="warning"`` (no access log), as ``crucible api`` serves the API.

    python -m benchmarks._api_server crucible --port P --database-url U --data-dir D \\
        --token T --ray-url R [--no-reconcile]
    python -m benchmarks._api_server noop --port P

``crucible`` is ``create_app`` as ``crucible api`` builds it (reconciler on, logging as that
command sets it up), with the per-token rate limit off (a benchmark is one token sending
thousands of requests a minute) and one route added: ``GET /bench/noop`` answering ``{}``, so
the cost of the app's middlewares alone is seen. ``noop`` is a bare FastAPI app with only that
route: the floor that ``GET /v1/jobs`` is compared with.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import uvicorn
from fastapi import FastAPI


def add_noop(app: FastAPI) -> None:
    @app.get("/bench/noop")
    async def noop() -> dict[str, str]:
        return {}


def crucible_app(args: argparse.Namespace) -> FastAPI:
    from services.api.app import create_app
    from services.config import Settings

    settings = Settings(
        data_dir=Path(args.data_dir),
        database_url=args.database_url,
        bootstrap_token=args.token,
        ray_dashboard_url=args.ray_url,
        rate_limit_per_minute=0,
    )
    # As services/cli/stack.py's `crucible api` does.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    app = create_app(settings, reconcile=not args.no_reconcile)
    add_noop(app)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["crucible", "noop"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url")
    parser.add_argument("--data-dir")
    parser.add_argument("--token")
    parser.add_argument("--ray-url")
    parser.add_argument("--no-reconcile", action="store_true")
    args = parser.parse_args()
    if args.kind == "crucible":
        app = crucible_app(args)
    else:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        add_noop(app)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
