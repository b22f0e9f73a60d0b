"""LSTM or GRU over a sequence; each direction's final state feeds a linear head."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from jobs.spec import RNNSpec

_CELLS: dict[str, type[nn.LSTM] | type[nn.GRU]] = {"lstm": nn.LSTM, "gru": nn.GRU}


class RecurrentBody(nn.Module):
    """(N, T, F) -> (N, hidden_size * directions)."""

    def __init__(self, spec: RNNSpec, in_features: int) -> None:
        super().__init__()
        self.bidirectional = spec.bidirectional
        # torch warns about (and ignores) dropout on a single layer: it only acts between layers.
        self.rnn = _CELLS[spec.architecture](
            in_features,
            spec.hidden_size,
            num_layers=spec.num_layers,
            batch_first=True,
            dropout=spec.dropout if spec.num_layers > 1 else 0.0,
            bidirectional=spec.bidirectional,
        )
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        hidden = self.rnn.hidden_size
        forward_last = out[:, -1, :hidden]
        if not self.bidirectional:
            return self.dropout(forward_last)
        # The backward direction finishes reading at step 0; its output at the last step has
        # seen a single element, so its final state is taken from the first step instead.
        backward_last = out[:, 0, hidden:]
        return self.dropout(torch.cat([forward_last, backward_last], dim=1))


class RNN(nn.Module):
    def __init__(self, body: RecurrentBody, head: nn.Linear) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def build_rnn(spec: RNNSpec, input_shape: tuple[int, ...], out_features: int) -> RNN:
    _, in_features = input_shape
    directions = 2 if spec.bidirectional else 1
    return RNN(
        RecurrentBody(spec, in_features), nn.Linear(spec.hidden_size * directions, out_features)
    )
