"""Multi-layer perceptron: the default for tables; any input shape is flattened first."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from jobs.models.layers import ACTIVATIONS, dense_stack, flat_size

if TYPE_CHECKING:
    from jobs.spec import MLPSpec

__all__ = ["ACTIVATIONS", "MLP", "build_mlp"]

_LEGACY_KEY = re.compile(r"(\d+)\.(.+)")


class MLP(nn.Module):
    def __init__(self, body: nn.Sequential, head: nn.Linear) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.flatten(1)))

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        _rename_legacy_keys(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _rename_legacy_keys(state_dict: dict[str, Any], prefix: str) -> None:
    """Bundles saved before the body/head split hold one flat ``nn.Sequential`` ("0.weight",
    ..., the last index being the output layer). Those specs had no norm, so every index but
    the last is the same position in ``body``; renaming in place lets old bundles still load.
    """
    legacy = {}
    for key in state_dict:
        match = _LEGACY_KEY.fullmatch(key[len(prefix) :]) if key.startswith(prefix) else None
        if match:
            legacy[key] = (int(match[1]), match[2])
    if not legacy:
        return
    last = max(index for index, _ in legacy.values())
    for key, (index, name) in legacy.items():
        group = "head" if index == last else f"body.{index}"
        state_dict[f"{prefix}{group}.{name}"] = state_dict.pop(key)


def build_mlp(spec: MLPSpec, input_shape: tuple[int, ...] | int, out_features: int) -> MLP:
    in_features = input_shape if isinstance(input_shape, int) else flat_size(input_shape)
    widths = [in_features, *spec.hidden_sizes]
    body = nn.Sequential(*dense_stack(widths, spec.activation, spec.dropout, spec.norm))
    return MLP(body, nn.Linear(widths[-1], out_features))
