"""One Ray Serve application per endpoint: load a bundle, check tokens, predict.

Deployed by the control plane through Serve's REST API with ``import_path
services.serving.app:build``. It imports the cluster-side ``jobs`` package for the bundle and
preprocessing, so serving applies exactly the code that prepared the training data.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import JSONResponse

from jobs.bundle import Predictor, load_bundle
from jobs.data import DataError

log = logging.getLogger("crucible.serving")
MAX_INSTANCES = 10_000


def _error(status: int, kind: str, detail: str, loc: list[Any] | None = None) -> JSONResponse:
    fields = [{"loc": loc, "msg": detail}] if loc else []
    return JSONResponse({"error": kind, "detail": detail, "fields": fields}, status_code=status)


@serve.deployment(name="ModelServer")
class ModelServer:
    def __init__(self, bundle_uri: str, bundle_digest: str, model_id: str, endpoint: str) -> None:
        self.predictor: Predictor = load_bundle(bundle_uri, bundle_digest)
        self.model_id = model_id
        self.endpoint = endpoint
        self.token_hashes: frozenset[str] = frozenset()
        # A replica that cannot predict on the rows it was trained with never takes traffic.
        self.predictor.predict(self.predictor.manifest["sample_rows"])

    def reconfigure(self, config: dict[str, Any]) -> None:
        # Tokens arrive through user_config, so a revoked token is dropped without a redeploy.
        self.token_hashes = frozenset(config.get("token_hashes", []))

    def check_health(self) -> None:
        self.predictor.predict(self.predictor.manifest["sample_rows"][:1])

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        return hashlib.sha256(token.strip().encode()).hexdigest() in self.token_hashes

    async def __call__(self, request: Request) -> JSONResponse:
        if not self._authorized(request):
            return _error(401, "unauthorized", "missing or invalid bearer token")
        if request.method != "POST":
            return _error(405, "method_not_allowed", 'POST {"instances": [...]}')
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "bad_request", "the body is not JSON")
        instances = body.get("instances") if isinstance(body, dict) else None
        if not isinstance(instances, list) or not instances:
            return _error(422, "invalid", "'instances' must be a non-empty list", ["instances"])
        if len(instances) > MAX_INSTANCES:
            return _error(
                422, "invalid", f"at most {MAX_INSTANCES} instances per request", ["instances"]
            )
        try:
            out = self.predictor.predict(instances)
        except DataError as exc:
            return _error(422, "invalid", str(exc), ["instances"])
        return JSONResponse({**out, "model_id": self.model_id})


def build(args: dict[str, Any]) -> Application:
    """Serve application builder: ``args`` come from the endpoint's Serve config."""
    return ModelServer.bind(  # type: ignore[attr-defined]
        args["bundle_uri"], args["bundle_digest"], args["model_id"], args["endpoint"]
    )
