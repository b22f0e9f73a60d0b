"""Architectures by name. Each module builds a ``torch.nn.Module`` from its spec section."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from jobs.models.mlp import build_mlp

Builder = Callable[[Any, int, int], nn.Module]

REGISTRY: dict[str, Builder] = {"mlp": build_mlp}


def build_model(model_spec: Any, in_features: int, out_features: int) -> nn.Module:
    """Build the network a spec's ``model`` section describes."""
    try:
        builder = REGISTRY[model_spec.architecture]
    except KeyError:
        raise ValueError(f"unknown architecture '{model_spec.architecture}'") from None
    return builder(model_spec, in_features, out_features)
