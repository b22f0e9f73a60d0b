"""Training checkpoints that resume exactly: weights, optimizer, RNG streams, loop state.

Written as safetensors (every tensor) plus JSON (the rest), like model bundles: restoring a
trial after a worker dies, or PBT copying another trial's state, loads no pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

TENSORS = "state.safetensors"
META = "state.json"
StateDict = dict[str, torch.Tensor]


@dataclass
class TrainState:
    epoch: int  # epochs completed
    model: StateDict
    optimizer: dict[str, Any]  # torch optimizer state_dict
    best: StateDict  # weights of the best epoch so far
    best_score: float
    early_stop_best: float
    stale_epochs: int
    batch_rng: torch.Tensor  # state of the generator that orders batches
    torch_rng: torch.Tensor  # global RNG (dropout, augmentation)
    # Reduce-on-plateau's memory: the factor on the spec's learning rate it has reached, the
    # best validation loss it has seen and the epochs since.
    lr_factor: float = 1.0
    plateau_best: float = float("inf")
    plateau_stale: int = 0


def _split_optimizer(sd: dict[str, Any]) -> tuple[StateDict, dict[str, Any]]:
    tensors: StateDict = {}
    plain: dict[str, dict[str, Any]] = {}
    for pid, entry in sd["state"].items():
        plain[str(pid)] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{pid}/{key}"] = value
            else:
                plain[str(pid)][key] = value
    return tensors, {"param_groups": sd["param_groups"], "state": plain}


def _join_optimizer(tensors: StateDict, meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(pid): dict(v) for pid, v in meta["state"].items()}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, pid, key = name.split("/", 2)
            state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(folder: Path, state: TrainState) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    optim_tensors, optim_meta = _split_optimizer(state.optimizer)
    tensors = {
        **{f"model/{k}": v for k, v in state.model.items()},
        **{f"best/{k}": v for k, v in state.best.items()},
        **optim_tensors,
        "rng/batch": state.batch_rng,
        "rng/torch": state.torch_rng,
    }
    save_file(
        {k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(folder / TENSORS)
    )
    meta = {
        "epoch": state.epoch,
        "best_score": state.best_score,
        "early_stop_best": state.early_stop_best,
        "stale_epochs": state.stale_epochs,
        "lr_factor": state.lr_factor,
        "plateau_best": state.plateau_best,
        "plateau_stale": state.plateau_stale,
        "optimizer": optim_meta,
    }
    (folder / META).write_text(json.dumps(meta))


def load_checkpoint(folder: Path) -> TrainState:
    tensors = load_file(str(folder / TENSORS))
    meta = json.loads((folder / META).read_text())

    def part(prefix: str) -> StateDict:
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    return TrainState(
        epoch=meta["epoch"],
        model=part("model/"),
        optimizer=_join_optimizer(tensors, meta["optimizer"]),
        best=part("best/"),
        best_score=meta["best_score"],
        early_stop_best=meta["early_stop_best"],
        stale_epochs=meta["stale_epochs"],
        batch_rng=tensors["rng/batch"],
        torch_rng=tensors["rng/torch"],
        lr_factor=meta.get("lr_factor", 1.0),
        plateau_best=meta.get("plateau_best", float("inf")),
        plateau_stale=meta.get("plateau_stale", 0),
    )
