"""One Ray Serve application per model version: load a bundle, check tokens, predict.

Deployed by the control plane through Serve's REST API with ``import_path
services.serving.app:build``. It imports the cluster-side ``jobs`` package for the bundle and
preprocessing, so serving applies exactly the code that prepared the training data.

Each request's instances are checked against the model's input signature on their own (a
missing column or a wrong type is a 422 naming the instance and the column); with batching on,
checked requests then share one forward pass (``@serve.batch``). Replicas, the queue limit that
turns overload into 503 + Retry-After, and batching come from the endpoint's ServingSpec
through the deployment options and ``user_config``.

A replica that cannot load its bundle fails to start while it is a candidate (the promotion
fails, what served before keeps serving). Once its version is live (``user_config["live"]``),
a replica started again (after a crash, on a new node, by autoscaling) whose bundle cannot be
loaded any more starts anyway: it answers every request 503 with Retry-After at once and
retries the load in the background. Failing the start instead would leave Serve retrying it
with no replica up, and every request waiting for one that never comes.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import Response

from jobs.bundle import Predictor, load_bundle
from jobs.data import DataError
from services.serving.predlog import PredictionLog, records_of
from services.serving.requests import (
    DEFAULT_MAX_BODY_BYTES,
    Rejected,
    instances_of,
    read_payload,
    request_id,
    respond,
)

log = logging.getLogger("crucible.serving")

Prepared = tuple[list[dict[str, Any]], dict[str, np.ndarray]]
# A replica whose bundle cannot be loaded tries again after this long, doubling to the cap:
# soon enough to take a restored bundle quickly, rarely enough not to hash a large one
# continuously.
RELOAD_FIRST_S = 2.0
RELOAD_MAX_S = 30.0


@serve.deployment(name="ModelServer")
class ModelServer:
    def __init__(self, bundle_uri: str, bundle_digest: str, model_id: str, endpoint: str) -> None:
        self.bundle_uri = bundle_uri
        self.bundle_digest = bundle_digest
        self.model_id = model_id
        self.endpoint = endpoint
        self.token_hashes: frozenset[str] = frozenset()
        self.max_body_bytes = DEFAULT_MAX_BODY_BYTES
        self.batching = False
        self.predictions = PredictionLog(endpoint)
        self.predictor: Predictor | None = None
        self.load_error: str | None = None
        self._reloader: threading.Thread | None = None
        try:
            self.predictor = self._load()
        except Exception as exc:  # whatever a broken bundle raises; reconfigure decides
            self.load_error = f"{type(exc).__name__}: {exc}"

    def _load(self) -> Predictor:
        predictor = load_bundle(self.bundle_uri, self.bundle_digest)
        # A replica that cannot predict on the rows it was trained with never takes traffic.
        predictor.predict(predictor.manifest["sample_rows"], finite=True)
        return predictor

    def reconfigure(self, config: dict[str, Any]) -> None:
        if self.predictor is None:
            if not config.get("live", False):
                # A candidate (or a config from before "live" existed): fail the start, so
                # the promotion fails and the route never moves here.
                raise RuntimeError(f"model {self.model_id} cannot be loaded: {self.load_error}")
            self._start_reloading()
        # Tokens arrive through user_config, so a revoked token is dropped without a redeploy;
        # so do the body limit, batching and monitoring settings.
        self.token_hashes = frozenset(config.get("token_hashes", []))
        self.max_body_bytes = int(config.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES))
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

    def _start_reloading(self) -> None:
        if self._reloader is not None:
            return
        log.error(
            "endpoint %s: model %s cannot be loaded (%s); answering 503 and retrying",
            self.endpoint,
            self.model_id,
            self.load_error,
        )
        self._reloader = threading.Thread(target=self._reload, name="bundle-reload", daemon=True)
        self._reloader.start()

    def _reload(self) -> None:
        wait_s = RELOAD_FIRST_S
        while self.predictor is None:
            time.sleep(wait_s)
            try:
                self.predictor = self._load()
            except Exception as exc:
                self.load_error = f"{type(exc).__name__}: {exc}"
                log.warning("endpoint %s: still cannot load: %s", self.endpoint, self.load_error)
                wait_s = min(2 * wait_s, RELOAD_MAX_S)
            else:
                self.load_error = None
                log.warning("endpoint %s: model %s loaded; serving", self.endpoint, self.model_id)

    def check_health(self) -> None:
        # A replica without its model is healthy as far as Serve goes: it answers (503) at
        # once and reloads by itself, where a restart would leave no replica for a while.
        if self.predictor is not None:
            self.predictor.predict(self.predictor.manifest["sample_rows"][:1], finite=True)

    async def __call__(self, request: Request) -> Response:
        body = await read_payload(request, self.token_hashes, self.max_body_bytes)
        if isinstance(body, Response):
            return body
        status, answer = await self.answer(body, request_id(request))
        return respond(status, answer)

    async def answer(self, body: Any, rid: str) -> tuple[int, dict[str, Any]]:
        """Predict for a parsed body: (HTTP status, JSON). Also what a traffic split calls
        through a handle, after it checked the token itself."""
        started = time.perf_counter()
        predictor = self.predictor
        if predictor is None:
            return 503, Rejected(
                503,
                "unavailable",
                "this endpoint's model cannot be loaded right now; its replica keeps trying",
            ).body
        try:
            instances = instances_of(body)
            columns = predictor.preprocessor.columns_from_records(instances, finite=True)
            prepared = (instances, columns)
            if self.batching:
                out = await self._batched(prepared)
                if isinstance(out, DataError):
                    raise out
            else:
                out = predictor.predict_many([prepared], finite=True)[0]
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
        predictor = self.predictor
        assert predictor is not None  # batching starts only from answer, once loaded
        try:
            return predictor.predict_many(requests, finite=True)
        except DataError:
            # Only a fault that shows in the joint pass (a mitigated model's group value, an
            # output that is not finite): answer each request on its own so the fault stays
            # with the request that has it.
            return [_one(predictor, r) for r in requests]


def _one(predictor: Predictor, request: Prepared) -> Any:
    try:
        return predictor.predict_many([request], finite=True)[0]
    except DataError as exc:
        return exc


def build(args: dict[str, Any]) -> Application:
    """Serve application builder: ``args`` come from the endpoint's Serve config."""
    return ModelServer.bind(  # type: ignore[attr-defined]
        args["bundle_uri"], args["bundle_digest"], args["model_id"], args["endpoint"]
    )
