"""Transformer encoder over the steps of a sequence, or over the features of a table."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from jobs.spec import TransformerSpec


class FeatureTokens(nn.Module):
    """(N, F) -> (N, F, d_model): feature i becomes ``x_i * weight_i``.

    Each feature has its own weight because features of a table, unlike steps of a sequence,
    mean different things. There is no bias: the learnt position embedding added afterwards
    already gives each feature its own offset.
    """

    def __init__(self, num_features: int, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_features, d_model) / d_model**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(-1) * self.weight


class TransformerBody(nn.Module):
    """Tokens, plus a learnt embedding per position, through the encoder, mean-pooled."""

    def __init__(self, spec: TransformerSpec, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.embed: nn.Module
        if len(input_shape) == 1:
            (num_tokens,) = input_shape
            self.embed = FeatureTokens(num_tokens, spec.d_model)
        else:
            num_tokens, in_features = input_shape
            self.embed = nn.Linear(in_features, spec.d_model)
        # Positions start about as loud as the values: at BERT's 0.02 a short training never
        # learnt to use them (the built-in sines set stayed at chance for 15 epochs).
        self.position = nn.Parameter(torch.randn(1, num_tokens, spec.d_model) * 0.5)
        layer = nn.TransformerEncoderLayer(
            spec.d_model,
            spec.num_heads,
            dim_feedforward=spec.dim_feedforward,
            dropout=spec.dropout,
            batch_first=True,
        )
        # The nested-tensor fast path only helps padded batches, which never occur here.
        self.encoder = nn.TransformerEncoder(layer, spec.num_layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x) + self.position
        return self.encoder(tokens).mean(dim=1)


class Transformer(nn.Module):
    def __init__(self, body: TransformerBody, head: nn.Linear) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def build_transformer(
    spec: TransformerSpec, input_shape: tuple[int, ...], out_features: int
) -> Transformer:
    return Transformer(TransformerBody(spec, input_shape), nn.Linear(spec.d_model, out_features))
