"""Serve applications as data: build the declarative config for every endpoint and apply it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from services.config import Settings
from services.core.errors import UpstreamFailed
from services.orchestrator.ray_gateway import RayGateway

IMPORT_PATH = "services.serving.app:build"


@dataclass(frozen=True)
class EndpointTarget:
    name: str
    model_id: str
    bundle_uri: str
    bundle_digest: str


class ServeDeployer:
    """Applies the set of endpoints to Serve, one change at a time.

    Serve's REST API replaces every application in one PUT, so concurrent promotions would
    overwrite each other's view; the lock makes each read-modify-write whole.
    """

    def __init__(self, settings: Settings, gateway: RayGateway) -> None:
        self.settings = settings
        self.gateway = gateway
        self.lock = threading.Lock()

    def config(self, targets: list[EndpointTarget], token_hashes: list[str]) -> dict[str, Any]:
        return {
            "proxy_location": "HeadOnly",
            "http_options": {"host": self.settings.serve_host, "port": self.settings.serve_port},
            "applications": [
                {
                    "name": t.name,
                    "route_prefix": f"/{t.name}",
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
                for t in targets
            ],
        }

    def apply(self, targets: list[EndpointTarget], token_hashes: list[str]) -> None:
        self.gateway.put_serve_config(self.config(targets, token_hashes))

    def wait_running(self, name: str, model_id: str) -> None:
        """Block until ``name`` serves ``model_id``; raise with Serve's message if it cannot."""
        deadline = time.monotonic() + self.settings.deploy_timeout_s
        last = "no status yet"
        while time.monotonic() < deadline:
            apps = self.gateway.serve_applications().get("applications", {})
            app = apps.get(name)
            if app is not None:
                args = (app.get("deployed_app_config") or {}).get("args", {})
                status, last = app.get("status"), app.get("message") or app.get("status")
                if status == "DEPLOY_FAILED":
                    raise UpstreamFailed(f"endpoint '{name}' failed to deploy: {last}")
                if status == "RUNNING" and args.get("model_id") == model_id:
                    return
            time.sleep(0.5)
        raise UpstreamFailed(
            f"endpoint '{name}' was not running after {self.settings.deploy_timeout_s:.0f}s: {last}"
        )

    def url(self, name: str) -> str:
        return f"{self.settings.resolved_serve_url}/{name}"
