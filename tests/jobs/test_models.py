from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from jobs.models import INPUT_RANKS, LAYER_GROUPS, build_model, freeze
from jobs.spec import AutoencoderSpec, CNNSpec, MLPSpec, RNNSpec, TransformerSpec

MLP = MLPSpec(hidden_sizes=[16, 8], norm="batch", dropout=0.1)
CNN = CNNSpec(architecture="cnn", channels=[4, 8])
LSTM = RNNSpec(architecture="lstm", hidden_size=8, num_layers=2, bidirectional=True, dropout=0.1)
GRU = RNNSpec(architecture="gru", hidden_size=8)
TRANSFORMER = TransformerSpec(
    architecture="transformer", d_model=8, num_heads=2, num_layers=1, dim_feedforward=16
)
AUTOENCODER = AutoencoderSpec(architecture="autoencoder", encoder_sizes=[8], bottleneck=2)

# Each architecture with input shapes it must accept.
CASES: list[tuple[Any, list[tuple[int, ...]]]] = [
    (MLP, [(5,), (2, 3, 4)]),
    (MLPSpec(hidden_sizes=[4], norm="layer"), [(3,), (6, 2)]),
    (CNN, [(1, 8, 8), (3, 5, 7), (2, 1, 9)]),
    (LSTM, [(6, 1), (4, 3)]),
    (GRU, [(6, 1), (1, 2)]),
    (TRANSFORMER, [(5,), (6, 3)]),
    (AUTOENCODER, [(6,), (2, 3)]),
]
SHAPE_CASES = [(spec, shape) for spec, shapes in CASES for shape in shapes]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    # Models this small run faster on one thread than on threads fighting for a busy CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def case_id(value: Any) -> str:
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    return str(value.architecture)


def first_shape(spec: Any) -> tuple[int, ...]:
    return next(shapes[0] for s, shapes in CASES if s is spec)


def out_width(spec: Any, shape: tuple[int, ...], out_features: int) -> int:
    return int(torch.tensor(shape).prod()) if spec.architecture == "autoencoder" else out_features


@pytest.mark.parametrize(("spec", "shape"), SHAPE_CASES, ids=case_id)
def test_output_shape(spec: Any, shape: tuple[int, ...]) -> None:
    model = build_model(spec, shape, 3)
    out = model(torch.randn(4, *shape))
    assert out.shape == (4, out_width(spec, shape, 3))
    assert len(shape) in INPUT_RANKS[spec.architecture]


@pytest.mark.parametrize("spec", [spec for spec, _ in CASES], ids=case_id)
def test_same_seed_same_weights_and_a_body_and_head(spec: Any) -> None:
    shape = first_shape(spec)

    def weights(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return build_model(spec, shape, 2).state_dict()

    first, again, other = weights(0), weights(0), weights(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
    model = build_model(spec, shape, 2)
    assert {name for name, _ in model.named_children()} == set(LAYER_GROUPS)
    if spec.architecture != "autoencoder":
        assert isinstance(model.head, nn.Linear) and model.head.out_features == 2


def test_state_dict_keys_are_pinned() -> None:
    # Bundles store weights under these names; renaming a submodule breaks every saved bundle.
    keys = {
        arch: list(build_model(spec, shape, 2).state_dict())
        for arch, spec, shape in [
            ("mlp", MLPSpec(hidden_sizes=[4], norm="batch"), (3,)),
            ("cnn", CNNSpec(architecture="cnn", channels=[4]), (1, 4, 4)),
            ("gru", RNNSpec(architecture="gru", hidden_size=4), (5, 2)),
            ("transformer", TRANSFORMER, (6, 3)),
            ("autoencoder", AUTOENCODER, (6,)),
        ]
    }
    batch_norm = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    head = ["head.weight", "head.bias"]
    assert keys["mlp"] == [
        "body.0.weight",
        "body.0.bias",
        *(f"body.1.{k}" for k in batch_norm),
        *head,
    ]
    assert keys["cnn"] == ["body.0.weight", *(f"body.1.{k}" for k in batch_norm), *head]
    rnn = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    assert keys["gru"] == [*(f"body.rnn.{k}" for k in rnn), *head]
    layer = "body.encoder.layers.0."
    assert keys["transformer"][:4] == [
        "body.position",
        "body.embed.weight",
        "body.embed.bias",
        layer + "self_attn.in_proj_weight",
    ]
    assert keys["transformer"][-4:] == [layer + "norm2.weight", layer + "norm2.bias", *head]
    assert keys["autoencoder"] == [
        f"{half}.{i}.{p}" for half in ("body", "head") for i in (0, 2) for p in ("weight", "bias")
    ]


def sign_of_mean_sequences(n: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.randint(0, 2, (n,))
    x = torch.randn(n, steps, 1) + (y.float() * 2 - 1)[:, None, None] * 0.7
    return x, (x.mean(dim=(1, 2)) > 0).long()


def half_bright_images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.randint(0, 2, (n,))
    x = torch.randn(n, 1, 8, 8) * 0.3
    left = y == 0
    x[left, :, :, :4] += 1.0
    x[~left, :, :, 4:] += 1.0
    return x, y


def first_feature_positive(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 4)
    return x, (x[:, 0] > 0).long()


def low_rank_rows(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(n, 2) @ torch.randn(2, 6)
    return x, x


Problem = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


@pytest.mark.parametrize(
    ("spec", "problem", "loss_fn"),
    [
        (MLPSpec(hidden_sizes=[16]), first_feature_positive, nn.functional.cross_entropy),
        (CNN, half_bright_images, nn.functional.cross_entropy),
        (GRU, lambda n: sign_of_mean_sequences(n, 8), nn.functional.cross_entropy),
        (LSTM, lambda n: sign_of_mean_sequences(n, 8), nn.functional.cross_entropy),
        (TRANSFORMER, lambda n: sign_of_mean_sequences(n, 8), nn.functional.cross_entropy),
        (TRANSFORMER, first_feature_positive, nn.functional.cross_entropy),
        (AUTOENCODER, low_rank_rows, nn.functional.mse_loss),
    ],
    ids=["mlp", "cnn", "gru", "lstm", "transformer-sequence", "transformer-table", "autoencoder"],
)
def test_a_few_adam_steps_learn_a_separable_problem(
    spec: Any, problem: Problem, loss_fn: Callable[..., torch.Tensor]
) -> None:
    torch.manual_seed(0)
    x, y = problem(128)
    model = build_model(spec, tuple(x.shape[1:]), 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize(
    ("spec", "shape", "message"),
    [
        (CNN, (14,), r"cnn needs image input \(C, H, W\); this dataset gives \(14,\)"),
        (CNN, (8, 8), r"cnn needs image input \(C, H, W\); this dataset gives \(8, 8\)"),
        (LSTM, (14,), r"lstm needs sequence input \(T, F\); this dataset gives \(14,\)"),
        (GRU, (1, 8, 8), r"gru needs sequence input \(T, F\); this dataset gives \(1, 8, 8\)"),
        (
            TRANSFORMER,
            (1, 8, 8),
            r"transformer needs table input \(F,\) or sequence input \(T, F\); "
            r"this dataset gives \(1, 8, 8\)",
        ),
        (MLP, (), r"mlp needs table, sequence or image input; this dataset gives \(\)"),
        (AUTOENCODER, (4, 0), r"autoencoder cannot take an empty input"),
    ],
    ids=lambda v: None if isinstance(v, str) else case_id(v),
)
def test_a_shape_the_architecture_cannot_take_is_a_clear_error(
    spec: Any, shape: tuple[int, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(spec, shape, 2)


def test_an_int_is_a_table_width_and_zero_outputs_is_an_error() -> None:
    assert build_model(MLP, 5, 2)(torch.randn(3, 5)).shape == (3, 2)
    with pytest.raises(ValueError, match="at least one output"):
        build_model(MLP, (5,), 0)


@pytest.mark.parametrize("spec", [spec for spec, _ in CASES], ids=case_id)
@pytest.mark.parametrize("group", LAYER_GROUPS)
def test_freeze_keeps_the_group_fixed(spec: Any, group: str) -> None:
    shape = first_shape(spec)
    model = build_model(spec, shape, 2)
    freeze(model, [group])
    before = {k: v.clone() for k, v in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(8, *shape)).square().mean().backward()
    optimizer.step()
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) == name.startswith(group + "."), name


def test_freeze_rejects_an_unknown_group_and_changes_nothing() -> None:
    model = build_model(MLP, (5,), 2)
    with pytest.raises(
        ValueError, match=r"unknown layer group 'encoder'; valid groups: body, head"
    ):
        freeze(model, ["head", "encoder"])
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(("spec", "shape"), SHAPE_CASES, ids=case_id)
def test_safetensors_round_trip_rebuilds_the_same_outputs(
    spec: Any, shape: tuple[int, ...], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = build_model(spec, shape, 3)
    model(torch.randn(8, *shape))  # moves BatchNorm running statistics off their defaults
    model.eval()
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    torch.manual_seed(1)
    rebuilt = build_model(spec, shape, 3)
    rebuilt.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    rebuilt.eval()
    x = torch.randn(5, *shape)
    with torch.no_grad():
        assert torch.equal(model(x), rebuilt(x))


def test_an_mlp_saved_before_the_body_head_split_still_loads() -> None:
    spec = MLPSpec(hidden_sizes=[8, 4], dropout=0.1)
    # The layout earlier bundles were saved from: one flat Sequential.
    legacy = nn.Sequential(
        nn.Linear(5, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 4), nn.ReLU(), nn.Dropout(0.1),
        nn.Linear(4, 2),
    ).eval()  # fmt: skip
    model = build_model(spec, 5, 2).eval()
    model.load_state_dict(legacy.state_dict())
    x = torch.randn(3, 5)
    with torch.no_grad():
        assert torch.equal(model(x), legacy(x))
