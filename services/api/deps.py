"""Dependencies injected into routes: the app's services and the caller's identity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from services.config import Settings
from services.core.auth import Principal, authenticate
from services.orchestrator.ray_gateway import RayGateway
from services.orchestrator.reconciler import Reconciler
from services.orchestrator.serve_deployer import ServeDeployer
from services.store.db import Database


@dataclass
class Services:
    settings: Settings
    db: Database
    gateway: RayGateway
    reconciler: Reconciler
    deployer: ServeDeployer


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def current_principal(
    services: ServicesDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    return authenticate(services.db, authorization)


CurrentUser = Annotated[Principal, Depends(current_principal)]
