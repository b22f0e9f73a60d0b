"""The FastAPI application: wiring of settings, store, Ray gateway, reconciler and routers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from services import __version__
from services.api import errors, openapi
from services.api.audit_log import AuditLogMiddleware
from services.api.deps import Services
from services.api.gate import AuthenticateFirst
from services.api.limits import BodyLimitMiddleware, RateLimiter
from services.api.metrics import Metrics, RequestMetricsMiddleware
from services.api.routers import (
    audits,
    datasets,
    health,
    identity,
    internal,
    jobs,
    models,
    monitoring,
    projects,
    scoring,
    spec,
    ui,
)
from services.config import Settings
from services.core.auth import ensure_bootstrap_token
from services.core.datasets import seed_builtins, sweep_stale_uploads
from services.core.monitoring import Monitor
from services.core.promotion import auto_promote
from services.core.tokens import ExpirySync
from services.orchestrator.ray_gateway import RayGateway
from services.orchestrator.reconciler import Reconciler
from services.orchestrator.serve_deployer import ServeDeployer
from services.store.db import Database, migrate
from services.store.repositories import JobRepository, TrialRepository

log = logging.getLogger("crucible.api")


def build_services(settings: Settings) -> Services:
    db = Database(settings.resolved_database_url)
    gateway = RayGateway(settings.resolved_ray_dashboard_url, settings.ray_auth_token)
    deployer = ServeDeployer(settings, gateway)
    return Services(
        settings=settings,
        db=db,
        gateway=gateway,
        reconciler=Reconciler(
            settings, db, gateway, on_succeeded=lambda job_id: auto_promote(db, deployer, job_id)
        ),
        deployer=deployer,
    )


def prepare_store(services: Services) -> str | None:
    """Migrate, seed the built-in datasets, ensure the admin token (returned if new)."""
    migrate(services.db.engine)
    with services.db.session() as s:
        seed_builtins(s)
    swept = sweep_stale_uploads(services.settings.resolved_artifact_root)
    if swept:
        log.warning("removed %d temporary upload file(s) left by a killed API", swept)
    return ensure_bootstrap_token(services.db, services.settings)


def create_app(settings: Settings | None = None, *, reconcile: bool = True) -> FastAPI:
    settings = settings or Settings()
    services = build_services(settings)
    monitor = Monitor(services.db)
    # Serving replicas drop expired tokens when this pushes their config again.
    token_sync = ExpirySync(services.db, services.deployer)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        new_token = prepare_store(services)
        if new_token is not None:
            # Shown once; only its hash is stored. It is also in <data-dir>/token (0600).
            print(
                f"\nAdmin token (saved to {settings.data_dir / 'token'}):\n  {new_token}\n",
                flush=True,
            )
        if reconcile:
            services.reconciler.start()
            token_sync.start()
        try:
            yield
        finally:
            token_sync.stop()
            monitor.close()
            services.reconciler.stop()
            services.gateway.close()
            services.db.engine.dispose()

    app = FastAPI(
        title="Crucible",
        version=__version__,
        lifespan=lifespan,
        description="Training cluster service: search, audit, promote, serve.",
    )
    app.state.services = services
    app.state.monitor = monitor
    app.state.token_sync = token_sync
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_minute)

    def counts() -> tuple[dict[str, int], dict[str, int]]:
        with services.db.session() as s:
            return JobRepository(s).count_by_status(), TrialRepository(s).count_by_status()

    app.state.metrics = metrics = Metrics(counts, monitor.samples)

    errors.install(app)
    openapi.install(app)
    routers = (
        health.router,
        datasets.router,
        jobs.router,
        audits.router,
        models.router,
        scoring.router,
        spec.router,
        internal.router,
        monitoring.router,
        identity.router,
        projects.router,
        ui.router,
    )
    for router in routers:
        app.include_router(router)

    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    # The last middleware added is the outermost. From the outside in: CORS (its headers on
    # every answer), the audit log (it records what the next two refuse too), the caller's
    # authentication (before any byte of a body is read), the body limit.
    app.add_middleware(
        BodyLimitMiddleware,
        max_body=settings.max_body_bytes,
        max_upload=settings.max_upload_bytes,
        max_internal=settings.max_internal_body_bytes,
    )
    routes = [route for router in routers for route in router.routes]
    app.add_middleware(AuthenticateFirst, routes=routes)
    app.add_middleware(AuditLogMiddleware, db=services.db)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
            expose_headers=["Retry-After", "X-Request-ID", "Idempotent-Replayed"],
        )
    return app
