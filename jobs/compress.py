"""Compressed serving variants: global L1 pruning and dynamic int8 quantization.

A compressed bundle stays safetensors + JSON. It stores the (pruned) float weights and records
the compression in its manifest; :func:`jobs.bundle.load_bundle` re-applies the quantization
with :func:`served_model` when it loads, and the quantization of weights is a pure function of
them, so the driver's evaluation and the serving replica run the same int8 model.

Measuring the variant (:func:`serialized_size`) serialises state dicts into memory; nothing
here reads a serialised model back, and no user file is ever loaded with ``torch.load``.
"""

from __future__ import annotations

import copy
import io
import statistics
import time
import warnings
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from jobs.checkpoint import StateDict

Quantize = Literal["none", "dynamic_int8"]
# What dynamic quantization replaces: layers whose cost is matrix products with weights.
QUANTIZED_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.LSTM, nn.GRU)
# What pruning zeroes: the weights of the dense and convolution layers (recurrent layers keep
# theirs: their gates share one matrix, and zeroing across gates is a different method).
PRUNED_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass(frozen=True)
class Compression:
    """What was done to the best model's weights to make the served variant.

    Args:
        quantize: "dynamic_int8" to quantize QUANTIZED_TYPES layers when loading, or "none".
        prune: fraction of PRUNED_TYPES weights zeroed (already in the stored weights), or None.
    """

    quantize: Quantize = "none"
    prune: float | None = None

    @property
    def active(self) -> bool:
        return self.quantize != "none" or self.prune is not None

    @property
    def method(self) -> str:
        parts = (["l1_prune"] if self.prune is not None else []) + (
            [self.quantize] if self.quantize != "none" else []
        )
        return "+".join(parts) or "none"

    def to_json(self) -> dict[str, Any]:
        return {
            "quantize": self.quantize,
            "prune": self.prune,
            "quantized_types": [t.__name__ for t in QUANTIZED_TYPES]
            if self.quantize != "none"
            else [],
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any] | None) -> Compression:
        if not doc:
            return cls()
        quantize = doc.get("quantize", "none")
        if quantize not in ("none", "dynamic_int8"):
            raise ValueError(f"unknown quantization {quantize!r}")
        prune = doc.get("prune")
        return cls(quantize, float(prune) if prune is not None else None)


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNED_TYPES)]


def prune_weights(model: nn.Module, amount: float) -> None:
    """Zero the ``amount`` fraction of smallest-magnitude weights over every prunable layer
    together, in place, and make it permanent (no masks or hooks left on the model)."""
    params = prunable(model)
    if not params:
        raise ValueError("the model has no Linear or Conv layer to prune")
    torch_prune.global_unstructured(
        params, pruning_method=torch_prune.L1Unstructured, amount=amount
    )
    for module, name in params:
        torch_prune.remove(module, name)


def sparsity(model: nn.Module) -> float:
    """The fraction of zeros among the prunable layers' weights."""
    weights = [getattr(m, name) for m, name in prunable(model)]
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / total if total else 0.0


def _skip_fused_path(module: nn.Module, args: Any) -> None:
    """A no-op pre-hook. torch's TransformerEncoderLayer takes a fused fast path in eval mode
    that reads ``linear1.weight`` as a tensor; a dynamically quantized Linear has a ``weight()``
    method instead and that path crashes. A registered hook is one of the documented reasons
    the layer takes its plain path, which calls the quantized layers like any module; a hook
    keeps the choice on this model rather than flipping torch's process-wide fast-path flag."""


def quantize(model: nn.Module) -> nn.Module:
    """A dynamically quantized copy of ``model`` (int8 weights; activations quantized per
    batch), in eval mode. Deterministic: the same float weights give the same int8 model."""
    model.eval()
    with warnings.catch_warnings():
        # torch marks its eager quantization APIs deprecated in favour of torchao, which this
        # image does not ship; the warning would repeat in every driver and replica log.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")
        from torch.ao.quantization import quantize_dynamic

        out = quantize_dynamic(model, set(QUANTIZED_TYPES), dtype=torch.qint8, inplace=False)
    for m in out.modules():
        if isinstance(m, nn.TransformerEncoderLayer):
            m.register_forward_pre_hook(_skip_fused_path)
    return out.eval()


@dataclass
class Compressed:
    """A served variant: the model that runs, the float weights its bundle stores (pruned when
    asked; the loader quantizes them again), and the sparsity of its prunable weights."""

    model: nn.Module
    state: StateDict
    sparsity: float


def compress(model: nn.Module, compression: Compression) -> Compressed:
    """The served variant of ``model``, which is left untouched."""
    pruned = copy.deepcopy(model).eval()
    if compression.prune is not None:
        prune_weights(pruned, compression.prune)
    state = {k: v.detach().clone() for k, v in pruned.state_dict().items()}
    # Counted before quantizing: a quantized layer keeps its weights packed.
    zeros = sparsity(pruned)
    return Compressed(served_model(pruned, compression), state, zeros)


def served_model(model: nn.Module, compression: Compression) -> nn.Module:
    """What serves from float weights that are already pruned: quantized when asked."""
    return quantize(model) if compression.quantize == "dynamic_int8" else model.eval()


def serialized_bytes(model: nn.Module) -> bytes:
    """The model's state dict as torch serialises it (quantized layers as their packed int8
    parameters), written to memory to be measured; never read back."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def serialized_size(model: nn.Module) -> dict[str, int]:
    """Bytes of the serialised state dict, and of it deflated (zlib level 6): zeros from
    pruning only shrink a stored model that is compressed."""
    data = serialized_bytes(model)
    return {"bytes": len(data), "deflated_bytes": len(zlib.compress(data, 6))}


def compare_latency(
    original: nn.Module, variant: nn.Module, x: np.ndarray, repeats: int = 21, warmup: int = 3
) -> tuple[float, float]:
    """p50 CPU milliseconds of one forward over the batch ``x`` for each model. The two are
    timed alternately, so a slower moment of the machine weighs on both alike."""
    t = torch.from_numpy(np.require(x, dtype=np.float32, requirements="W"))
    times: tuple[list[float], list[float]] = ([], [])
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for model, out in zip((original, variant), times, strict=True):
                start = time.perf_counter()
                model(t)
                if i >= warmup:
                    out.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times[0]), statistics.median(times[1])
