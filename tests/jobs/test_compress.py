"""Compressed serving variants: pruning, dynamic int8 quantization, and their bundles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from jobs.bundle import BundleError, OutputHead, load_bundle, save_bundle
from jobs.compress import (
    Compression,
    compare_latency,
    compress,
    prune_weights,
    serialized_size,
    sparsity,
)
from jobs.models import build_model
from jobs.preprocess import Preprocessor
from jobs.spec import (
    AutoencoderSpec,
    CNNSpec,
    MLPSpec,
    RNNSpec,
    TransformerSpec,
)
from jobs.train import predict_logits

INT8 = Compression("dynamic_int8")


def trained_mlp(seed: int = 0) -> tuple[nn.Module, np.ndarray, Preprocessor]:
    """A small MLP fitted to a rule it can learn (so its decisions have margins, as a trained
    model's do), with the preprocessor of its inputs."""
    rng = np.random.default_rng(seed)
    cols = {f"x{i}": rng.normal(size=600) for i in range(8)}
    pre = Preprocessor.fit(cols, dict.fromkeys(cols, "numeric"))
    x = pre.transform(cols)
    y = torch.from_numpy(((x[:, 0] + x[:, 1] * x[:, 2]) > 0).astype(np.int64))
    torch.manual_seed(seed)
    model = build_model(MLPSpec(hidden_sizes=[64, 32]), pre.example_shape, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    xt = torch.from_numpy(x)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), y).backward()
        opt.step()
    return model.eval(), x, pre


@pytest.mark.parametrize("amount", [0.3, 0.75])
def test_pruning_reaches_the_requested_sparsity(amount: float) -> None:
    model, _, _ = trained_mlp()
    total = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    assert sparsity(model) == 0.0
    variant = compress(model, Compression(prune=amount))
    assert abs(variant.sparsity - amount) <= 1 / total
    assert sparsity(model) == 0.0  # the original is left as it was
    # Global: layers keep different fractions, the smallest weights over all of them go.
    pruned = variant.model
    per_layer = [
        float((m.weight == 0).float().mean()) for m in pruned.modules() if isinstance(m, nn.Linear)
    ]
    assert len(set(per_layer)) > 1
    kept = torch.cat(
        [m.weight.abs().flatten() for m in pruned.modules() if isinstance(m, nn.Linear)]
    )
    original = torch.cat(
        [m.weight.abs().flatten() for m in model.modules() if isinstance(m, nn.Linear)]
    )
    assert kept[kept > 0].min() >= original.kthvalue(round(amount * total)).values
    # Permanent: no masks or re-pruning hooks left behind.
    assert not any(name.endswith("_mask") for name, _ in pruned.named_buffers())
    assert all(not m._forward_pre_hooks for m in pruned.modules())


def test_int8_predicts_like_the_float_model_and_is_smaller() -> None:
    model, x, _ = trained_mlp()
    variant = compress(model, INT8)
    assert any(
        type(m).__name__ == "Linear" and "quantized" in type(m).__module__
        for m in variant.model.modules()
    )
    float_pred = predict_logits(model, x).argmax(1)
    int8_pred = predict_logits(variant.model, x).argmax(1)
    agreement = float((float_pred == int8_pred).float().mean())
    assert agreement >= 0.97, agreement
    size, original = serialized_size(variant.model), serialized_size(model)
    assert size["bytes"] < 0.75 * original["bytes"], (size, original)


def test_pruning_shrinks_the_deflated_size_only() -> None:
    model, _, _ = trained_mlp()
    variant = compress(model, Compression(prune=0.5))
    size, original = serialized_size(variant.model), serialized_size(model)
    # Dense storage: zeros cost as much as any weight (the pickle framing differs a little).
    assert abs(size["bytes"] - original["bytes"]) < 0.02 * original["bytes"]
    assert size["deflated_bytes"] < 0.8 * original["deflated_bytes"]


def test_prune_then_quantize_keeps_the_zeros_in_the_stored_weights() -> None:
    model, x, _ = trained_mlp()
    variant = compress(model, Compression("dynamic_int8", 0.3))
    stored = [v for k, v in variant.state.items() if k.endswith("weight") and v.dim() == 2]
    zeros = sum(int((w == 0).sum()) for w in stored) / sum(w.numel() for w in stored)
    assert zeros == pytest.approx(0.3, abs=0.01) and variant.sparsity == pytest.approx(zeros)
    assert all(v.dtype == torch.float32 for v in variant.state.values() if v.is_floating_point())
    assert predict_logits(variant.model, x).shape == (len(x), 2)


CASES: list[tuple[Any, tuple[int, ...], int]] = [
    (MLPSpec(hidden_sizes=[32, 16], norm="batch"), (12,), 3),
    (CNNSpec(architecture="cnn", channels=[4, 8]), (1, 8, 8), 2),
    (RNNSpec(architecture="lstm", hidden_size=16, num_layers=2), (6, 3), 2),
    (RNNSpec(architecture="gru", hidden_size=16, bidirectional=True), (6, 3), 1),
    (TransformerSpec(architecture="transformer", d_model=16, num_heads=4), (6,), 2),
    (TransformerSpec(architecture="transformer", d_model=16, num_heads=4), (5, 3), 2),
    (AutoencoderSpec(architecture="autoencoder", encoder_sizes=[8, 4]), (12,), 12),
]


@pytest.mark.parametrize(("spec", "shape", "outputs"), CASES, ids=lambda c: str(c)[:20])
def test_every_architecture_compresses_and_stays_close(
    spec: Any, shape: tuple[int, ...], outputs: int
) -> None:
    torch.manual_seed(0)
    model = build_model(spec, shape, outputs).eval()
    x = np.random.default_rng(1).normal(size=(32, *shape)).astype(np.float32)
    variant = compress(model, Compression("dynamic_int8", 0.2))
    reference = predict_logits(compress(model, Compression(prune=0.2)).model, x)
    out = predict_logits(variant.model, x)
    assert out.shape == reference.shape
    # int8 weights: close to the pruned float model, not equal to it.
    scale = float(reference.abs().max())
    assert float((out - reference).abs().max()) <= 0.1 * scale + 1e-3
    quantized = [m for m in variant.model.modules() if "quantized" in type(m).__module__]
    assert quantized  # every architecture has at least its Linear head quantized
    original_ms, variant_ms = compare_latency(model, variant.model, x, repeats=3, warmup=1)
    assert original_ms > 0 and variant_ms > 0


def save(
    tmp_path: Path, compression: Compression | None
) -> tuple[Path, str, nn.Module, Preprocessor]:
    model, _, pre = trained_mlp()
    variant = compress(model, compression or Compression())
    head = OutputHead("classification", ["no", "yes"])
    rows = [{f"x{i}": float(i) / 10 for i in range(8)}]
    folder = tmp_path / "b"
    digest = save_bundle(
        folder,
        variant.state,
        MLPSpec(hidden_sizes=[64, 32]),
        pre,
        head,
        rows,
        {"candidate": "compressed"},
        compression=compression,
    )
    return folder, digest, variant.model, pre


def test_a_compressed_bundle_loads_as_the_model_that_was_evaluated(tmp_path: Path) -> None:
    compression = Compression("dynamic_int8", 0.3)
    folder, digest, served, pre = save(tmp_path, compression)
    manifest = json.loads((folder / "bundle.json").read_text())
    assert manifest["compression"] == {
        "quantize": "dynamic_int8",
        "prune": 0.3,
        "quantized_types": ["Linear", "LSTM", "GRU"],
    }
    # Only safetensors and JSON: no pickled model anywhere in the bundle.
    assert sorted(p.name for p in folder.iterdir()) == ["bundle.json", "model.safetensors"]
    predictor = load_bundle(folder, digest)
    kinds = {type(m).__module__ for m in predictor.model.modules()}
    assert "torch.ao.nn.quantized.dynamic.modules.linear" in kinds
    rng = np.random.default_rng(3)
    instances = [{f"x{i}": float(rng.normal()) for i in range(8)} for _ in range(40)]
    x = pre.transform(pre.columns_from_records(instances))
    expected = torch.softmax(predict_logits(served, x), 1).numpy()
    got = predictor.predict(instances)
    probs = np.array([[p["no"], p["yes"]] for p in got["probabilities"]])
    assert np.array_equal(probs, expected.astype(probs.dtype))
    # Loading twice gives the same int8 model: quantizing weights is deterministic.
    again = load_bundle(folder, digest).predict(instances)
    assert again == got


def test_an_uncompressed_bundle_has_no_compression_entry(tmp_path: Path) -> None:
    folder, digest, _, _ = save(tmp_path, None)
    assert "compression" not in json.loads((folder / "bundle.json").read_text())
    predictor = load_bundle(folder, digest)
    assert not any("quantized" in type(m).__module__ for m in predictor.model.modules())


def test_switching_off_the_quantization_of_a_bundle_is_refused(tmp_path: Path) -> None:
    folder, digest, _, _ = save(tmp_path, INT8)
    manifest = folder / "bundle.json"
    manifest.write_text(manifest.read_text().replace('"dynamic_int8"', '"none"'))
    with pytest.raises(BundleError, match="digest on record"):
        load_bundle(folder, digest)


def test_an_unknown_quantization_is_refused(tmp_path: Path) -> None:
    folder, _, _, _ = save(tmp_path, INT8)
    manifest = folder / "bundle.json"
    manifest.write_text(manifest.read_text().replace('"dynamic_int8"', '"int2"'))
    with pytest.raises(BundleError, match="unknown quantization 'int2'"):
        load_bundle(folder)


def test_pruning_a_model_without_dense_layers_says_so() -> None:
    with pytest.raises(ValueError, match="no Linear or Conv layer"):
        prune_weights(nn.Sequential(nn.ReLU()), 0.5)


def test_method_names() -> None:
    assert Compression("dynamic_int8", 0.3).method == "l1_prune+dynamic_int8"
    assert Compression(prune=0.3).method == "l1_prune"
    assert Compression("dynamic_int8").method == "dynamic_int8"
    assert not Compression().active
    assert Compression.from_json(Compression("dynamic_int8", 0.5).to_json()) == Compression(
        "dynamic_int8", 0.5
    )
