"""Autoencoder for anomaly detection: reconstructs its flattened input through a bottleneck.

The output is always the reconstruction, shape ``(N, prod(input_shape))``; ``out_features``
is ignored, because the caller's class count means nothing to a reconstruction. The anomaly
threshold on the reconstruction error is set elsewhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from jobs.models.layers import dense_stack, flat_size

if TYPE_CHECKING:
    from jobs.spec import AutoencoderSpec


class Autoencoder(nn.Module):
    """``body`` is the encoder and ``head`` the decoder, so freezing "body" keeps a
    pretrained code while the decoder adapts."""

    def __init__(self, body: nn.Sequential, head: nn.Sequential) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.flatten(1)))


def _half(widths: list[int], spec: AutoencoderSpec) -> nn.Sequential:
    # The code and the reconstruction are plain linear outputs: scaled inputs are unbounded,
    # and an activation would clip or squash them.
    hidden = dense_stack(widths[:-1], spec.activation, spec.dropout)
    return nn.Sequential(*hidden, nn.Linear(widths[-2], widths[-1]))


def build_autoencoder(
    spec: AutoencoderSpec, input_shape: tuple[int, ...], out_features: int = 0
) -> Autoencoder:
    widths = [flat_size(input_shape), *spec.encoder_sizes, spec.bottleneck]
    return Autoencoder(_half(widths, spec), _half(widths[::-1], spec))
