"""Serve applications as data: build the declarative config for every endpoint and apply it.

Blue/green: each model version behind an endpoint is its own Serve application
(``<endpoint>--<model id>``). A new version first starts beside the live one on a staging route
(``/_candidate/<endpoint>``), where its replicas must load the bundle and predict on the
bundle's sample rows before Serve reports it RUNNING; only then does one config change move the
endpoint's route to it and drop the old application. Serve re-registers a route prefix to its
new owner in one update of the route table (``EndpointState.update_endpoint``) and the
controller deletes the old application in the same control-loop pass, so proxies see the switch
whole. Serve's own rolling update is not used for this: with one replica it stops the old
replica before the new one starts, and a new version that cannot start leaves nothing serving.

A canary keeps both versions' applications off HTTP and puts a traffic-split application
(services/serving/split.py) on the endpoint's route; it too starts on a staging route
(``/_split/<endpoint>``) first, so the route only ever moves to something already running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from jobs.spec import ServingSpec
from services.config import Settings
from services.core.auth import endpoint_token
from services.core.errors import UpstreamFailed
from services.orchestrator.ray_gateway import RayGateway

log = logging.getLogger(__name__)

IMPORT_PATH = "services.serving.app:build"
SPLIT_IMPORT_PATH = "services.serving.split:build"
# Endpoint names cannot start with '_', so no endpoint's route can collide with staging.
CANDIDATE_PREFIX = "/_candidate"
SPLIT_PREFIX = "/_split"
# What an overloaded endpoint tells clients to wait before trying again.
RETRY_AFTER_S = 1


@dataclass(frozen=True)
class EndpointTarget:
    name: str
    model_id: str
    bundle_uri: str
    bundle_digest: str
    # How the endpoint serves; not part of a version's identity.
    serving: ServingSpec = field(default_factory=ServingSpec, compare=False)
    # The project of the model's job: who may call the endpoint (ServingAccess).
    project_id: str | None = field(default=None, compare=False)

    @property
    def app_name(self) -> str:
        # Endpoint names have no '_' and model ids start with 'mdl_': the name is unambiguous,
        # and metrics labelled by application tell versions apart.
        return f"{self.name}--{self.model_id}"


@dataclass(frozen=True)
class ServingAccess:
    """Which active tokens' hashes an endpoint's replicas take: an admin's at every endpoint,
    anyone else's at the endpoints of their projects (the API's rule for the endpoints' rows,
    so a token that cannot see an endpoint cannot call it either)."""

    everywhere: frozenset[str] = frozenset()
    by_project: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def hashes(self, project_id: str | None) -> list[str]:
        # A model with no project (none can have one today: jobs always do) is callable by
        # admins only: closed, not open, if that ever changes.
        members = self.by_project.get(project_id, frozenset()) if project_id else frozenset()
        return sorted(self.everywhere | members)


@dataclass(frozen=True)
class EndpointState:
    """What one endpoint serves: one version, or a canary taking ``percent`` of requests."""

    stable: EndpointTarget
    canary: EndpointTarget | None = None
    percent: int = 0

    @property
    def name(self) -> str:
        return self.stable.name

    @property
    def split_app(self) -> str:
        return f"{self.name}--split"

    def targets(self) -> list[EndpointTarget]:
        return [self.stable] if self.canary is None else [self.stable, self.canary]

    def app_names(self) -> set[str]:
        names = {t.app_name for t in self.targets()}
        return names if self.canary is None else names | {self.split_app}


class ServeDeployer:
    """Applies the set of endpoints to Serve, one change at a time.

    Serve's REST API replaces every application in one PUT, so concurrent promotions would
    overwrite each other's view; the lock makes each read-modify-write whole.
    """

    def __init__(self, settings: Settings, gateway: RayGateway) -> None:
        self.settings = settings
        self.gateway = gateway
        self.lock = threading.Lock()

    def _app(self, t: EndpointTarget, route: str | None, access: ServingAccess) -> dict[str, Any]:
        sv = t.serving
        deployment: dict[str, Any] = {
            "name": "ModelServer",
            "ray_actor_options": {"num_cpus": self.settings.serve_replica_cpus},
            # A batch gathers requests a replica holds at once: fewer than max_batch_size in
            # flight and a full batch could never form.
            "max_ongoing_requests": max(sv.max_ongoing_requests, sv.max_batch_size),
            # Beyond this many waiting requests Serve answers 503 at once: overload never
            # turns into requests hanging until their clients give up.
            "max_queued_requests": sv.max_queued_requests,
            "backpressure_config": {"status_code": 503, "retry_after_s": RETRY_AFTER_S},
            "user_config": {
                "token_hashes": access.hashes(t.project_id),
                "max_batch_size": sv.max_batch_size,
                "batch_wait_timeout_ms": sv.batch_wait_timeout_ms,
                "log_sample_rate": sv.log_sample_rate,
                "monitor": {
                    "api_url": self.settings.resolved_api_url,
                    "token": endpoint_token(self.settings.resolved_secret_key, t.name),
                },
            },
        }
        if sv.max_replicas > sv.min_replicas:
            deployment["autoscaling_config"] = {
                "min_replicas": sv.min_replicas,
                "max_replicas": sv.max_replicas,
                "target_ongoing_requests": sv.target_ongoing_requests,
            }
        else:
            deployment["num_replicas"] = sv.min_replicas
        return {
            "name": t.app_name,
            "route_prefix": route,
            "import_path": IMPORT_PATH,
            "args": {
                "bundle_uri": t.bundle_uri,
                "bundle_digest": t.bundle_digest,
                "model_id": t.model_id,
                "endpoint": t.name,
            },
            "deployments": [deployment],
        }

    def _split(self, e: EndpointState, route: str, access: ServingAccess) -> dict[str, Any]:
        assert e.canary is not None
        return {
            "name": e.split_app,
            "route_prefix": route,
            "import_path": SPLIT_IMPORT_PATH,
            "args": {"endpoint": e.name},
            "deployments": [
                {
                    "name": "TrafficSplit",
                    # The split only forwards; it takes a sliver of a CPU.
                    "ray_actor_options": {"num_cpus": 0.1},
                    "max_ongoing_requests": 2 * e.stable.serving.max_ongoing_requests,
                    "user_config": {
                        "token_hashes": access.hashes(e.stable.project_id),
                        "weights": [
                            [e.stable.app_name, 100 - e.percent],
                            [e.canary.app_name, e.percent],
                        ],
                    },
                }
            ],
        }

    def config(
        self,
        live: list[EndpointState],
        access: ServingAccess,
        candidate: EndpointTarget | None = None,
        staged_split: EndpointState | None = None,
    ) -> dict[str, Any]:
        """``live``: what each endpoint serves; ``candidate``: a version starting beside its
        endpoint's live ones on the staging route (left out when it already is live);
        ``staged_split``: a canary's split starting on its staging route."""
        apps = []
        running = set()
        for e in live:
            if e.canary is None:
                apps.append(self._app(e.stable, f"/{e.name}", access))
            else:
                apps += [self._app(t, None, access) for t in e.targets()]
                apps.append(self._split(e, f"/{e.name}", access))
            running |= {t.app_name for t in e.targets()}
        if candidate is not None and candidate.app_name not in running:
            apps.append(self._app(candidate, f"{CANDIDATE_PREFIX}/{candidate.name}", access))
        if staged_split is not None:
            apps.append(self._split(staged_split, f"{SPLIT_PREFIX}/{staged_split.name}", access))
        return {
            "proxy_location": "HeadOnly",
            "http_options": {"host": self.settings.serve_host, "port": self.settings.serve_port},
            "applications": apps,
        }

    def apply(
        self,
        live: list[EndpointState],
        access: ServingAccess,
        candidate: EndpointTarget | None = None,
        staged_split: EndpointState | None = None,
    ) -> None:
        self.gateway.put_serve_config(self.config(live, access, candidate, staged_split))

    def wait_running(self, target: EndpointTarget | str) -> None:
        """Block until ``target``'s application is RUNNING: its replica loaded the bundle and
        predicted on the sample rows. Raise with Serve's message if it cannot."""
        deadline = time.monotonic() + self.settings.deploy_timeout_s
        last = "no status yet"
        name = target.app_name if isinstance(target, EndpointTarget) else target
        what = f"model {target.model_id}" if isinstance(target, EndpointTarget) else name
        while time.monotonic() < deadline:
            app = self.gateway.serve_applications().get("applications", {}).get(name)
            if app is not None:
                status, last = app.get("status"), app.get("message") or app.get("status")
                if status == "DEPLOY_FAILED":
                    raise UpstreamFailed(f"{what} failed to start: {last}")
                if status == "RUNNING":
                    return
            time.sleep(0.5)
        raise UpstreamFailed(
            f"{what} was not running after {self.settings.deploy_timeout_s:.0f}s: {last}"
        )

    def wait_settled(self, live: list[EndpointState], timeout_s: float = 60.0) -> None:
        """Wait until Serve holds only the live applications. The route already moved with the
        config change; this waits for the old version to drain, so that a caller told the
        promotion is done no longer reaches the old version."""
        wanted = set().union(*(e.app_names() for e in live))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            apps = self.gateway.serve_applications().get("applications", {})
            if set(apps) <= wanted:
                return
            time.sleep(0.5)

    def wait_routed(self, name: str, timeout_s: float = 30.0) -> None:
        """Wait until Serve's HTTP proxy routes ``/<name>`` to an application: proxies learn
        route changes asynchronously, so right after a config change (a first promotion, or
        a route moved to a renamed application) the path can still answer 404 for a moment.
        Any answer from our application (401 without a token) means the route is there. Where
        nothing listens at the Serve URL the API was given (a public address it cannot reach),
        there is nothing to wait for."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.post(self.url(name), json={}, timeout=5.0).status_code != 404:
                    return
            except httpx.ConnectError:
                log.info("no Serve proxy answers at %s; not waiting for its routes", self.url(name))
                return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        log.warning("Serve did not route %s within %.0fs", self.url(name), timeout_s)

    def url(self, name: str) -> str:
        return f"{self.settings.resolved_serve_url}/{name}"
