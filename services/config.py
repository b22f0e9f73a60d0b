"""All control-plane settings in one object, read from ``CRUCIBLE_*`` environment variables."""

from __future__ import annotations

import json
import os
import secrets
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.core.dataset_uris import Root, parse_root


def read_or_create_secret(path: Path, nbytes: int = 32) -> tuple[str, bool]:
    """A secret kept in a file readable by its owner only; True when it was just created."""
    if path.exists():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value, True


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRUCIBLE_", extra="ignore")

    data_dir: Path = Field(
        default_factory=lambda: Path.home() / ".crucible",
        description="SQLite database, artifacts and secrets of the embedded default.",
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default SQLite in data_dir."
    )
    artifact_root: str | None = Field(None, description="Datasets, manifests and model bundles.")
    bootstrap_token: SecretStr | None = Field(None, description="Admin token to accept.")
    secret_key: SecretStr | None = Field(
        None, description="Signs per-job tokens; default: generated into data_dir/secret_key."
    )
    host: str = "127.0.0.1"
    port: int = 8080
    api_url: str | None = Field(None, description="How the cluster reaches this API.")
    ray_dashboard_url: str | None = Field(
        None, description="Ray's dashboard (Jobs and Serve REST APIs); derived from RAY_ADDRESS."
    )
    serve_host: str = "127.0.0.1"
    serve_port: int = 8000
    serve_url: str | None = Field(None, description="Public base URL of the Serve endpoints.")
    reconcile_interval_s: float = Field(2.0, gt=0)
    ray_autoscaling: bool = Field(
        False,
        description="The Ray cluster adds nodes on demand (KubeRay autoscaler): a job bigger "
        "than today's nodes waits for new ones instead of being refused.",
    )
    max_driver_restarts: int = Field(
        1, ge=0, description="Automatic relaunches of a job whose driver died unexplained."
    )
    deploy_timeout_s: float = Field(180.0, gt=0)
    serve_replica_cpus: float = Field(
        0.0,
        ge=0,
        description="CPUs each Serve replica reserves. 0 lets endpoints share the cores of a "
        "single machine with training (a 2-core laptop would otherwise lose a trial slot); on "
        "a cluster reserve what a replica really uses.",
    )
    max_upload_bytes: int = Field(
        512 * 1024 * 1024,
        gt=0,
        description="Largest dataset the API reads: an upload, or a file registered by URI "
        "(read whole at registration for its schema and quality report).",
    )
    max_body_bytes: int = Field(
        10 * 1024 * 1024,
        gt=0,
        description="Largest request body the API reads, uploads aside (max_upload_bytes): "
        "a larger one is refused with 413 before it is read.",
    )
    max_internal_body_bytes: int = Field(
        64 * 1024 * 1024,
        gt=0,
        description="Largest body the cluster's own calls (/v1/internal: a job's progress and "
        "result, a scoring report) may send; read only once their token checked out.",
    )
    intake_memory_bytes: int = Field(
        4 * 1024 * 1024 * 1024,
        ge=256 * 1024 * 1024,
        description="Address space of the child process that parses and profiles a dataset "
        "at registration; a file that needs more is refused (422), the API is not touched.",
    )
    intake_timeout_s: float = Field(
        300.0, gt=0, description="How long that child may take; longer: refused (422)."
    )
    intake_concurrency: int = Field(
        2,
        ge=1,
        description="Datasets parsed at once; more registrations wait for a slot (at most "
        "intake_timeout_s, then 503 with Retry-After).",
    )
    max_columns: int = Field(2_000, ge=1, description="Columns a registered dataset may have.")
    max_cell_values: int = Field(
        4 * 1024 * 1024,
        ge=1,
        description="Numbers one array cell may hold (an image's channels x height x width, a "
        "sequence's steps); an image folder's images likewise.",
    )
    max_cell_bytes: int = Field(
        1024 * 1024, ge=1, description="Bytes one text or binary cell may hold."
    )
    metrics_token: SecretStr | None = Field(
        None,
        description="Bearer token a Prometheus scrape of GET /metrics presents (its series "
        "name endpoints, their features, live accuracy and drift). Admins' API tokens are "
        "taken too; nothing else is.",
    )
    rate_limit_per_minute: int = Field(
        600,
        ge=0,
        description="Requests a minute per API token, in bursts of as many, counted in each "
        "API process's memory; over it: 429 with Retry-After. 0: no limit.",
    )
    idempotency_key_hours: float = Field(
        24.0,
        gt=0,
        le=24 * 365 * 10,
        description="How long an Idempotency-Key of POST /v1/jobs stays bound to its job and "
        "body; after that the key is free again (a new job) and its row is deleted.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins a browser may call the API from (JSON list or comma-separated). "
        "Empty, the default: no CORS headers at all, so other sites' pages cannot read it.",
    )
    dataset_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Where datasets may be registered from by URI: absolute local folders and "
        "s3://bucket[/prefix] or gs://bucket[/prefix], as a JSON list or comma-separated. "
        "Empty by default: only uploads until an operator opens a root. Object-store "
        "credentials and endpoints come from the server's environment (AWS_*, Google's "
        "default credentials).",
    )

    @field_validator("dataset_roots", "cors_origins", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part for part in (p.strip() for p in text.split(",")) if part]
        return value

    @field_validator("dataset_roots")
    @classmethod
    def _check_roots(cls, value: list[str]) -> list[str]:
        # A typo in a root fails at start-up, not at the first registration.
        return [str(parse_root(v)) for v in value]

    @property
    def resolved_dataset_roots(self) -> list[Root]:
        return [parse_root(v) for v in self.dataset_roots]

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'crucible.db'}"

    @property
    def resolved_artifact_root(self) -> Path:
        return Path(self.artifact_root) if self.artifact_root else self.data_dir / "artifacts"

    @property
    def resolved_api_url(self) -> str:
        return self.api_url or f"http://127.0.0.1:{self.port}"

    @property
    def resolved_serve_url(self) -> str:
        return (self.serve_url or f"http://127.0.0.1:{self.serve_port}").rstrip("/")

    @property
    def resolved_ray_dashboard_url(self) -> str:
        if self.ray_dashboard_url:
            return self.ray_dashboard_url.rstrip("/")
        address = os.environ.get("RAY_ADDRESS", "")
        if address.startswith(("http://", "https://")):
            return address.rstrip("/")
        host = address.split(":")[0] if address and address != "auto" else "127.0.0.1"
        return f"http://{host}:8265"

    @cached_property
    def resolved_secret_key(self) -> str:
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        return read_or_create_secret(self.data_dir / "secret_key")[0]

    @property
    def ray_auth_token(self) -> str | None:
        return os.environ.get("RAY_AUTH_TOKEN") or None
