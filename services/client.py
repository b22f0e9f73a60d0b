"""Python SDK for Crucible's API: typed, synchronous, one method per operation.

from services.client import Crucible
c = Crucible("http://127.0.0.1:8080", token)
job = c.submit_job(spec)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

FINAL = frozenset({"succeeded", "failed", "cancelled"})


class CrucibleError(Exception):
    """The API answered with an error document."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.kind = body.get("error", "error")
        self.detail = body.get("detail", "")
        self.fields = body.get("fields", [])
        lines = [f"{status} {self.kind}: {self.detail}"]
        lines += [f"  {'.'.join(map(str, f['loc']))}: {f['msg']}" for f in self.fields]
        super().__init__("\n".join(lines))


class Crucible:
    def __init__(self, url: str, token: str, timeout: float = 300.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.http = httpx.Client(
            base_url=self.url, timeout=timeout, headers={"Authorization": f"Bearer {token}"}
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Crucible:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.http.request(method, path, **kwargs)
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {"error": "http_error", "detail": r.text[:500]}
            raise CrucibleError(r.status_code, body)
        return r.json()

    # datasets
    def upload_dataset(
        self, path: str | Path, name: str, project: str | None = None
    ) -> dict[str, Any]:
        p = Path(path)
        data = {"name": name, **({"project": project} if project else {})}
        with p.open("rb") as f:
            return self._call("POST", "/v1/datasets", files={"file": (p.name, f)}, data=data)

    def datasets(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/datasets")["items"]

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/datasets/{dataset_id}")

    # jobs
    def submit_job(
        self, spec: dict[str, Any], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """``idempotency_key``: retrying with the same key and spec returns the same job
        instead of a second one (the same key with another spec is refused)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._call("POST", "/v1/jobs", json=spec, headers=headers)

    def jobs(self, status: str | None = None) -> list[dict[str, Any]]:
        params = {"status": status} if status else {}
        return self._call("GET", "/v1/jobs", params=params)["items"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def trials(self, job_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/v1/jobs/{job_id}/trials")["items"]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")

    def resume(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/jobs/{job_id}/resume")

    def events(self, job_id: str, after: int = 0) -> Iterator[dict[str, Any]]:
        """The job's events as they happen (server-sent events), from after ``after``.

        The stream ends when the job has ended and every event was delivered; reconnecting
        with the last id seen resumes without gaps or repeats.
        """
        with self.http.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(after)}, timeout=None
        ) as r:
            if r.status_code >= 400:
                r.read()
                raise CrucibleError(r.status_code, r.json())
            kind = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind != "end":
                    yield json.loads(line[6:])

    def evaluation(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}/evaluation")

    def audit(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}/audit")

    def audit_report(self, job_id: str, format: str = "html") -> bytes:
        """The job's audit as a self-contained HTML page, or its PDF print."""
        r = self.http.get(f"/v1/jobs/{job_id}/audit.html", params={"format": format})
        if r.status_code >= 400:
            raise CrucibleError(r.status_code, r.json())
        return r.content

    def create_audit(self, request: dict[str, Any]) -> dict[str, Any]:
        """Audit predictions in a registered dataset (see POST /v1/audits)."""
        return self._call("POST", "/v1/audits", json=request)

    def get_audit(self, audit_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/audits/{audit_id}")

    def wait(
        self, job_id: str, timeout: float = 1800, poll: float = 1.0, on_poll: Any = None
    ) -> dict[str, Any]:
        """Poll until the job is final; ``on_poll(job)`` sees each state on the way."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_poll is not None:
                on_poll(job)
            if job["status"] in FINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")
            time.sleep(poll)

    # models and serving
    def promote(
        self,
        job_id: str,
        endpoint: str,
        override_reason: str | None = None,
        candidate: str | None = None,
        traffic: int = 100,
        serving: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``override_reason``: promote even if the gates fail, for this written reason.
        ``candidate``: "best", "mitigated" (the job's fairness-mitigated variant) or
        "compressed" (its pruned/int8 variant); None: the server's default, the compressed
        variant when the spec asked for one, else the best model. ``traffic`` below 100: a
        canary taking that percent of requests (promote again with 100 to complete it).
        ``serving``: overrides of the spec's promotion.serving."""
        body: dict[str, Any] = {"endpoint": endpoint, "traffic": {"new": traffic}}
        if candidate is not None:
            body["candidate"] = candidate
        if serving:
            body["serving"] = serving
        if override_reason is not None:
            body.update(override=True, reason=override_reason)
        return self._call("POST", f"/v1/jobs/{job_id}/promote", json=body)

    def logs(self, job_id: str, tail: int = 20_000) -> str:
        out: dict[str, Any] = self._call("GET", f"/v1/jobs/{job_id}/logs", params={"tail": tail})
        return str(out["logs"])

    def rollback(self, endpoint: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/endpoints/{endpoint}/rollback")

    def models(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/models")["items"]

    def model(self, model_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/models/{model_id}")

    def endpoints(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/endpoints")["items"]

    def endpoint(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/endpoints/{name}")

    # monitoring
    FEEDBACK_CHUNK = 10_000  # the most items the API takes per call

    def feedback(self, endpoint: str, items: list[dict[str, Any]]) -> dict[str, int]:
        """Ground-truth labels of served predictions: items ``{"request_id", "index" (0 when
        left out), "label"}``, sent 10,000 per call; returns the summed ``matched`` and
        ``unmatched`` (predictions not logged, or unknown)."""
        total = {"matched": 0, "unmatched": 0}
        for start in range(0, len(items), self.FEEDBACK_CHUNK):
            chunk = items[start : start + self.FEEDBACK_CHUNK]
            out = self._call("POST", f"/v1/endpoints/{endpoint}/feedback", json={"items": chunk})
            total["matched"] += int(out["matched"])
            total["unmatched"] += int(out["unmatched"])
        return total

    def monitoring(self, endpoint: str) -> dict[str, Any]:
        """Live figures per model version over the endpoint's monitoring window: requests,
        latency, predictions, live accuracy and fairness, drift per feature, and the alert."""
        return self._call("GET", f"/v1/endpoints/{endpoint}/monitoring")

    def endpoint_events(
        self, endpoint: str, after: int = 0, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Monitoring events (drift alerts raised and cleared), oldest first."""
        params = {"after": after, "limit": limit}
        return self._call("GET", f"/v1/endpoints/{endpoint}/events", params=params)["items"]

    # batch scoring
    def score_endpoint(
        self,
        endpoint: str,
        dataset_id: str,
        concurrency: int | None = None,
        batch_size: int | None = None,
        passthrough: list[str] | None = None,
    ) -> dict[str, Any]:
        """Score every row of a dataset with the endpoint's live model (a Ray job): returns
        ``{id, status: "queued"}``; follow it with :meth:`scoring_run` or :meth:`wait_scoring`."""
        body = _scoring_body(dataset_id, concurrency, batch_size, passthrough)
        return self._call("POST", f"/v1/endpoints/{endpoint}/batch", json=body)

    def score_model(
        self,
        model_id: str,
        dataset_id: str,
        concurrency: int | None = None,
        batch_size: int | None = None,
        passthrough: list[str] | None = None,
    ) -> dict[str, Any]:
        """The same as :meth:`score_endpoint` with a model version, served or not."""
        body = _scoring_body(dataset_id, concurrency, batch_size, passthrough)
        return self._call("POST", f"/v1/models/{model_id}/score", json=body)

    def scoring_run(self, run_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/scoring/{run_id}")

    def scoring_runs(self, status: str | None = None) -> list[dict[str, Any]]:
        params = {"status": status} if status else {}
        return self._call("GET", "/v1/scoring", params=params)["items"]

    def cancel_scoring(self, run_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/scoring/{run_id}/cancel")

    def wait_scoring(
        self, run_id: str, timeout: float = 1800, poll: float = 1.0, on_poll: Any = None
    ) -> dict[str, Any]:
        """Poll until the run is final; ``on_poll(run)`` sees each state on the way."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.scoring_run(run_id)
            if on_poll is not None:
                on_poll(run)
            if run["status"] in FINAL:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"scoring run {run_id} still {run['status']} after {timeout}s")
            time.sleep(poll)

    def scoring_result(self, run_id: str, path: str | Path) -> Path:
        """Download a finished run's Parquet result to ``path``."""
        with self.http.stream("GET", f"/v1/scoring/{run_id}/result") as r:
            if r.status_code >= 400:
                r.read()
                raise CrucibleError(r.status_code, r.json())
            out = Path(path)
            with out.open("wb") as f:
                for chunk in r.iter_bytes():
                    f.write(chunk)
        return out

    def scoring_rows(self, run_id: str, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """One page of a finished run's result rows as JSON: ``{items, total, ...}``."""
        params = {"format": "json", "offset": offset, "limit": limit}
        return self._call("GET", f"/v1/scoring/{run_id}/result", params=params)

    # identity
    def me(self) -> dict[str, Any]:
        """The caller: user, role, and the token in use."""
        return self._call("GET", "/v1/me")

    def users(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/users")["items"]

    def create_user(
        self, name: str, role: str = "viewer", projects: list[str] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "role": role}
        if projects is not None:
            body["projects"] = projects
        return self._call("POST", "/v1/users", json=body)

    # projects
    def projects(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/projects")["items"]

    def project(self, name: str) -> dict[str, Any]:
        """Quotas, usage now, and members."""
        return self._call("GET", f"/v1/projects/{name}")

    def create_project(self, name: str, **quotas: Any) -> dict[str, Any]:
        return self._call("POST", "/v1/projects", json={"name": name, **quotas})

    def set_quotas(self, name: str, **quotas: Any) -> dict[str, Any]:
        """The quotas given (None removes a limit); others stay."""
        return self._call("PATCH", f"/v1/projects/{name}", json=quotas)

    def add_member(self, project: str, user: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/projects/{project}/members", json={"user": user})

    def remove_member(self, project: str, user_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/projects/{project}/members/{user_id}")

    def update_user(
        self, user_id: str, role: str | None = None, disabled: bool | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if role is not None:
            body["role"] = role
        if disabled is not None:
            body["disabled"] = disabled
        return self._call("PATCH", f"/v1/users/{user_id}", json=body)

    def tokens(self, user_id: str | None = None) -> list[dict[str, Any]]:
        params = {"user_id": user_id} if user_id else {}
        return self._call("GET", "/v1/tokens", params=params)["items"]

    def create_token(
        self, name: str, user_id: str | None = None, expires_in_days: int | None = None
    ) -> dict[str, Any]:
        """A new token; its secret is in ``token``, and only in this answer."""
        body: dict[str, Any] = {"name": name}
        if user_id is not None:
            body["user_id"] = user_id
        if expires_in_days is not None:
            body["expires_in_days"] = expires_in_days
        return self._call("POST", "/v1/tokens", json=body)

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/tokens/{token_id}")

    def audit_log(
        self, actor: str | None = None, since: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if actor:
            params["actor"] = actor
        if since:
            params["since"] = since
        return self._call("GET", "/v1/audit-log", params=params)["items"]

    def predict(self, url: str, instances: list[dict[str, Any]]) -> dict[str, Any]:
        r = self.http.post(url, json={"instances": instances})
        if r.status_code >= 400:
            raise CrucibleError(r.status_code, r.json())
        return r.json()


def _scoring_body(
    dataset_id: str,
    concurrency: int | None,
    batch_size: int | None,
    passthrough: list[str] | None,
) -> dict[str, Any]:
    """Only what the caller set: the server's defaults stay the server's."""
    body: dict[str, Any] = {"dataset_id": dataset_id}
    if concurrency is not None:
        body["concurrency"] = concurrency
    if batch_size is not None:
        body["batch_size"] = batch_size
    if passthrough:
        body["passthrough"] = passthrough
    return body
