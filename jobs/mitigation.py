"""Post-processing mitigation: group-specific thresholds on a model's scores.

fairlearn's ThresholdOptimizer picks, per group, the (possibly randomised) threshold on the
score that maximises an objective (accuracy by default) under a fairness constraint such as
demographic parity. It is fitted on one split (validation) and applied to another (test), so
the mitigated candidate is audited on rows it was not tuned on.

Only scores and groups are needed, never the model: the scores stand in as the input of a
"model" that returns them, so this works for any classifier that gives a probability for the
favourable class. Applying the thresholds needs each row's group, so a mitigated model needs
the sensitive feature at prediction time.

The job driver fits them when the spec asks (``audit.mitigation``); the serving bundle of the
mitigated candidate carries them as plain JSON (:func:`thresholds_json`), never as a pickled
fairlearn object, and :func:`positive_probability` applies that JSON exactly as fairlearn would.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

Constraint = Literal[
    "demographic_parity",
    "equalized_odds",
    "true_positive_rate_parity",
    "false_positive_rate_parity",
]


class _ScoreIsInput(ClassifierMixin, BaseEstimator):
    """A prefit classifier whose single input column is already P(favourable)."""

    def __init__(self) -> None:
        self.classes_ = np.array([0, 1])

    def fit(self, x: Any, y: Any) -> _ScoreIsInput:
        return self

    def predict_proba(self, x: Any) -> np.ndarray:
        s = np.asarray(x, dtype=np.float64)[:, 0]
        return np.column_stack([1.0 - s, s])

    def predict(self, x: Any) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64)[:, 0] >= 0.5).astype(np.int64)


def _groups(values: Any) -> np.ndarray:
    # Missing values get their own group here too: the thresholds must cover every row.
    return np.array(
        ["unknown" if v is None or v != v else str(v) for v in np.asarray(values).tolist()],
        dtype=object,
    )


def _scores(scores: Any) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or not np.isfinite(s).all() or s.min() < 0 or s.max() > 1:
        raise ValueError("scores must be one probability in [0, 1] per row")
    return s


def fit_group_thresholds(
    scores: Any,
    y_true: Any,
    groups: Any,
    *,
    constraint: Constraint = "demographic_parity",
    objective: Literal["accuracy_score", "balanced_accuracy_score"] = "accuracy_score",
) -> Any:
    """Fit per-group thresholds on (validation) scores, 0/1 labels and group values."""
    from fairlearn.postprocessing import ThresholdOptimizer

    s = _scores(scores)
    optimizer = ThresholdOptimizer(
        estimator=_ScoreIsInput(),
        constraints=constraint,
        objective=objective,
        prefit=True,
        predict_method="predict_proba",
    )
    optimizer.fit(
        s[:, None], np.asarray(y_true, dtype=np.int64), sensitive_features=_groups(groups)
    )
    return optimizer


def apply_group_thresholds(optimizer: Any, scores: Any, groups: Any, seed: int = 0) -> np.ndarray:
    """0/1 predictions for (test) rows; seeded, since thresholds between two points randomise."""
    s = _scores(scores)
    out = optimizer.predict(s[:, None], sensitive_features=_groups(groups), random_state=seed)
    return np.asarray(out, dtype=np.int8)


def thresholds_json(optimizer: Any) -> dict[str, dict[str, Any]]:
    """The fitted thresholds as JSON: per group, fairlearn's two threshold operations and the
    probabilities of applying each (their mix is the chance of a favourable decision)."""
    out: dict[str, dict[str, Any]] = {}
    for group, d in optimizer.interpolated_thresholder_.interpolation_dict.items():
        out[str(group)] = {
            "p0": float(d["p0"]),
            "operator0": d["operation0"]._operator,
            "threshold0": float(d["operation0"]._threshold),
            "p1": float(d["p1"]),
            "operator1": d["operation1"]._operator,
            "threshold1": float(d["operation1"]._threshold),
        }
    return out


def positive_probability(
    thresholds: dict[str, dict[str, Any]], scores: Any, groups: Any
) -> np.ndarray:
    """The chance of a favourable decision for each row; a group the thresholds do not know
    is a ValueError naming it."""
    s = _scores(scores)
    g = _groups(groups)
    out = np.zeros(s.shape[0])
    for name in np.unique(g).tolist():
        if name not in thresholds:
            raise ValueError(f"group '{name}' was not seen when the thresholds were fitted")
        t = thresholds[name]
        rows = g == name
        for k in ("0", "1"):
            fires = (
                s[rows] > t[f"threshold{k}"]
                if t[f"operator{k}"] == ">"
                else (s[rows] < t[f"threshold{k}"])
            )
            out[rows] += t[f"p{k}"] * fires
    return out


def apply_decisions(chance: np.ndarray, seed: int) -> np.ndarray:
    """Favourable or not per row, drawn with each row's chance (seeded, so reproducible)."""
    return np.random.default_rng(seed).random(chance.shape[0]) < chance
