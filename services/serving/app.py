"""One Ray Serve application per model version: load a bundle, check tokens, predict.

Deployed by the control plane through Serve's REST API with ``import_path
services.serving.app:build``. It imports the cluster-side ``jobs`` package for the bundle and
preprocessing, so serving applies exactly the code that prepared the training data.

Each request's instances are checked against the model's input signature on their own (a
missing column or a wrong type is a 422 naming the instance and the column); with batching on,
checked requests then share one forward pass (``@serve.batch``). Replicas, the queue limit that
turns overload into 503 + Retry-After, and batching come from the endpoint's ServingSpec
through the deployment options and ``user_config``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from jobs.bundle import Predictor, load_bundle
from jobs.data import DataError
from services.serving.predlog import PredictionLog, records_of
from services.serving.requests import Rejected, instances_of, read_payload, request_id

log = logging.getLogger("crucible.serving")

Prepared = tuple[list[dict[str, Any]], dict[str, np.ndarray]]


@serve.deployment(name="ModelServer")
class ModelServer:
    def __init__(self, bundle_uri: str, bundle_digest: str, model_id: str, endpoint: str) -> None:
        self.predictor: Predictor = load_bundle(bundle_uri, bundle_digest)
        self.model_id = model_id
        self.endpoint = endpoint
        self.token_hashes: frozenset[str] = frozenset()
        self.batching = False
        self.predictions = PredictionLog(endpoint)
        # A replica that cannot predict on the rows it was trained with never takes traffic.
        self.predictor.predict(self.predictor.manifest["sample_rows"])

    def reconfigure(self, config: dict[str, Any]) -> None:
        # Tokens arrive through user_config, so a revoked token is dropped without a redeploy;
        # so do batching and monitoring settings.
        self.token_hashes = frozenset(config.get("token_hashes", []))
        max_batch = int(config.get("max_batch_size", 1))
        self.batching = max_batch > 1
        if self.batching:
            # serve.batch's wrapper has these setters; its type stub does not say so.
            self._batched.set_max_batch_size(max_batch)  # type: ignore[attr-defined]
            wait_s = float(config.get("batch_wait_timeout_ms", 2)) / 1000
            self._batched.set_batch_wait_timeout_s(wait_s)  # type: ignore[attr-defined]
        monitor = config.get("monitor") or {}
        self.predictions.configure(
            float(config.get("log_sample_rate", 0.0)), monitor.get("api_url"), monitor.get("token")
        )

    def check_health(self) -> None:
        self.predictor.predict(self.predictor.manifest["sample_rows"][:1])

    async def __call__(self, request: Request) -> Response:
        body = await read_payload(request, self.token_hashes)
        if isinstance(body, Response):
            return body
        status, answer = await self.answer(body, request_id(request))
        return JSONResponse(answer, status_code=status)

    async def answer(self, body: Any, rid: str) -> tuple[int, dict[str, Any]]:
        """Predict for a parsed body: (HTTP status, JSON). Also what a traffic split calls
        through a handle, after it checked the token itself."""
        started = time.perf_counter()
        try:
            instances = instances_of(body)
            columns = self.predictor.preprocessor.columns_from_records(instances)
            prepared = (instances, columns)
            if self.batching:
                out = await self._batched(prepared)
                if isinstance(out, DataError):
                    raise out
            else:
                out = self.predictor.predict_many([prepared])[0]
        except Rejected as exc:
            return exc.status, exc.body
        except DataError as exc:
            return 422, Rejected(422, "invalid", str(exc), exc.loc or ["instances"]).body
        if self.predictions.sampled():
            latency_ms = (time.perf_counter() - started) * 1000
            self.predictions.add(records_of(rid, self.model_id, instances, out, latency_ms))
        return 200, {**out, "model_id": self.model_id, "request_id": rid}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def _batched(self, requests: list[Prepared]) -> list[Any]:
        try:
            return self.predictor.predict_many(requests)
        except DataError:
            # Only a fault that shows in the joint pass (a mitigated model's group value):
            # answer each request on its own so the fault stays with the request that has it.
            return [_one(self.predictor, r) for r in requests]


def _one(predictor: Predictor, request: Prepared) -> Any:
    try:
        return predictor.predict_many([request])[0]
    except DataError as exc:
        return exc


def build(args: dict[str, Any]) -> Application:
    """Serve application builder: ``args`` come from the endpoint's Serve config."""
    return ModelServer.bind(  # type: ignore[attr-defined]
        args["bundle_uri"], args["bundle_digest"], args["model_id"], args["endpoint"]
    )
