"""Model bundles: what a trained model is on disk, and how it is loaded to predict.

A bundle is a folder with two files and nothing executable:

- ``model.safetensors``: the weights (safetensors, so loading runs no code, unlike pickle);
- ``bundle.json``: architecture, preprocessing, classes, input signature, sample rows for
  health checks, and the sha256 of the weights, checked on every load.

A compressed variant (``promotion.compress``/``prune``) stores its pruned float weights and
names its quantization under ``compression``; the loader quantizes the model again from them.

A bundle is written into a temporary folder beside its place and renamed into place once both
files are complete and on disk: a full disk or a crash leaves no bundle, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import TypeAdapter
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from jobs.compress import Compression, served_model
from jobs.data import DataError
from jobs.models import build_model
from jobs.preprocess import Preprocessor
from jobs.spec import ModelSpec, Task

FORMAT_VERSION = 1
_MODEL_SPEC: TypeAdapter[Any] = TypeAdapter(ModelSpec)
WEIGHTS = "model.safetensors"
MANIFEST = "bundle.json"


class BundleError(ValueError):
    """A bundle is missing, malformed or does not match its recorded digest."""


def _umask() -> int:
    """The process's umask, read without setting it (os.umask would change it for every
    thread for a moment)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class OutputHead:
    """How the network's outputs become answers: class labels, a value in the target's units,
    or an anomaly flag from the reconstruction error."""

    task: Task
    classes: list[Any]
    center: float = 0.0
    scale: float = 1.0
    threshold: float | None = None
    # A mitigated classifier: {"feature", "positive" (class index), "groups": thresholds}
    group_thresholds: dict[str, Any] | None = None

    @classmethod
    def of(
        cls,
        target: Any,
        threshold: float | None = None,
        group_thresholds: dict[str, Any] | None = None,
    ) -> OutputHead:
        return cls(
            target.task,
            list(target.classes),
            target.center,
            target.scale,
            threshold,
            group_thresholds,
        )

    def n_outputs(self, preprocessor: Preprocessor) -> int:
        if self.task == "regression":
            return 1
        if self.task == "anomaly_detection":
            return math.prod(preprocessor.example_shape)
        return len(self.classes)


def save_bundle(
    folder: Path,
    state: dict[str, torch.Tensor],
    model_spec: Any,
    preprocessor: Preprocessor,
    head: OutputHead,
    sample_rows: list[dict[str, Any]],
    metadata: dict[str, Any],
    compression: Compression | None = None,
    reference: dict[str, Any] | None = None,
) -> str:
    """Write a bundle; return its digest (sha256 of the manifest, which pins the weights).
    ``compression``: how the loader turns the stored float weights into the served model.
    ``reference``: the training inputs' profile (jobs.drift) the endpoint's drift is judged on."""
    blob = safetensors_bytes({k: v.contiguous() for k, v in state.items()})
    manifest = {
        "format_version": FORMAT_VERSION,
        "model": model_spec.model_dump(mode="json"),
        "example_shape": list(preprocessor.example_shape),
        "task": head.task,
        "classes": head.classes,
        "target": {"center": head.center, "scale": head.scale},
        "threshold": head.threshold,
        "group_thresholds": head.group_thresholds,
        "preprocessing": preprocessor.to_json(),
        "input_signature": preprocessor.input_signature()
        + (
            [{"name": head.group_thresholds["feature"], "kind": "sensitive"}]
            if head.group_thresholds
            else []
        ),
        "sample_rows": sample_rows,
        "weights_sha256": hashlib.sha256(blob).hexdigest(),
        "metadata": metadata,
    }
    if reference is not None:
        manifest["reference"] = reference
    if compression is not None and compression.active:
        manifest["compression"] = compression.to_json()
    data = json.dumps(manifest, indent=2, sort_keys=True).encode()
    _write_folder(folder, {WEIGHTS: blob, MANIFEST: data})
    return hashlib.sha256(data).hexdigest()


def _write_folder(folder: Path, files: dict[str, bytes]) -> None:
    """Put ``files`` in ``folder`` all at once: written and synced in a temporary sibling,
    then renamed into place (replacing an older bundle there). Any error, ENOSPC included,
    removes the temporary folder and leaves ``folder`` as it was."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    old: Path | None = None
    try:
        for name, content in files.items():
            with open(tmp / name, "wb") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
        # mkdtemp makes it private; a bundle is read by serving replicas, which may run as
        # another user on a shared volume: the folder gets the mode the umask gives any
        # folder (0755 by default, 0700 under `crucible up`'s umask of 077).
        tmp.chmod(0o777 & ~_umask())
        if folder.exists():
            # A relaunched driver writes its bundle again: the old one goes aside first (a
            # folder cannot be renamed over a non-empty one).
            old = tmp.with_suffix(".old")
            folder.rename(old)
        tmp.rename(folder)
        _sync_dir(folder.parent)
    except BaseException as exc:
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(folder)  # a full disk's error then says what was being written
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not folder.exists():
            old.rename(folder)
            old = None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _sync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class Predictor:
    """A loaded bundle: raw JSON instances in; labels and class probabilities, values, or
    anomaly flags and scores out."""

    model: torch.nn.Module
    preprocessor: Preprocessor
    head: OutputHead
    manifest: dict[str, Any]

    @property
    def classes(self) -> list[Any]:
        return self.head.classes

    def predict_columns(self, columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(predicted class codes or values, class probabilities or anomaly scores)."""
        x = torch.from_numpy(self.preprocessor.transform(columns))
        with torch.inference_mode():
            out = self.model(x)
        if self.head.task == "regression":
            values = out.reshape(-1).numpy().astype(np.float64) * self.head.scale
            return values + self.head.center, values
        if self.head.task == "anomaly_detection":
            scores = ((out - x.flatten(1)) ** 2).mean(dim=1).numpy().astype(np.float64)
            assert self.head.threshold is not None
            return (scores > self.head.threshold).astype(np.int64), scores
        probs = torch.softmax(out, dim=1).numpy()
        return probs.argmax(1), probs

    def predict(self, instances: list[dict[str, Any]], finite: bool = False) -> dict[str, Any]:
        columns = self.preprocessor.columns_from_records(instances, finite)
        return self.predict_many([(instances, columns)], finite)[0]

    def predict_many(
        self,
        requests: list[tuple[list[dict[str, Any]], dict[str, np.ndarray]]],
        finite: bool = False,
    ) -> list[dict[str, Any]]:
        """Answer several requests with one forward pass. Each request comes as its instances
        and the raw columns ``preprocessor.columns_from_records`` made of them (checked per
        request first, so that one bad request does not fail the others).

        ``finite`` (serving): an instance whose output is NaN or infinite (an input far
        outside what the model was trained on can overflow inside the network) is a
        DataError naming it, instead of an answer JSON cannot carry."""
        if len(requests) == 1:
            instances, columns = requests[0]
            codes, extra = self.predict_columns(columns)
            if finite:
                _check_finite(codes, extra)
            return [self._answer(instances, codes, extra)]
        names = list(requests[0][1])
        joined = {n: np.concatenate([cols[n] for _, cols in requests]) for n in names}
        codes, extra = self.predict_columns(joined)
        out, start = [], 0
        for instances, _ in requests:
            end = start + len(instances)
            if finite:
                _check_finite(codes[start:end], extra[start:end])
            out.append(self._answer(instances, codes[start:end], extra[start:end]))
            start = end
        return out

    def _answer(
        self, instances: list[dict[str, Any]], codes: np.ndarray, extra: np.ndarray
    ) -> dict[str, Any]:
        if self.head.task == "regression":
            return {"predictions": [float(v) for v in codes]}
        if self.head.task == "anomaly_detection":
            return {
                "predictions": [self.classes[i] for i in codes],
                "anomaly_scores": [float(v) for v in extra],
                "threshold": self.head.threshold,
            }
        if self.head.group_thresholds is not None:
            codes = self._thresholded(instances, extra)
        return {
            "predictions": [self.classes[i] for i in codes],
            "probabilities": [
                {str(c): float(p) for c, p in zip(self.classes, row, strict=True)} for row in extra
            ],
        }

    def _thresholded(self, instances: list[dict[str, Any]], probs: np.ndarray) -> np.ndarray:
        """A mitigated model's decisions: its group's thresholds on the favourable class's
        probability. Where fairlearn's thresholds mix two, the draw is seeded by the request's
        rows, so the same request always gets the same answer."""
        from jobs.mitigation import apply_decisions, positive_probability

        g = self.head.group_thresholds
        assert g is not None
        feature, pos = g["feature"], int(g["positive"])
        values = []
        for i, rec in enumerate(instances):
            if feature not in rec:
                raise DataError(
                    f"instances[{i}] is missing column '{feature}': this model applies "
                    "thresholds per group of it"
                )
            values.append(rec[feature])
        try:
            chance = positive_probability(g["groups"], probs[:, pos], np.array(values, object))
        except ValueError as exc:
            raise DataError(f"{feature}: {exc}") from exc
        seed = int.from_bytes(
            hashlib.sha256(json.dumps(instances, sort_keys=True, default=str).encode()).digest()[:8]
        )
        return np.where(apply_decisions(chance, seed), pos, 1 - pos)


def _check_finite(codes: np.ndarray, extra: np.ndarray) -> None:
    """DataError naming the first instance whose outputs are not all finite numbers."""
    n = len(codes)
    fine = np.isfinite(np.asarray(codes, np.float64)) & np.isfinite(
        np.asarray(extra, np.float64).reshape(n, -1)
    ).all(axis=1)
    if not fine.all():
        row = int(np.flatnonzero(~fine)[0])
        raise DataError(
            f"instances[{row}]: the model's output is not a finite number (an input far "
            "outside the range the model was trained on overflows inside it)",
            ["instances", row],
        )


def read_manifest(folder: Path | str, expected_digest: str | None = None) -> dict[str, Any]:
    """A bundle's manifest alone, checked against its digest (the weights are not read):
    what the control plane needs to know about a model without loading it."""
    folder = Path(folder)
    try:
        data = (folder / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise BundleError(f"no {MANIFEST} in {folder}") from None
    if expected_digest is not None and hashlib.sha256(data).hexdigest() != expected_digest:
        raise BundleError(f"{folder / MANIFEST} does not match the digest on record")
    manifest: dict[str, Any] = json.loads(data)
    return manifest


def read_bundle(
    folder: Path | str, expected_digest: str | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A bundle's manifest and weights, after checking both against their digests."""
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
    return manifest, load_file(str(weights))


def load_bundle(folder: Path | str, expected_digest: str | None = None) -> Predictor:
    manifest, weights = read_bundle(folder, expected_digest)
    pre = Preprocessor.from_json(manifest["preprocessing"])
    target = manifest.get("target") or {}
    head = OutputHead(
        manifest.get("task", "classification"),
        manifest["classes"],
        target.get("center", 0.0),
        target.get("scale", 1.0),
        manifest.get("threshold"),
        manifest.get("group_thresholds"),
    )
    model = build_model(
        _MODEL_SPEC.validate_python(manifest["model"]), pre.example_shape, head.n_outputs(pre)
    )
    model.load_state_dict(weights)
    try:
        compression = Compression.from_json(manifest.get("compression"))
    except ValueError as exc:
        raise BundleError(f"{folder}: {exc}") from None
    return Predictor(served_model(model, compression), pre, head, manifest)
