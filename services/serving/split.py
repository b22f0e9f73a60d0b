"""A canary: one endpoint's requests split between two model versions by weight.

While a canary runs, ``/<endpoint>`` routes to this small application, which checks the token
and hands each request to one version's application through a deployment handle (the versions
keep running as they are, on no HTTP route of their own). Each answer names the version that
gave it, and each version logs and counts its own predictions. Ending the canary (full
promotion or rollback) routes the endpoint to one version directly again and drops this app,
so the extra hop exists only while a split is asked for.
"""

from __future__ import annotations

import random
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import Response

from services.serving.requests import DEFAULT_MAX_BODY_BYTES, read_payload, request_id, respond


@serve.deployment(name="TrafficSplit")
class TrafficSplit:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.token_hashes: frozenset[str] = frozenset()
        self.max_body_bytes = DEFAULT_MAX_BODY_BYTES
        self.versions: list[tuple[DeploymentHandle, float]] = []

    def reconfigure(self, config: dict[str, Any]) -> None:
        # Weights and tokens through user_config: moving the split is no redeploy.
        self.token_hashes = frozenset(config.get("token_hashes", []))
        self.max_body_bytes = int(config.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES))
        self.versions = [
            (serve.get_deployment_handle("ModelServer", app), float(weight))
            for app, weight in config["weights"]
            if weight > 0
        ]

    async def __call__(self, request: Request) -> Response:
        body = await read_payload(request, self.token_hashes, self.max_body_bytes)
        if isinstance(body, Response):
            return body
        handles, weights = zip(*self.versions, strict=True)
        handle = random.choices(handles, weights)[0]
        status, answer = await handle.answer.remote(body, request_id(request))
        return respond(status, answer)


def build(args: dict[str, Any]) -> Application:
    return TrafficSplit.bind(args["endpoint"])  # type: ignore[attr-defined]
