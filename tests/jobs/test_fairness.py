from __future__ import annotations

import itertools
import json
import math
import warnings
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    count,
    demographic_parity_difference,
    demographic_parity_ratio,
    equal_opportunity_difference,
    equal_opportunity_ratio,
    equalized_odds_difference,
    equalized_odds_ratio,
    false_negative_rate,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import (
    accuracy_score,
    mean_absolute_error,
    mean_squared_error,
    precision_score,
)

from jobs.fairness import (
    CLASSIFICATION_METRICS,
    REGRESSION_METRICS,
    ClassificationAudit,
    FairnessInputError,
    _poisson_weights,
    audit_classification,
    audit_regression,
    encode_groups,
)

SEP = " \u00d7 "
RATES = CLASSIFICATION_METRICS
FAIRLEARN_DISPARITIES = {
    "demographic_parity": (demographic_parity_difference, demographic_parity_ratio),
    "equalized_odds": (equalized_odds_difference, equalized_odds_ratio),
    "equal_opportunity": (equal_opportunity_difference, equal_opportunity_ratio),
}


def same(a: Any, b: Any, tol: float = 1e-9) -> bool:
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol


def base_rate(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(y_true))


def fairlearn_reference(
    y_true: np.ndarray, y_pred: np.ndarray, sensitive: dict[str, np.ndarray], named: tuple[str, ...]
) -> tuple[dict[str, dict[str, float]], dict[str, float], dict[tuple[str, str, str], float]]:
    """Per-group metrics, overall metrics and disparities as fairlearn/sklearn compute them.

    Disparities come from the MetricFrame's difference()/ratio() (what fairlearn's disparity
    functions call), equalized odds through Python's max/min over TPR and FPR as fairlearn
    does; for the methods in ``named`` fairlearn's public functions are called as well and
    must agree (each call builds its own MetricFrame, so doing it for every method and seed
    would cost most of the test file's time).
    """
    features: Any = sensitive if len(sensitive) > 1 else next(iter(sensitive.values()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = MetricFrame(
            metrics={
                "count": count,
                "base_rate": base_rate,
                "selection_rate": selection_rate,
                "accuracy": accuracy_score,
                "precision": partial(precision_score, zero_division=0),
                "true_positive_rate": true_positive_rate,
                "false_positive_rate": false_positive_rate,
                "false_negative_rate": false_negative_rate,
            },
            y_true=y_true,
            y_pred=y_pred,
            sensitive_features=features,
        )
        groups = {}
        for key, row in frame.by_group.iterrows():
            name = SEP.join(key) if isinstance(key, tuple) else str(key)
            groups[name] = {m: float(v) for m, v in row.items()}
        disparities: dict[tuple[str, str, str], float] = {}
        for method in ("between_groups", "to_overall"):
            for kind, values in (
                ("difference", frame.difference(method=method)),
                ("ratio", frame.ratio(method=method)),
            ):
                pick = max if kind == "difference" else min
                tpr, fpr = values["true_positive_rate"], values["false_positive_rate"]
                disparities[("demographic_parity", method, kind)] = values["selection_rate"]
                disparities[("equalized_odds", method, kind)] = pick([tpr, fpr])
                disparities[("equal_opportunity", method, kind)] = tpr
                disparities[("accuracy", method, kind)] = values["accuracy"]
        for method in named:
            for name, (difference, ratio) in FAIRLEARN_DISPARITIES.items():
                kw = {"sensitive_features": features, "method": method}
                for kind, fn in (("difference", difference), ("ratio", ratio)):
                    assert same(fn(y_true, y_pred, **kw), disparities[(name, method, kind)])
    overall = {m: float(v) for m, v in frame.overall.items()}
    return groups, overall, disparities


def assert_matches_fairlearn(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    sensitive: dict[str, np.ndarray],
    named: tuple[str, ...] = ("between_groups", "to_overall"),
) -> ClassificationAudit:
    audit = audit_classification(
        y_true, y_pred, encode_groups(sensitive, intersect=True), n_resamples=0
    )
    groups, overall, disparities = fairlearn_reference(y_true, y_pred, sensitive, named)
    present = {name: m for name, m in groups.items() if not math.isnan(m["count"])}
    # fairlearn shows empty intersections as all-NaN rows; the engine lists them instead.
    assert set(audit.empty_intersections) == set(groups) - set(present)
    assert {g.name for g in audit.groups} == set(present)
    for g in audit.groups:
        assert set(g.metrics) == set(RATES)
        assert g.count == present[g.name]["count"]
        for m in RATES:
            assert same(g.metrics[m], present[g.name][m]), (g.name, m)
    for m in RATES:
        assert same(audit.overall[m], overall[m]), m
    for (name, method, kind), expected in disparities.items():
        side = audit.disparities[name].between_groups
        if method == "to_overall":
            side = audit.disparities[name].to_overall
        got = side.difference if kind == "difference" else side.ratio
        assert same(got, expected), (name, method, kind, got, expected)
    return audit


def random_case(seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(60, 250))
    n_values = int(rng.integers(6, 11)) if seed % 3 == 0 else int(rng.integers(2, 5))
    a = np.array([f"a{i}" for i in rng.integers(0, n_values, n)], dtype=object)
    rate = rng.uniform(0.05, 0.95, n_values + 3)
    flip = rng.uniform(0.0, 0.5, n_values + 3)
    codes = np.array([int(v[1:]) for v in a])
    y_true = (rng.random(n) < rate[codes]).astype(np.int64)
    y_pred = np.where(rng.random(n) < flip[codes], 1 - y_true, y_true)
    # Planted edge cases: a group of 1-2 rows, one without positives, one without negatives.
    tiny = int(rng.integers(1, 3))
    a = np.concatenate([a, ["tiny"] * tiny, ["no_pos"] * 6, ["no_neg"] * 6])
    y_true = np.concatenate([y_true, rng.integers(0, 2, tiny), np.zeros(6, int), np.ones(6, int)])
    y_pred = np.concatenate([y_pred, rng.integers(0, 2, tiny + 12)])
    sensitive = {"a": a}
    if seed % 3 == 1:
        sensitive["b"] = np.array(["p", "q", "r"], dtype=object)[rng.integers(0, 3, a.shape[0])]
    return y_true, y_pred, sensitive


@pytest.mark.parametrize("seed", range(30))
def test_matches_fairlearn_on_random_data(seed: int) -> None:
    method = ("between_groups", "to_overall")[seed % 2]
    assert_matches_fairlearn(*random_case(seed), named=(method,))


DEGENERATE = {
    # nobody selected: selection rates all 0, so the ratios are 0/0
    "all_negative_predictions": ([0, 1, 0, 1, 1, 0], [0] * 6, list("aaabbb")),
    # perfect predictions: every FPR is 0, the FPR ratio is NaN, and fairlearn's min() keeps TPR's
    "perfect": ([0, 1, 0, 1, 1, 0], [0, 1, 0, 1, 1, 0], list("aaabbb")),
    # no true positive anywhere but false positives: the TPR ratio is NaN and min() returns it
    "no_true_positives": ([1, 0, 0, 1, 0, 0], [0, 1, 0, 0, 1, 1], list("aaabbb")),
    "everyone_selected": ([0, 1, 1, 0, 1, 1], [1] * 6, list("aaabbb")),
}


@pytest.mark.parametrize("case", sorted(DEGENERATE))
def test_matches_fairlearn_on_degenerate_data(case: str) -> None:
    y_true, y_pred, a = DEGENERATE[case]
    audit = assert_matches_fairlearn(
        np.array(y_true), np.array(y_pred), {"a": np.array(a, dtype=object)}
    )
    odds = audit.disparities["equalized_odds"].between_groups
    if case == "perfect":
        assert odds.ratio == 1.0
    if case in ("no_true_positives", "all_negative_predictions"):
        assert math.isnan(odds.ratio or 0.0)


def test_hand_computed_table() -> None:
    # a: TP 1, FN 1, FP 1, TN 2.  b: TP 3, FN 0, FP 1, TN 1.  overall: TP 4, FN 1, FP 2, TN 3.
    y_true = np.array([1, 1, 0, 0, 0, 1, 1, 1, 0, 0])
    y_pred = np.array([1, 0, 1, 0, 0, 1, 1, 1, 1, 0])
    group = np.array(["a"] * 5 + ["b"] * 5)
    audit = audit_classification(
        y_true, y_pred, encode_groups({"g": group}, intersect=False), n_resamples=0
    )
    a, b = audit.groups
    expected_a = {
        "base_rate": 0.4,
        "selection_rate": 0.4,
        "accuracy": 0.6,
        "precision": 0.5,
        "true_positive_rate": 0.5,
        "false_positive_rate": 1 / 3,
        "false_negative_rate": 0.5,
    }
    expected_b = {
        "base_rate": 0.6,
        "selection_rate": 0.8,
        "accuracy": 0.8,
        "precision": 0.75,
        "true_positive_rate": 1.0,
        "false_positive_rate": 0.5,
        "false_negative_rate": 0.0,
    }
    expected_overall = {
        "base_rate": 0.5,
        "selection_rate": 0.6,
        "accuracy": 0.7,
        "precision": 4 / 6,
        "true_positive_rate": 0.8,
        "false_positive_rate": 0.4,
        "false_negative_rate": 0.2,
    }
    assert (a.name, a.count, b.name, b.count) == ("a", 5, "b", 5)
    assert a.metrics == pytest.approx(expected_a, abs=1e-12)
    assert b.metrics == pytest.approx(expected_b, abs=1e-12)
    assert audit.overall == pytest.approx(expected_overall, abs=1e-12)
    expected = {
        # (between-groups difference, ratio, to-overall difference, ratio)
        "demographic_parity": (0.4, 0.5, 0.2, 0.4 / 0.6),
        # TPR: 0.5 vs 1 (overall 0.8); FPR: 1/3 vs 1/2 (overall 0.4)
        "equalized_odds": (0.5, 0.5, 0.3, 0.625),
        "equal_opportunity": (0.5, 0.5, 0.3, 0.625),
        "accuracy": (0.2, 0.75, 0.1, 0.6 / 0.7),
    }
    for name, (bg_d, bg_r, to_d, to_r) in expected.items():
        d = audit.disparities[name]
        bg, to = d.between_groups, d.to_overall
        got = (bg.difference, bg.ratio, to.difference, to.ratio)
        assert got == pytest.approx((bg_d, bg_r, to_d, to_r), abs=1e-12), name


def test_zero_denominators_are_zero_like_fairlearn_and_listed() -> None:
    # group c has neither actual nor predicted positives
    y_true = np.array([1, 0, 1, 0, 0, 0])
    y_pred = np.array([1, 0, 0, 1, 0, 0])
    group = np.array(["a", "a", "b", "b", "c", "c"])
    audit = audit_classification(
        y_true, y_pred, encode_groups({"g": group}, intersect=False), n_resamples=0
    )
    c = audit.groups[2]
    assert c.name == "c"
    assert c.metrics["true_positive_rate"] == 0.0
    assert c.metrics["false_negative_rate"] == 0.0
    assert c.metrics["precision"] == 0.0
    assert c.metrics["accuracy"] == 1.0
    assert c.undefined == ("precision", "true_positive_rate", "false_negative_rate")
    assert audit.groups[0].undefined == ()


def test_missing_values_form_unknown_group() -> None:
    sex = np.array(["f", None, "m", np.nan, "f", pd.NA, "m"], dtype=object)
    groups = encode_groups({"sex": sex}, intersect=False)
    assert groups.names == ("f", "m", "unknown")
    assert groups.codes.tolist() == [0, 2, 1, 2, 0, 2, 1]
    age = encode_groups({"age": np.array([30.0, np.nan, 40.0, 30.0])}, intersect=False)
    assert age.names == ("30.0", "40.0", "unknown")
    assert age.codes.tolist() == [0, 2, 1, 0]
    y = np.array([1, 0, 1, 0, 1, 1, 0])
    audit = audit_classification(y, y, groups, n_resamples=0)
    assert [(g.name, g.count) for g in audit.groups] == [("f", 2), ("m", 2), ("unknown", 3)]


def test_intersections_and_empty_intersections() -> None:
    sex = np.array(["F", "F", "M", "M", None])
    race = np.array(["x", "y", "x", "x", "y"], dtype=object)
    groups = encode_groups({"sex": sex, "race": race}, intersect=True)
    assert groups.names == (f"F{SEP}x", f"F{SEP}y", f"M{SEP}x", f"unknown{SEP}y")
    assert groups.codes.tolist() == [0, 1, 2, 2, 3]
    assert groups.values[3] == ("unknown", "y")
    assert groups.empty_intersections == (f"M{SEP}y", f"unknown{SEP}x")
    assert groups.n_empty_intersections == 2
    y = np.array([1, 0, 1, 0, 1])
    doc = audit_classification(y, y, groups, n_resamples=0).as_dict()
    assert doc["empty_intersections"] == [f"M{SEP}y", f"unknown{SEP}x"]
    assert doc["groups"][3]["values"] == {"sex": "unknown", "race": "y"}
    assert all(g["count"] > 0 for g in doc["groups"])


def test_sparse_intersections_are_counted_and_listed_up_to_a_cap() -> None:
    rng = np.random.default_rng(0)
    features = {f"f{k}": rng.permutation(60) for k in range(3)}
    groups = encode_groups(features, intersect=True)
    assert groups.n_groups == 60
    assert groups.n_empty_intersections == 60**3 - 60
    assert len(groups.empty_intersections) == 10_000
    rows = set(zip(*(features[f].tolist() for f in features), strict=True))
    first = [c for c in itertools.product(range(60), repeat=3) if c not in rows][:5]
    assert groups.empty_intersections[:5] == tuple(SEP.join(map(str, c)) for c in first)
    assert not set(groups.names) & set(groups.empty_intersections)


def test_value_types_and_labels() -> None:
    flags = encode_groups({"flag": np.array([True, False, True])}, intersect=False)
    assert flags.names == ("False", "True")
    ints = encode_groups({"n": np.array([7, -3, 7, 10**12])}, intersect=False)
    assert ints.names == ("-3", "7", str(10**12))
    assert ints.codes.tolist() == [1, 0, 1, 2]
    mixed = encode_groups({"m": np.array([1, "1", (2,), [3], "b"], dtype=object)}, intersect=False)
    # 1 and "1" share a label and so a group; an unhashable list is keyed by its label
    assert mixed.names == ("(2,)", "1", "[3]", "b")
    assert mixed.codes.tolist() == [1, 1, 0, 2, 3]
    many = encode_groups({"s": np.array([f"v{i % 50:02d}" for i in range(200)])}, False)
    assert many.n_groups == 50 and many.names[0] == "v00"


def test_small_groups_flagged_and_excluded() -> None:
    y_true, y_pred, sensitive = random_case(3)
    groups = encode_groups(sensitive, intersect=True)
    sizes = np.bincount(groups.codes)
    included = audit_classification(y_true, y_pred, groups, min_group_size=20, n_resamples=0)
    excluded = audit_classification(
        y_true, y_pred, groups, min_group_size=20, small_groups="exclude", n_resamples=0
    )
    small = {name for name, size in zip(groups.names, sizes, strict=True) if size < 20}
    assert "tiny" in small and "no_pos" in small
    assert set(included.small_groups.flagged) == small == set(excluded.small_groups.flagged)
    assert included.small_groups.policy == "include"
    assert all(g.in_disparities for g in included.groups)
    assert {g.name for g in excluded.groups if not g.in_disparities} == small
    # Between groups, leaving the small groups out is fairlearn on the remaining rows.
    keep = ~np.isin(sensitive["a"], sorted(small))
    kept = {"a": sensitive["a"][keep]}
    for name, (difference, ratio) in FAIRLEARN_DISPARITIES.items():
        d = excluded.disparities[name].between_groups
        assert same(d.difference, difference(y_true[keep], y_pred[keep], sensitive_features=kept))
        assert same(d.ratio, ratio(y_true[keep], y_pred[keep], sensitive_features=kept))
    # The overall reference still counts every row.
    assert excluded.overall == included.overall


def test_document_is_json_with_nan_as_null() -> None:
    y_true, y_pred = np.array([0, 1, 0, 1]), np.zeros(4, dtype=int)
    groups = encode_groups({"g": np.array(["a", "a", "b", "b"])}, intersect=False)
    audit = audit_classification(y_true, y_pred, groups, n_resamples=20, seed=1)
    doc = json.loads(audit.to_json())
    dp = doc["disparities"]["demographic_parity"]["between_groups"]
    assert dp["difference"] == 0.0 and dp["ratio"] is None
    assert doc["kind"] == "classification"
    assert doc["bootstrap"]["n_resamples"] == 20
    assert doc["groups"][0]["intervals"]["selection_rate"] == {"low": 0.0, "high": 0.0}
    assert "between_groups" in doc["method"] and "to_overall" in doc["method"]
    assert audit.as_dict() == doc


def test_bootstrap_is_seeded_and_covers_every_metric() -> None:
    y_true, y_pred, sensitive = random_case(7)
    groups = encode_groups(sensitive, intersect=True)
    one = audit_classification(y_true, y_pred, groups, n_resamples=50, seed=3)
    two = audit_classification(y_true, y_pred, groups, n_resamples=50, seed=3)
    other = audit_classification(y_true, y_pred, groups, n_resamples=50, seed=4)
    assert one.to_json() == two.to_json() != other.to_json()
    for g in one.groups:
        assert set(g.intervals) == set(RATES)
        for iv in g.intervals.values():
            assert iv.low <= iv.high
    for d in one.disparities.values():
        for side in (d.between_groups, d.to_overall):
            assert side.difference_interval is not None and side.ratio_interval is not None
    assert set(one.overall_intervals) == set(RATES)
    none = audit_classification(y_true, y_pred, groups, n_resamples=0)
    assert none.bootstrap is None and none.groups[0].intervals == {}
    assert none.disparities["accuracy"].between_groups.difference_interval is None


def test_multinomial_draw_matches_row_resampling() -> None:
    rng = np.random.default_rng(11)
    n = 1000
    group = rng.integers(0, 2, n)
    y_pred = (rng.random(n) < np.where(group == 0, 0.3, 0.2)).astype(int)
    y_true = rng.integers(0, 2, n)
    groups = encode_groups({"g": group}, intersect=False)
    audit = audit_classification(y_true, y_pred, groups, n_resamples=4000, seed=0)
    rows = rng.integers(0, n, (4000, n))
    counts = np.stack([np.bincount(group[r] * 2 + y_pred[r], minlength=4) for r in rows])
    rates = counts[:, [1, 3]] / (counts[:, [0, 2]] + counts[:, [1, 3]])
    explicit = np.quantile(rates.max(1) - rates.min(1), [0.025, 0.975])
    iv = audit.disparities["demographic_parity"].between_groups.difference_interval
    assert iv is not None
    assert (iv.low, iv.high) == pytest.approx(tuple(explicit), abs=0.006)


def test_interval_coverage_of_known_demographic_parity_difference() -> None:
    rng = np.random.default_rng(2024)
    n, repeats, covered = 4000, 100, 0
    for rep in range(repeats):
        group = rng.integers(0, 2, n)
        y_pred = (rng.random(n) < np.where(group == 0, 0.30, 0.20)).astype(np.int64)
        y_true = rng.integers(0, 2, n)
        audit = audit_classification(
            y_true, y_pred, encode_groups({"g": group}, False), n_resamples=200, seed=rep
        )
        iv = audit.disparities["demographic_parity"].between_groups.difference_interval
        assert iv is not None
        covered += iv.low <= 0.10 <= iv.high
    assert 0.88 <= covered / repeats <= 0.99


ONE = {"g": np.array(["a", "b", "a", "b"])}
BAD_CLASSIFICATION = [
    ([0, 1, 2, 0], [0, 1, 1, 0], ONE, "y_true must be binary.*2"),
    ([0, 1, 1, 0], [0, -1, 1, 0], ONE, "y_pred must be binary.*-1"),
    ([0, 1, np.nan, 0], [0, 1, 1, 0], ONE, "y_true contains NaN"),
    ([0, 1, 1, 0], [0, 0.5, 1, 0], ONE, "y_pred must be binary.*0.5"),
    (["yes", "no", "no", "yes"], [0, 1, 1, 0], ONE, "y_true must be binary.*yes"),
    ([0, 1, 1], [0, 1, 1, 0], ONE, "y_true has 3 rows but y_pred has 4"),
    ([0, 1, 1], [0, 1, 1], ONE, "sensitive features have 4 rows but y_true and y_pred 3"),
    ([[0, 1], [1, 0]], [[0, 1], [1, 0]], ONE, "one-dimensional"),
]


@pytest.mark.parametrize(("y_true", "y_pred", "sensitive", "message"), BAD_CLASSIFICATION)
def test_bad_classification_input(
    y_true: Any, y_pred: Any, sensitive: dict[str, np.ndarray], message: str
) -> None:
    groups = encode_groups(sensitive, intersect=True)
    with pytest.raises(FairnessInputError, match=message):
        audit_classification(np.array(y_true), np.array(y_pred), groups)


BAD_GROUPS = [
    ({"g": np.array([], dtype=object)}, True, "'g' is empty"),
    ({"g": np.array([], dtype=np.int64)}, True, "'g' is empty"),
    ({"g": np.array(["a", "a", "a"])}, True, "'g' has a single group \\('a'\\)"),
    ({"g": np.array([None, np.nan, None], dtype=object)}, True, "'g': every row is missing"),
    ({"g": np.array([np.nan, np.nan])}, True, "'g': every row is missing"),
    ({"g": np.array(["a", "b"]), "h": np.array(["x", "y", "x"])}, True, "differ in length"),
    ({"g": np.array(["a", "b"]), "h": np.array(["x", "y"])}, False, "intersect=False"),
    ({}, True, "no sensitive features"),
    ({"g": np.array([["a", "b"]])}, True, "one-dimensional"),
]


@pytest.mark.parametrize(("features", "intersect", "message"), BAD_GROUPS)
def test_bad_sensitive_features(features: dict[str, Any], intersect: bool, message: str) -> None:
    with pytest.raises(FairnessInputError, match=message):
        encode_groups(features, intersect)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"small_groups": "drop"}, "small_groups must be"),
        ({"confidence": 1.5}, "confidence must lie"),
        ({"n_resamples": -1}, "n_resamples must be"),
        ({"min_group_size": -2}, "min_group_size must be"),
    ],
)
def test_bad_options(options: dict[str, Any], message: str) -> None:
    groups = encode_groups(ONE, intersect=False)
    y = np.array([0, 1, 1, 0])
    with pytest.raises(FairnessInputError, match=message):
        audit_classification(y, y, groups, **options)
    with pytest.raises(FairnessInputError, match=message):
        audit_regression(y.astype(float), y.astype(float), groups, **options)


def test_empty_predictions_rejected() -> None:
    groups = encode_groups(ONE, intersect=False)
    empty = np.array([], dtype=np.int64)
    with pytest.raises(FairnessInputError, match="empty"):
        audit_classification(empty, empty, groups)
    with pytest.raises(FairnessInputError, match="empty"):
        audit_regression(empty, empty, groups)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "message"),
    [
        ([0.1, 0.2, np.nan, 0.4], [0.1, 0.2, 0.3, 0.4], "y_true contains NaN"),
        ([0.1, 0.2, 0.3, 0.4], [0.1, np.inf, 0.3, 0.4], "y_pred contains NaN or infinite"),
        (["a", "b", "c", "d"], [0.1, 0.2, 0.3, 0.4], "y_true must hold numbers"),
        ([0.1, 0.2, 0.3], [0.1, 0.2, 0.3, 0.4], "y_true has 3 rows but y_pred has 4"),
    ],
)
def test_bad_regression_input(y_true: Any, y_pred: Any, message: str) -> None:
    with pytest.raises(FairnessInputError, match=message):
        audit_regression(np.array(y_true), np.array(y_pred), encode_groups(ONE, False))


@pytest.mark.parametrize("seed", range(5))
def test_regression_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 500
    sex = np.array(["f", "m"])[rng.integers(0, 2, n)]
    race = np.array(["x", "y", "z"], dtype=object)[rng.integers(0, 3, n)]
    race[:3] = None
    y_true = rng.normal(10, 3, n)
    y_pred = y_true + rng.normal(0.5, 1 + (sex == "m"), n)
    groups = encode_groups({"sex": sex, "race": race}, intersect=True)
    audit = audit_regression(y_true, y_pred, groups, n_resamples=0)
    mae = {}
    for g, name in enumerate(groups.names):
        rows = groups.codes == g
        t, p = y_true[rows], y_pred[rows]
        got = audit.groups[g]
        assert got.name == name and got.count == rows.sum()
        assert got.metrics["mae"] == pytest.approx(mean_absolute_error(t, p), abs=1e-9)
        assert got.metrics["rmse"] == pytest.approx(np.sqrt(mean_squared_error(t, p)), abs=1e-9)
        assert got.metrics["mean_prediction"] == pytest.approx(p.mean(), abs=1e-9)
        assert got.metrics["mean_target"] == pytest.approx(t.mean(), abs=1e-9)
        mae[name] = mean_absolute_error(t, p)
    overall_mae = mean_absolute_error(y_true, y_pred)
    assert audit.overall["mae"] == pytest.approx(overall_mae, abs=1e-9)
    d = audit.disparities["mae"]
    assert d.between_groups.difference == pytest.approx(
        max(mae.values()) - min(mae.values()), abs=1e-9
    )
    assert d.to_overall.difference == pytest.approx(
        max(abs(v - overall_mae) for v in mae.values()), abs=1e-9
    )
    assert d.between_groups.ratio is None
    means = [y_pred[groups.codes == g].mean() for g in range(groups.n_groups)]
    spread = audit.disparities["mean_prediction"].between_groups.difference
    assert spread == pytest.approx(max(means) - min(means), abs=1e-9)


def test_regression_poisson_bootstrap() -> None:
    rng = np.random.default_rng(5)
    n = 3000
    group = rng.integers(0, 3, n)
    y_true = rng.normal(0, 1, n)
    y_pred = y_true + rng.normal(0, 1 + group, n)
    groups = encode_groups({"g": group}, intersect=False)
    audit = audit_regression(y_true, y_pred, groups, n_resamples=300, seed=9)
    again = audit_regression(y_true, y_pred, groups, n_resamples=300, seed=9)
    assert audit.to_json() == again.to_json()
    for g in audit.groups:
        assert set(g.metrics) == set(g.intervals) == set(REGRESSION_METRICS)
        for m, iv in g.intervals.items():
            assert iv.low < g.metrics[m] < iv.high, (g.name, m)
        # the standard error of an MAE over ~1000 rows is a few percent of it
        width = g.intervals["mae"].high - g.intervals["mae"].low
        assert 0.03 < width / g.metrics["mae"] < 0.2
    spread = audit.disparities["mae"].between_groups
    assert spread.difference_interval is not None
    assert spread.difference_interval.low < spread.difference < spread.difference_interval.high
    doc = json.loads(audit.to_json())
    assert doc["kind"] == "regression" and "Poisson" in doc["bootstrap"]["method"]


def test_poissonized_weights_are_poisson_one() -> None:
    weights = _poisson_weights(np.random.default_rng(0), (50, 20_000))
    assert weights.shape == (50, 20_000)
    assert weights.mean() == pytest.approx(1.0, abs=0.005)
    assert weights.var() == pytest.approx(1.0, abs=0.01)
    # P(0) = P(1) = 1/e for Poisson(1)
    assert np.mean(weights == 0) == pytest.approx(math.exp(-1), abs=0.003)
    assert np.mean(weights == 1) == pytest.approx(math.exp(-1), abs=0.003)
