"""The serving benchmark's baseline: plain FastAPI + uvicorn (one worker) holding the same
bundles, answering the same JSON the same way as a Crucible endpoint's replica
(services/serving/app.py with batching off): the same bearer-token check, the same
``columns_from_records`` validation per request, the same ``Predictor``, the same answer.

    python -m benchmarks._fastapi_app --port P --token-hash H \\
        --model NAME=BUNDLE_DIR:DIGEST:MODEL_ID [--model ...]

``POST /<NAME>`` predicts; ``POST /ping`` answers ``{}`` (the HTTP floor, and what the load
generator's own ceiling is measured against).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from jobs.bundle import Predictor, load_bundle
from jobs.data import DataError
from services.serving.requests import Rejected, instances_of, read_payload, request_id


def create(models: dict[str, tuple[Predictor, str]], token_hashes: frozenset[str]) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.post("/ping")
    async def ping() -> Response:
        return Response(b"{}", media_type="application/json")

    @app.post("/{name}")
    async def predict(name: str, request: Request) -> Response:
        predictor, model_id = models[name]
        body = await read_payload(request, token_hashes)
        if isinstance(body, Response):
            return body
        try:
            instances = instances_of(body)
            columns = predictor.preprocessor.columns_from_records(instances)
            out = predictor.predict_many([(instances, columns)])[0]
        except Rejected as exc:
            return JSONResponse(exc.body, status_code=exc.status)
        except DataError as exc:
            err = Rejected(422, "invalid", str(exc), exc.loc or ["instances"])
            return JSONResponse(err.body, status_code=422)
        answer: dict[str, Any] = {**out, "model_id": model_id, "request_id": request_id(request)}
        return JSONResponse(answer)

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-hash", required=True)
    parser.add_argument("--model", action="append", default=[])
    args = parser.parse_args()
    # A Serve replica with no CPUs reserved runs torch on one thread (Ray sets
    # OMP_NUM_THREADS=1); the baseline does the same, so both do the same arithmetic.
    torch.set_num_threads(1)
    models = {}
    for item in args.model:
        name, _, rest = item.partition("=")
        folder, digest, model_id = rest.rsplit(":", 2)
        predictor = load_bundle(folder, digest)
        predictor.predict(predictor.manifest["sample_rows"])
        models[name] = (predictor, model_id)
    app = create(models, frozenset([args.token_hash]))
    # Access log off: the strongest plain baseline (Serve keeps its own request logs).
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, workers=1, access_log=False, log_level="warning"
    )


if __name__ == "__main__":
    main()
