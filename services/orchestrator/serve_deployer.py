"""Serve applications as data: build the declarative config for every endpoint and apply it.

Blue/green: each model version behind an endpoint is its own Serve application
(``<endpoint>--<model id>``). A new version first starts beside the live one on no HTTP route,
where its replicas must load the bundle and predict on the bundle's sample rows before Serve
reports it RUNNING; only then does one config change move the endpoint's route to it and drop
the old application. Serve re-registers a route prefix to its new owner in one update of the
route table (``EndpointState.update_endpoint``) and the controller deletes the old application
in the same control-loop pass, so proxies see the switch whole. Serve's own rolling update is
not used for this: with one replica it stops the old replica before the new one starts, and a
new version that cannot start leaves nothing serving.

A canary keeps both versions' applications off HTTP and puts a traffic-split application
(services/serving/split.py) on the endpoint's route; it too starts off HTTP first, so the route
only ever moves to something already running.

Serve shows every route and the name of the application behind it to anyone, without a token
(``GET /-/routes``), and names applications in its own error answers. So nothing starting has a
route of its own (which would show that a promotion or a canary is under way), and Serve never
sees the names the control plane reasons with (``<endpoint>--<model id>``,
``<endpoint>--split``): each is deployed under ``serve_name``, a keyed hash of it that says
nothing without the server's secret. Applications an older version deployed under their plain
names are renamed the blue/green way on the first config change (``_migrate``), so an upgrade
drops no request.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Collection, Mapping
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
        # Endpoint names have no '_' and model ids start with 'mdl_': the name is unambiguous.
        # What Serve sees is ServeDeployer.serve_name of it (and this, from older versions).
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
        # Applications still deployed under their plain (pre-upgrade) names: those whose
        # renamed twin could not start keep serving as they are.
        self._plain: set[str] = set()
        self._migrated = False

    def serve_name(self, name: str) -> str:
        """The name Serve knows application ``name`` by: an HMAC of it under the server's
        secret, so that neither endpoint nor model can be read from it or confirmed by
        guessing, and stable across API restarts and replicas (they share the secret)."""
        key = self.settings.resolved_secret_key.encode()
        digest = hmac.new(key, b"serve-app\0" + name.encode(), hashlib.sha256).hexdigest()
        return f"app-{digest[:24]}"

    def _name(self, name: str, plain: Collection[str]) -> str:
        return name if name in plain else self.serve_name(name)

    def _app(
        self,
        t: EndpointTarget,
        route: str | None,
        access: ServingAccess,
        *,
        live: bool,
        plain: Collection[str] = (),
    ) -> dict[str, Any]:
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
                # A live version's replica that cannot load its bundle answers 503 instead
                # of failing to start (services/serving/app.py); a candidate fails.
                "live": live,
                "max_body_bytes": self.settings.max_body_bytes,
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
            "name": self._name(t.app_name, plain),
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

    def _split(
        self,
        e: EndpointState,
        route: str | None,
        access: ServingAccess,
        plain: Collection[str] = (),
    ) -> dict[str, Any]:
        assert e.canary is not None
        return {
            "name": self._name(e.split_app, plain),
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
                        "max_body_bytes": self.settings.max_body_bytes,
                        "weights": [
                            [self._name(e.stable.app_name, plain), 100 - e.percent],
                            [self._name(e.canary.app_name, plain), e.percent],
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
        *,
        plain: Collection[str] = (),
        twins_of: EndpointState | None = None,
    ) -> dict[str, Any]:
        """``live``: what each endpoint serves; ``candidate``: a version starting off HTTP
        beside its endpoint's live ones (left out when it already is live); ``staged_split``:
        a canary's split starting off HTTP. ``plain``: the
        applications that stay deployed under their plain names; ``twins_of``: an endpoint
        whose renamed applications start off HTTP beside its plain ones (``_migrate``)."""
        apps = []
        running = set()
        for e in live:
            if e.canary is None:
                apps.append(self._app(e.stable, f"/{e.name}", access, live=True, plain=plain))
            else:
                apps += [self._app(t, None, access, live=True, plain=plain) for t in e.targets()]
                apps.append(self._split(e, f"/{e.name}", access, plain))
            running |= {t.app_name for t in e.targets()}
        if twins_of is not None:
            apps += [self._app(t, None, access, live=False) for t in twins_of.targets()]
            if twins_of.canary is not None:
                apps.append(self._split(twins_of, None, access))
        if candidate is not None and candidate.app_name not in running:
            apps.append(self._app(candidate, None, access, live=False))
        if staged_split is not None:
            apps.append(self._split(staged_split, None, access))
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
        if not self._migrated:
            self._migrate(live, access)
        # Plain names stay only while a live application still has one.
        self._plain &= set().union(*(e.app_names() for e in live))
        self.gateway.put_serve_config(
            self.config(live, access, candidate, staged_split, plain=self._plain)
        )

    def _migrate(self, live: list[EndpointState], access: ServingAccess) -> None:
        """Rename what an older version deployed under plain names, one endpoint at a time
        (no more replicas at once than a promotion starts): its renamed twins start off HTTP
        beside it, and once they run, the next config moves the route to them and drops the
        plain ones. A twin that cannot start leaves its endpoint as it was, plain names and
        all, for this process's life."""
        deployed = set(self.gateway.serve_applications().get("applications") or {})
        # Every endpoint keeps its plain names until its own turn comes.
        self._plain |= {n for e in live for n in e.app_names() & deployed}
        for e in live:
            if not e.app_names() & self._plain:
                continue
            log.warning("endpoint %s: renaming its Serve applications", e.name)
            self.gateway.put_serve_config(self.config(live, access, plain=self._plain, twins_of=e))
            try:
                for name in e.app_names():
                    self.wait_running(name)
            except UpstreamFailed as exc:
                log.error("endpoint %s keeps its old application names: %s", e.name, exc.detail)
                continue
            self._plain -= e.app_names()
        self._migrated = True

    def wait_running(self, target: EndpointTarget | str) -> None:
        """Block until ``target``'s application is RUNNING: its replica loaded the bundle and
        predicted on the sample rows. Raise with Serve's message if it cannot."""
        deadline = time.monotonic() + self.settings.deploy_timeout_s
        last = "no status yet"
        plain = target.app_name if isinstance(target, EndpointTarget) else target
        what = f"model {target.model_id}" if isinstance(target, EndpointTarget) else plain
        name = self.serve_name(plain)
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
        wanted = {self._name(n, self._plain) for e in live for n in e.app_names()}
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
