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
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from services.config import Settings
from services.core.errors import UpstreamFailed
from services.orchestrator.ray_gateway import RayGateway

log = logging.getLogger(__name__)

IMPORT_PATH = "services.serving.app:build"
# Endpoint names cannot start with '_', so no endpoint's route can collide with staging.
CANDIDATE_PREFIX = "/_candidate"


@dataclass(frozen=True)
class EndpointTarget:
    name: str
    model_id: str
    bundle_uri: str
    bundle_digest: str

    @property
    def app_name(self) -> str:
        # Endpoint names have no '_' and model ids start with 'mdl_': the name is unambiguous,
        # and metrics labelled by application tell versions apart.
        return f"{self.name}--{self.model_id}"


class ServeDeployer:
    """Applies the set of endpoints to Serve, one change at a time.

    Serve's REST API replaces every application in one PUT, so concurrent promotions would
    overwrite each other's view; the lock makes each read-modify-write whole.
    """

    def __init__(self, settings: Settings, gateway: RayGateway) -> None:
        self.settings = settings
        self.gateway = gateway
        self.lock = threading.Lock()

    def _app(self, t: EndpointTarget, route: str, token_hashes: list[str]) -> dict[str, Any]:
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
            "deployments": [
                {
                    "name": "ModelServer",
                    "num_replicas": 1,
                    "ray_actor_options": {"num_cpus": self.settings.serve_replica_cpus},
                    "user_config": {"token_hashes": sorted(token_hashes)},
                }
            ],
        }

    def config(
        self,
        live: list[EndpointTarget],
        token_hashes: list[str],
        candidate: EndpointTarget | None = None,
    ) -> dict[str, Any]:
        """``live``: what each endpoint serves; ``candidate``: a version starting beside its
        endpoint's live one on the staging route (left out when it already is the live one)."""
        apps = [self._app(t, f"/{t.name}", token_hashes) for t in live]
        if candidate is not None and candidate not in live:
            apps.append(self._app(candidate, f"{CANDIDATE_PREFIX}/{candidate.name}", token_hashes))
        return {
            "proxy_location": "HeadOnly",
            "http_options": {"host": self.settings.serve_host, "port": self.settings.serve_port},
            "applications": apps,
        }

    def apply(
        self,
        live: list[EndpointTarget],
        token_hashes: list[str],
        candidate: EndpointTarget | None = None,
    ) -> None:
        self.gateway.put_serve_config(self.config(live, token_hashes, candidate))

    def wait_running(self, target: EndpointTarget) -> None:
        """Block until ``target``'s application is RUNNING: its replica loaded the bundle and
        predicted on the sample rows. Raise with Serve's message if it cannot."""
        deadline = time.monotonic() + self.settings.deploy_timeout_s
        last = "no status yet"
        name = target.app_name
        while time.monotonic() < deadline:
            app = self.gateway.serve_applications().get("applications", {}).get(name)
            if app is not None:
                status, last = app.get("status"), app.get("message") or app.get("status")
                if status == "DEPLOY_FAILED":
                    raise UpstreamFailed(f"model {target.model_id} failed to start: {last}")
                if status == "RUNNING":
                    return
            time.sleep(0.5)
        raise UpstreamFailed(
            f"model {target.model_id} was not running after "
            f"{self.settings.deploy_timeout_s:.0f}s: {last}"
        )

    def wait_settled(self, live: list[EndpointTarget], timeout_s: float = 60.0) -> None:
        """Wait until Serve holds only the live applications. The route already moved with the
        config change; this waits for the old version to drain, so that a caller told the
        promotion is done no longer reaches the old version."""
        wanted = {t.app_name for t in live}
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
