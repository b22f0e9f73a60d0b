"""Convolution blocks over an image, global average pooling, a linear head."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from jobs.models.layers import ACTIVATIONS

if TYPE_CHECKING:
    from jobs.spec import CNNSpec

_POOLS: dict[str, type[nn.Module]] = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


class CNN(nn.Module):
    def __init__(self, body: nn.Sequential, head: nn.Linear) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def build_cnn(spec: CNNSpec, input_shape: tuple[int, ...], out_features: int) -> CNN:
    channels, height, width = input_shape
    layers: list[nn.Module] = []
    for out_channels in spec.channels:
        # A conv followed by batch norm gets its shift from the norm; a bias would be unused.
        layers.append(
            nn.Conv2d(
                channels,
                out_channels,
                spec.kernel_size,
                padding=spec.kernel_size // 2,
                bias=not spec.batch_norm,
            )
        )
        if spec.batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(ACTIVATIONS[spec.activation]())
        # Pooling stops once a side reaches 1, so deep stacks still fit small images.
        if spec.pooling != "none" and height >= 2 and width >= 2:
            layers.append(_POOLS[spec.pooling](2))
            height, width = height // 2, width // 2
        channels = out_channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if spec.dropout > 0:
        layers.append(nn.Dropout(spec.dropout))
    return CNN(nn.Sequential(*layers), nn.Linear(channels, out_features))
