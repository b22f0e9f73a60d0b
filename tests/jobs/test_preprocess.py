"""Preprocessing options: missing values, scaling, encodings, per-column overrides, arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jobs.data import DataError, array_values
from jobs.preprocess import Preprocessor, layout_for
from jobs.spec import PreprocessingSpec

NAN = math.nan


def fit(cols: dict[str, np.ndarray], **opts: object) -> Preprocessor:
    kinds = {
        k: ("categorical" if v.dtype == object else "array" if v.ndim > 1 else "numeric")
        for k, v in cols.items()
    }
    return Preprocessor.fit(cols, kinds, PreprocessingSpec.model_validate(opts))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("impute", "fill"), [("mean", 2.5), ("median", 1.5), ("most_frequent", 1.0), ("drop", 1.5)]
)
def test_numeric_fill_is_learnt_from_training_rows(impute: str, fill: float) -> None:
    # "drop" removes rows before fitting; a serving request with a gap still gets the median.
    pre = fit({"x": np.array([1.0, 1.0, 2.0, 6.0, NAN])}, impute=impute, scale="none")
    assert pre.numeric[0].fill == pytest.approx(fill)


def test_constant_fill_and_per_column_overrides() -> None:
    cols = {
        "a": np.array([1.0, NAN, 3.0]),
        "b": np.array([10.0, NAN, 30.0]),
        "c": np.array(["x", None, "x"], dtype=object),
    }
    pre = fit(
        cols,
        impute="constant",
        fill_value=-1,
        scale="minmax",
        columns={"b": {"impute": "mean", "scale": "none"}, "c": {"fill_value": "y"}},
    )
    a, b = pre.numeric
    assert (a.fill, a.center, a.scale) == (-1.0, 1.0, 2.0)
    assert (b.fill, b.center, b.scale) == (20.0, 0.0, 1.0)
    out = pre.transform(cols)
    assert out[1, 0] == pytest.approx((-1 - 1) / 2) and out[1, 1] == 20.0
    assert pre.categorical[0].fill == "y"
    assert out[1, 2:].tolist() == [0.0]  # 'y' was never seen: "none of these"


def test_text_missing_values_fill_with_the_most_frequent_category_when_asked() -> None:
    cols = {"c": np.array(["a", "b", "b", None], dtype=object)}
    assert fit(cols).transform(cols)[3].tolist() == [0.0, 0.0]
    filled = fit(cols, impute="most_frequent")
    assert filled.transform(cols)[3].tolist() == [0.0, 1.0]


def test_ordinal_encoding_spreads_known_categories_and_marks_unseen() -> None:
    cols = {"c": np.array(["lo", "mid", "hi"], dtype=object)}
    pre = fit(cols, categorical="ordinal")
    assert pre.num_features == 1
    new = {"c": np.array(["hi", "lo", "mid", "never", None], dtype=object)}
    assert pre.transform(new)[:, 0].tolist() == [0.0, 0.5, 1.0, -1.0, -1.0]


def test_array_columns_scale_as_a_whole_and_take_the_layout_of_the_model() -> None:
    images = np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4)
    images[0, 0, 0] = NAN
    pre = Preprocessor.fit({"img": images}, {"img": "array"}, PreprocessingSpec(), "image")
    assert pre.example_shape == (1, 3, 4)
    x = pre.transform({"img": images})
    assert x.shape == (2, 1, 3, 4) and x.dtype == np.float32
    assert not np.isnan(x).any()
    assert abs(float(x[1:].mean()) - float(x.mean())) < 1.0  # one centre for every element
    seq = Preprocessor.fit({"s": images[:, 0]}, {"s": "array"}, PreprocessingSpec(), "sequence")
    assert seq.example_shape == (4, 1)
    flat = Preprocessor.fit({"img": images}, {"img": "array"}, PreprocessingSpec(), "flat")
    assert flat.example_shape == (12,)
    again = Preprocessor.from_json(pre.to_json())
    assert np.array_equal(again.transform({"img": images}), x)


def test_a_cnn_needs_one_image_column() -> None:
    cols = {"s": np.zeros((3, 5)), "x": np.zeros(3)}
    kinds = {"s": "array", "x": "numeric"}
    with pytest.raises(DataError, match="exactly one array column"):
        Preprocessor.fit(cols, kinds, PreprocessingSpec(), "image")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="an image is"):
        Preprocessor.fit({"s": np.zeros((3, 5))}, {"s": "array"}, PreprocessingSpec(), "image")
    assert layout_for("cnn", {}) == "image"
    assert layout_for("transformer", {"s": "array"}) == "sequence"
    assert layout_for("transformer", {"x": "numeric"}) == "flat"


def test_array_records_are_validated_by_shape() -> None:
    pre = Preprocessor.fit(
        {"img": np.zeros((2, 2, 2))}, {"img": "array"}, PreprocessingSpec(), "image"
    )
    cols = pre.columns_from_records([{"img": [[1, 2], [3, None]]}, {"img": None}])
    assert cols["img"].shape == (2, 2, 2) and np.isnan(cols["img"][1]).all()
    with pytest.raises(DataError, match=r"instances\[0\].img has shape \[3\]"):
        pre.columns_from_records([{"img": [1, 2, 3]}])
    with pytest.raises(DataError, match="array of numbers"):
        pre.columns_from_records([{"img": [["a", "b"], [1, 2]]}])


def test_ragged_array_columns_are_refused_with_the_row() -> None:
    with pytest.raises(DataError, match="row 2 has shape \\[3\\], row 0 has \\[2\\]"):
        array_values([[1, 2], None, [1, 2, 3]], "s")
    with pytest.raises(DataError, match="uneven lists"):
        array_values([[[1, 2], [3, 4]], [[1, 2], [3]]], "s")
