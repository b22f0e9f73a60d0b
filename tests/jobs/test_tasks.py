"""Tasks: inference from the target, target encodings, losses, validation metrics, splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from jobs.data import DataError, split_indices
from jobs.spec import TrainingSpec
from jobs.tasks import Objective, encode_target, infer_task, roc_auc


def obj(*values: object) -> np.ndarray:
    return np.array(values, dtype=object)


@pytest.mark.parametrize(
    ("values", "task"),
    [
        (obj("a", "b", None), "classification"),
        (obj(0, 1, 1, 0), "classification"),
        (obj(True, False), "classification"),
        (obj(*range(10)), "classification"),
        (obj(*range(25)), "regression"),
        (obj(1.0, 2.5, 3.0), "regression"),
        (obj(1.0, 2.0, None), "classification"),
        (obj(*range(25), "x"), "classification"),  # any value not a number: labels
        (obj(0.5, True, 1.5), "classification"),
    ],
)
def test_the_task_is_inferred_from_the_target(values: np.ndarray, task: str) -> None:
    assert infer_task(values) == task


def test_regression_targets_are_standardised_and_decoded_back() -> None:
    t = encode_target(obj(10.0, 20.0, 30.0), "regression", None, "y")
    assert t.codes.mean() == pytest.approx(0) and t.codes.std() == pytest.approx(1)
    assert t.decode(t.codes).tolist() == pytest.approx([10.0, 20.0, 30.0])
    with pytest.raises(DataError, match="not numeric"):
        encode_target(obj("a", "b"), "regression", None, "y")


def test_anomaly_targets_put_the_anomaly_value_second() -> None:
    t = encode_target(obj(1, 0, 0), "anomaly_detection", None, "a")
    assert (t.classes, t.codes.tolist(), t.positive) == ([0, 1], [1, 0, 0], 1)
    named = encode_target(obj("ok", "bad", "ok"), "anomaly_detection", "bad", "a")
    assert named.classes == ["ok", "bad"] and named.codes.tolist() == [0, 1, 0]
    with pytest.raises(DataError, match="two values"):
        encode_target(obj(0, 1, 2), "anomaly_detection", None, "a")


def test_classification_targets_check_classes_and_positive_label() -> None:
    with pytest.raises(DataError, match="single class"):
        encode_target(obj("a", "a"), "classification", None, "y")
    with pytest.raises(DataError, match="positive_label 'z'"):
        encode_target(obj("a", "b"), "classification", "z", "y")
    assert encode_target(obj("a", "b"), "classification", "a", "y").positive == 0


def test_balanced_class_weights_follow_sklearn() -> None:
    codes = np.array([0] * 90 + [1] * 10)
    t = encode_target(np.array(["n"] * 90 + ["y"] * 10, dtype=object), "classification", None, "y")
    o = Objective.for_task(
        "classification", TrainingSpec(class_weights="balanced"), t, codes, input_size=3
    )
    assert o.class_weights == pytest.approx((100 / 180, 100 / 20))
    named = Objective.for_task(
        "classification", TrainingSpec(class_weights={"y": 4.0}), t, codes, input_size=3
    )
    assert named.class_weights == (1.0, 4.0)
    with pytest.raises(DataError, match="not classes"):
        Objective.for_task(
            "classification", TrainingSpec(class_weights={"maybe": 2.0}), t, codes, 3
        )
    # A weighted loss counts the rare class more: a wrong minority prediction costs more.
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0]])  # both predicted as class 0
    truth = torch.tensor([0, 1])
    assert float(named.batch_loss(logits, truth, logits)) > float(
        Objective("classification", 2).batch_loss(logits, truth, logits)
    )


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(labels * 0.7, 1.0), 1)  # rounding makes ties
    assert roc_auc(scores, labels) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    assert np.isnan(roc_auc(scores, np.zeros(300, dtype=np.int64)))


def test_regression_validation_metrics_are_in_the_targets_units() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=50).astype(np.float32)
    pred = y + rng.normal(0, 0.3, 50).astype(np.float32)
    o = Objective("regression", 1, "mse", None, target_scale=10.0)
    m = o.validation(torch.from_numpy(pred).reshape(-1, 1), y, torch.zeros(50, 2))
    assert m["val_mae"] == pytest.approx(skm.mean_absolute_error(y * 10, pred * 10), rel=1e-5)
    assert m["val_rmse"] == pytest.approx(
        np.sqrt(skm.mean_squared_error(y * 10, pred * 10)), rel=1e-5
    )
    assert m["val_r2"] == pytest.approx(skm.r2_score(y, pred), rel=1e-5)


def test_anomaly_validation_scores_reconstruction_error() -> None:
    x = torch.zeros(4, 3)
    recon = torch.tensor([[0.0] * 3, [0.1] * 3, [1.0] * 3, [2.0] * 3])
    m = Objective("anomaly_detection", 3, "mse").validation(recon, np.array([0, 0, 1, 1]), x)
    assert m["val_auc"] == 1.0
    assert m["val_loss"] == pytest.approx(0.005)


def test_group_split_never_shares_a_group() -> None:
    groups = np.repeat(np.arange(50), 4)
    s = split_indices(200, 0.2, 0.2, seed=1, groups=groups)
    seen = [set(groups[p].tolist()) for p in (s.train, s.validation, s.test)]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert sorted(np.concatenate([s.train, s.validation, s.test]).tolist()) == list(range(200))
    assert len(s.test) == pytest.approx(40, abs=4)


def test_time_split_trains_on_the_past() -> None:
    t = np.random.default_rng(0).permutation(100).astype(float)
    s = split_indices(100, 0.1, 0.2, seed=0, order_by=t)
    assert t[s.train].max() < t[s.validation].min() <= t[s.validation].max() < t[s.test].min()
    assert (len(s.train), len(s.validation), len(s.test)) == (70, 10, 20)
