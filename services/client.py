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
    def upload_dataset(self, path: str | Path, name: str) -> dict[str, Any]:
        p = Path(path)
        with p.open("rb") as f:
            return self._call(
                "POST", "/v1/datasets", files={"file": (p.name, f)}, data={"name": name}
            )

    def datasets(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/datasets")["items"]

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/datasets/{dataset_id}")

    # jobs
    def submit_job(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/v1/jobs", json=spec)

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
        candidate: str = "best",
    ) -> dict[str, Any]:
        """``override_reason``: promote even if the gates fail, for this written reason.
        ``candidate``: "best", or "mitigated" (the job's fairness-mitigated variant)."""
        body: dict[str, Any] = {"endpoint": endpoint, "candidate": candidate}
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

    def predict(self, url: str, instances: list[dict[str, Any]]) -> dict[str, Any]:
        r = self.http.post(url, json={"instances": instances})
        if r.status_code >= 400:
            raise CrucibleError(r.status_code, r.json())
        return r.json()
