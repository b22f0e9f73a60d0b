"""Architectures by name. Each module builds a ``torch.nn.Module`` from its spec section.

Every model takes float32 batches ``(N, *input_shape)``, where ``input_shape`` is one
preprocessed example: ``(F,)`` for a table, ``(T, F)`` for a sequence, ``(C, H, W)`` for an
image. It returns ``(N, out_features)``, except the autoencoder, which returns the
reconstruction ``(N, prod(input_shape))``. Every model has two submodules, ``body`` and
``head``, the groups :func:`freeze` works on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from jobs.models.autoencoder import build_autoencoder
from jobs.models.cnn import build_cnn
from jobs.models.mlp import build_mlp
from jobs.models.rnn import build_rnn
from jobs.models.transformer import build_transformer

__all__ = [
    "INPUT_RANKS",
    "LAYER_GROUPS",
    "REGISTRY",
    "build_model",
    "check_input_shape",
    "freeze",
]

Builder = Callable[[Any, tuple[int, ...], int], nn.Module]

REGISTRY: dict[str, Builder] = {
    "mlp": build_mlp,
    "cnn": build_cnn,
    "lstm": build_rnn,
    "gru": build_rnn,
    "transformer": build_transformer,
    "autoencoder": build_autoencoder,
}

# Ranks of one example each architecture accepts, so a spec can be checked against a dataset
# before a job runs. The data code gives rank 1 (table), 2 (sequence) or 3 (image).
INPUT_RANKS: dict[str, tuple[int, ...]] = {
    "mlp": (1, 2, 3),
    "cnn": (3,),
    "lstm": (2,),
    "gru": (2,),
    "transformer": (1, 2),
    "autoencoder": (1, 2, 3),
}

LAYER_GROUPS = ("body", "head")

_RANK_NAMES = {1: "table input (F,)", 2: "sequence input (T, F)", 3: "image input (C, H, W)"}


def build_model(
    model_spec: Any, input_shape: tuple[int, ...] | int, out_features: int
) -> nn.Module:
    """Build the network a spec's ``model`` section describes, for examples of
    ``input_shape``; a bare int is a table's feature count.

    Raises ValueError, in words for the spec's author, when the shape does not suit the
    architecture.
    """
    arch = model_spec.architecture
    if arch not in REGISTRY:
        raise ValueError(f"unknown architecture '{arch}'; choose one of {', '.join(REGISTRY)}")
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
    check_input_shape(arch, shape)
    if out_features < 1 and arch != "autoencoder":
        raise ValueError(f"{arch} needs at least one output, got out_features={out_features}")
    return REGISTRY[arch](model_spec, shape, out_features)


def check_input_shape(arch: str, shape: tuple[int, ...]) -> None:
    """Raise the ValueError build_model would, so a spec checker can say the same thing."""
    if len(shape) not in INPUT_RANKS[arch]:
        accepted = [_RANK_NAMES[rank] for rank in INPUT_RANKS[arch]]
        needs = " or ".join(accepted) if len(accepted) < 3 else "table, sequence or image input"
        raise ValueError(f"{arch} needs {needs}; this dataset gives {shape}")
    if any(size < 1 for size in shape):
        raise ValueError(f"{arch} cannot take an empty input; this dataset gives {shape}")


def freeze(model: nn.Module, groups: list[str]) -> None:
    """Stop gradient updates to the named groups' parameters (transfer learning).

    BatchNorm running statistics are buffers, not parameters: they still move while the model
    is in training mode; put a frozen group in ``eval()`` to fix them too.
    """
    unknown = [group for group in groups if group not in LAYER_GROUPS]
    if unknown:
        raise ValueError(
            f"unknown layer group {', '.join(map(repr, unknown))}; "
            f"valid groups: {', '.join(LAYER_GROUPS)}"
        )
    for group in groups:
        for param in getattr(model, group).parameters():
            param.requires_grad_(False)
