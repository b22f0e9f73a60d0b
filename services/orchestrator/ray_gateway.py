"""The control plane's only door to Ray: its dashboard's REST APIs for jobs and Serve.

Speaking HTTP rather than importing ``ray`` keeps the API process light (no Ray driver, no
worker threads) and works the same against a local head or a KubeRay cluster. Ray's token auth
stays on: every call carries ``RAY_AUTH_TOKEN`` as a bearer token.
"""

from __future__ import annotations

import logging
import shlex
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from services.core.errors import UpstreamFailed


class RayUnreachable(UpstreamFailed):
    """Ray's dashboard did not answer at all (as opposed to answering with a refusal)."""


log = logging.getLogger(__name__)

RAY_TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})

# Every submission checks its job against the cluster's nodes. Asked of Ray each time, a Ray
# that does not answer (a head too busy to reply, a proxy before a dead one) held every
# submission for the whole client timeout, and enough of them held every thread the API serves
# from (benchmarks/api_load.py). So the answer, or the failure, is kept this long; while one
# caller asks again, the others take the last one; and the question has a short timeout.
NODES_TTL_S = 5.0
NODES_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RayJob:
    submission_id: str
    status: str  # PENDING | RUNNING | STOPPED | SUCCEEDED | FAILED
    message: str | None


class RayGateway:
    def __init__(
        self,
        dashboard_url: str,
        auth_token: str | None,
        timeout: float = 30.0,
        nodes_ttl_s: float = NODES_TTL_S,
    ) -> None:
        headers = {"Authorization": f"Bearer {auth_token}"} if auth_token else {}
        self.url = dashboard_url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self.nodes_ttl_s = nodes_ttl_s
        self._nodes_lock = threading.Lock()
        # (when Ray answered, the nodes' resources or why they are unknown)
        self._nodes: tuple[float, list[dict[str, float]] | str] | None = None

    def close(self) -> None:
        self.http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise RayUnreachable(f"Ray dashboard at {self.url} unreachable: {exc}") from exc

    def healthy(self) -> bool:
        try:
            return self.http.get("/api/version", timeout=3).status_code == 200
        except httpx.HTTPError:
            return False

    # --- jobs -----------------------------------------------------------------------------

    def get_job(self, submission_id: str) -> RayJob | None:
        r = self._request("GET", f"/api/jobs/{submission_id}")
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise UpstreamFailed(f"Ray job lookup failed: {r.status_code} {r.text[:300]}")
        data = r.json()
        return RayJob(data["submission_id"], data["status"], data.get("message"))

    def submit_job(
        self,
        submission_id: str,
        entrypoint: list[str],
        env: dict[str, str],
        metadata: dict[str, str],
    ) -> RayJob:
        """Submit once: a job that exists already is the success of an earlier try."""
        existing = self.get_job(submission_id)
        if existing is not None:
            return existing
        body = {
            # The entrypoint is fixed by the caller (module and an id it generated); user
            # input travels in the manifest, never through the shell.
            "entrypoint": shlex.join(entrypoint),
            "submission_id": submission_id,
            "runtime_env": {"env_vars": env},
            "metadata": metadata,
        }
        r = self._request("POST", "/api/jobs/", json=body)
        if r.status_code != 200:
            # Ray answers 500 when the id exists (a concurrent submit won the race).
            existing = self.get_job(submission_id)
            if existing is not None:
                return existing
            raise UpstreamFailed(f"Ray refused the job: {r.status_code} {r.text[:300]}")
        return RayJob(submission_id, "PENDING", None)

    def stop_job(self, submission_id: str) -> None:
        r = self._request("POST", f"/api/jobs/{submission_id}/stop")
        if r.status_code not in (200, 404):
            raise UpstreamFailed(f"Ray could not stop the job: {r.status_code} {r.text[:300]}")

    def job_logs_tail(self, submission_id: str, chars: int = 4000) -> str:
        r = self._request("GET", f"/api/jobs/{submission_id}/logs")
        if r.status_code != 200:
            return ""
        logs: str = r.json().get("logs", "")
        return logs[-chars:]

    def node_resources(self) -> list[dict[str, float]]:
        """Total resources of each live node (CPU, GPU, memory, ...), as Ray told them at most
        ``nodes_ttl_s`` ago (or a refresh ago); UpstreamFailed if Ray did not answer then."""
        known = self._nodes
        # One caller asks again; the others meanwhile take the last answer, or, when there is
        # none yet, wait for this one's.
        if not self._fresh(known) and self._nodes_lock.acquire(blocking=known is None):
            try:
                known = self._nodes
                if not self._fresh(known):
                    answer = self._ask_nodes()
                    known = self._nodes = (time.monotonic(), answer)
            finally:
                self._nodes_lock.release()
        assert known is not None
        if isinstance(known[1], str):
            raise UpstreamFailed(known[1])
        return [dict(n) for n in known[1]]

    def _fresh(self, known: tuple[float, object] | None) -> bool:
        return known is not None and time.monotonic() - known[0] < self.nodes_ttl_s

    def _ask_nodes(self) -> list[dict[str, float]] | str:
        try:
            r = self._request("GET", "/nodes", params={"view": "summary"}, timeout=NODES_TIMEOUT_S)
        except UpstreamFailed as exc:
            return exc.detail
        if r.status_code != 200:
            return f"Ray node summary failed: {r.status_code} {r.text[:300]}"
        nodes = r.json()["data"]["summary"]
        return [
            n["raylet"]["resourcesTotal"]
            for n in nodes
            if n.get("raylet", {}).get("state") == "ALIVE"
        ]

    def resource_usage(self) -> dict[str, tuple[float, float]]:
        """Cluster-wide (used, total) per resource, as Ray's autoscaler monitor reports it."""
        r = self._request("GET", "/api/cluster_status")
        if r.status_code != 200:
            raise UpstreamFailed(f"Ray cluster status failed: {r.status_code} {r.text[:300]}")
        report = (r.json()["data"].get("clusterStatus") or {}).get("loadMetricsReport") or {}
        return {k: (float(v[0]), float(v[1])) for k, v in report.get("usage", {}).items()}

    # --- serve ----------------------------------------------------------------------------

    def serve_applications(self) -> dict[str, Any]:
        r = self._request("GET", "/api/serve/applications/")
        if r.status_code != 200:
            raise UpstreamFailed(f"Serve status failed: {r.status_code} {r.text[:300]}")
        data: dict[str, Any] = r.json()
        return data

    def put_serve_config(self, config: dict[str, Any]) -> None:
        """Declare every Serve application at once (Serve's REST API replaces the whole set)."""
        r = self._request("PUT", "/api/serve/applications/", json=config)
        if r.status_code != 200:
            raise UpstreamFailed(f"Serve refused the config: {r.status_code} {r.text[:500]}")
