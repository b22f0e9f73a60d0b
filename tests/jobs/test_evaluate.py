from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from jobs.evaluate import evaluate


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_matches_sklearn(seed: int, n_classes: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, 500)
    p = np.where(rng.random(500) < 0.7, y, rng.integers(0, n_classes, 500))
    if seed == 0:
        p[p == n_classes - 1] = 0  # a class never predicted: zero-division path
    classes = [f"c{i}" for i in range(n_classes)]
    doc = evaluate(y, p, classes, positive=n_classes - 1)
    assert doc["accuracy"] == pytest.approx(skm.accuracy_score(y, p), abs=1e-12)
    labels = list(range(n_classes))
    for avg, key in (
        ("macro", "f1_macro"),
        ("macro", "precision_macro"),
        ("macro", "recall_macro"),
    ):
        fn = {
            "f1_macro": skm.f1_score,
            "precision_macro": skm.precision_score,
            "recall_macro": skm.recall_score,
        }[key]
        assert doc[key] == pytest.approx(
            fn(y, p, average=avg, labels=labels, zero_division=0), abs=1e-12
        )
    per_f1 = skm.f1_score(y, p, average=None, labels=labels, zero_division=0)
    assert [c["f1"] for c in doc["per_class"]] == pytest.approx(per_f1, abs=1e-12)
    assert doc["confusion_matrix"] == skm.confusion_matrix(y, p, labels=labels).tolist()
    assert doc["recall"] == pytest.approx(
        skm.recall_score(y == n_classes - 1, p == n_classes - 1, zero_division=0), abs=1e-12
    )
