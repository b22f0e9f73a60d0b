"""Model bundles: what a trained model is on disk, and how it is loaded to predict.

A bundle is a folder with two files and nothing executable:

- ``model.safetensors``: the weights (safetensors, so loading runs no code, unlike pickle);
- ``bundle.json``: architecture, preprocessing, classes, input signature, sample rows for
  health checks, and the sha256 of the weights, checked on every load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from jobs.data import Preprocessor
from jobs.models import build_model
from jobs.spec import MLPSpec

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
MANIFEST = "bundle.json"


class BundleError(ValueError):
    """A bundle is missing, malformed or does not match its recorded digest."""


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_bundle(
    folder: Path,
    state: dict[str, torch.Tensor],
    model_spec: MLPSpec,
    preprocessor: Preprocessor,
    classes: list[Any],
    sample_rows: list[dict[str, Any]],
    metadata: dict[str, Any],
) -> str:
    """Write a bundle; return its digest (sha256 of the manifest, which pins the weights)."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    manifest = {
        "format_version": FORMAT_VERSION,
        "model": model_spec.model_dump(mode="json"),
        "in_features": preprocessor.num_features,
        "classes": classes,
        "preprocessing": preprocessor.to_json(),
        "input_signature": preprocessor.input_signature(),
        "sample_rows": sample_rows,
        "weights_sha256": sha256_file(weights),
        "metadata": metadata,
    }
    data = json.dumps(manifest, indent=2, sort_keys=True).encode()
    (folder / MANIFEST).write_bytes(data)
    return hashlib.sha256(data).hexdigest()


@dataclass
class Predictor:
    """A loaded bundle: raw JSON instances in, labels and class probabilities out."""

    model: torch.nn.Module
    preprocessor: Preprocessor
    classes: list[Any]
    manifest: dict[str, Any]

    def predict_columns(self, columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(self.preprocessor.transform(columns))
        with torch.inference_mode():
            probs = torch.softmax(self.model(x), dim=1).numpy()
        return probs.argmax(1), probs

    def predict(self, instances: list[dict[str, Any]]) -> dict[str, Any]:
        columns = self.preprocessor.columns_from_records(instances)
        codes, probs = self.predict_columns(columns)
        return {
            "predictions": [self.classes[i] for i in codes],
            "probabilities": [
                {str(c): float(p) for c, p in zip(self.classes, row, strict=True)} for row in probs
            ],
        }


def load_bundle(folder: Path | str, expected_digest: str | None = None) -> Predictor:
    folder = Path(folder)
    try:
        data = (folder / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise BundleError(f"no {MANIFEST} in {folder}") from None
    if expected_digest is not None and hashlib.sha256(data).hexdigest() != expected_digest:
        raise BundleError(f"{folder / MANIFEST} does not match the digest on record")
    manifest = json.loads(data)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"unsupported bundle format {manifest.get('format_version')!r}")
    weights = folder / WEIGHTS
    if sha256_file(weights) != manifest["weights_sha256"]:
        raise BundleError(f"{weights} does not match the digest in {MANIFEST}")
    model = build_model(
        MLPSpec.model_validate(manifest["model"]),
        manifest["in_features"],
        len(manifest["classes"]),
    )
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    return Predictor(
        model, Preprocessor.from_json(manifest["preprocessing"]), manifest["classes"], manifest
    )
