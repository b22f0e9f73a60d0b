"""Multi-layer perceptron for tabular inputs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from jobs.spec import MLPSpec

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
}


def build_mlp(spec: MLPSpec, in_features: int, out_features: int) -> nn.Module:
    layers: list[nn.Module] = []
    width = in_features
    for size in spec.hidden_sizes:
        layers += [nn.Linear(width, size), ACTIVATIONS[spec.activation]()]
        if spec.dropout > 0:
            layers.append(nn.Dropout(spec.dropout))
        width = size
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)
