"""Pieces several architectures share."""

from __future__ import annotations

import math
from itertools import pairwise

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
}


def flat_size(input_shape: tuple[int, ...]) -> int:
    return math.prod(input_shape)


def dense_stack(
    widths: list[int], activation: str, dropout: float, norm: str = "none"
) -> list[nn.Module]:
    """Linear layers from ``widths[0]`` through each later width, each followed by its
    normalisation, activation and dropout.

    The layer order is part of the state-dict keys, so changing it breaks saved bundles.
    """
    layers: list[nn.Module] = []
    for width_in, width_out in pairwise(widths):
        layers.append(nn.Linear(width_in, width_out))
        if norm == "batch":
            layers.append(nn.BatchNorm1d(width_out))
        elif norm == "layer":
            layers.append(nn.LayerNorm(width_out))
        layers.append(ACTIVATIONS[activation]())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return layers
