from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jobs.bundle import BundleError, OutputHead, load_bundle, save_bundle
from jobs.models import build_model
from jobs.preprocess import Preprocessor
from jobs.spec import MLPSpec


def make(tmp_path: Path) -> tuple[Path, str, Preprocessor, object]:
    cols = {"x": np.array([1.0, 2.0, 3.0]), "c": np.array(["a", "b", "a"], dtype=object)}
    pre = Preprocessor.fit(cols, {"x": "numeric", "c": "categorical"})
    spec = MLPSpec(hidden_sizes=[4])
    model = build_model(spec, pre.example_shape, 2)
    rows = [{"x": 1.0, "c": "a"}]
    head = OutputHead("classification", ["no", "yes"])
    digest = save_bundle(
        tmp_path / "b", model.state_dict(), spec, pre, head, rows, {"job_id": "job_1"}
    )
    return tmp_path / "b", digest, pre, model


def test_round_trip_predicts_like_the_original(tmp_path: Path) -> None:
    folder, digest, pre, model = make(tmp_path)
    predictor = load_bundle(folder, digest)
    instances: list[dict[str, Any]] = [{"x": 2.5, "c": "b"}, {"x": None, "c": "unseen"}]
    out = predictor.predict(instances)
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(pre.transform(pre.columns_from_records(instances)))
        expected = torch.softmax(model(x), 1).numpy()  # type: ignore[operator]
    got = np.array([[p["no"], p["yes"]] for p in out["probabilities"]])
    assert np.allclose(got, expected, atol=1e-6)
    assert out["predictions"] == [["no", "yes"][i] for i in expected.argmax(1)]
    assert not list(folder.glob("*.pt")) and not list(folder.glob("*.pkl"))


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    folder, digest, _, _ = make(tmp_path)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match"):
        load_bundle(folder, digest)


def test_tampered_manifest_is_refused(tmp_path: Path) -> None:
    folder, digest, _, _ = make(tmp_path)
    manifest = folder / "bundle.json"
    manifest.write_text(manifest.read_text().replace('"yes"', '"YES"'))
    with pytest.raises(BundleError, match="digest on record"):
        load_bundle(folder, digest)
