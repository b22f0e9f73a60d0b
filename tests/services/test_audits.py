"""POST /v1/audits on SQLite and PostgreSQL: predictions users bring, audited and stored."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from fairlearn.metrics import demographic_parity_ratio, equalized_odds_difference

from tests.services.conftest import Client

SEP = " \u00d7 "
N = 600


def predictions() -> pa.Table:
    """A model that favours men, with text labels, scores, gaps and awkward columns."""
    rng = np.random.default_rng(5)
    sex = rng.choice(["Female", "Male"], N, p=[0.4, 0.6]).astype(object)
    race = rng.choice(["A", "B"], N, p=[0.7, 0.3]).astype(object)
    sex[:12] = None  # missing: the explicit "unknown" group
    score = np.clip(rng.normal(np.where(sex == "Male", 0.55, 0.35), 0.2), 0, 1)
    truth = np.where(rng.random(N) < 0.35, ">50K", "<=50K")
    pred = np.where(score > 0.5, ">50K", "<=50K")
    multi = rng.integers(0, 3, N)
    with_nan = np.where(rng.random(N) < 0.01, np.nan, 1.0)
    return pa.table(
        {
            "income": truth,
            "predicted": pred,
            "score": score,
            "sex": pa.array(sex.tolist(), pa.string()),
            "race": race.tolist(),
            "pred_multi": multi,
            "pred_nan": with_nan,
            "pred_float": np.where(pred == ">50K", 1.0, 0.0),
            "truth01": (truth == ">50K").astype(np.int64),
            "country": ["US"] * N,
            "nobody": pa.array([None] * N, pa.string()),
        }
    )


def body(dataset_id: str, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "dataset_id": dataset_id,
        "label_column": "income",
        "prediction_column": "predicted",
        "sensitive_features": ["sex", "race"],
    }
    base.update(over)
    return base


def test_audit_of_uploaded_predictions(client: Client) -> None:
    table = predictions()
    ds = client.upload("preds", table)
    r = client.post(
        "/v1/audits",
        json=body(
            ds,
            name="vendor-model",
            score_column="score",
            positive_label=">50K",
            gate=[{"metric": "demographic_parity_ratio", "threshold": 0.8}],
            bootstrap={"resamples": 100, "seed": 3},
        ),
    )
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["id"].startswith("aud_") and doc["name"] == "vendor-model"
    assert doc["source"]["dataset_id"] == ds and len(doc["source"]["dataset_sha256"]) == 64
    assert doc["version"] == 2 and doc["num_rows"] == N and doc["positive_label"] == ">50K"
    assert list(doc["features"]) == ["sex", "race", f"sex{SEP}race"]
    sex = doc["features"]["sex"]
    assert {g["group"] for g in sex["groups"]} == {"Female", "Male", "unknown"}
    assert sex["unknown_rows"] == 12 and "unknown" in sex["small_groups"]

    # The numbers agree with fairlearn on the groups the checks judge (small ones skipped).
    y = (np.asarray(table["income"]) == ">50K").astype(int)
    p = (np.asarray(table["predicted"]) == ">50K").astype(int)
    groups = np.array([v or "unknown" for v in table["sex"].to_pylist()], dtype=object)
    keep = groups != "unknown"
    bg = sex["disparities"]["demographic_parity"]["between_groups"]
    assert bg["ratio"] == pytest.approx(
        demographic_parity_ratio(y[keep], p[keep], sensitive_features=groups[keep])
    )
    eo = sex["disparities"]["equalized_odds"]["between_groups"]["difference"]
    assert eo == pytest.approx(
        equalized_odds_difference(y[keep], p[keep], sensitive_features=groups[keep])
    )
    male = next(g for g in sex["groups"] if g["group"] == "Male")
    score = np.asarray(table["score"])
    assert male["mean_score"] == pytest.approx(score[groups == "Male"].mean())
    assert male["intervals"]["selection_rate"]["low"] <= male["metrics"]["selection_rate"]

    # This model fails the four-fifths rule by sex; every check says why.
    assert doc["passed"] is False
    failed = [c for c in doc["checks"] if not c["passed"]]
    assert any(c["feature"] == "sex" for c in failed)
    assert all(c["reason"] for c in doc["checks"])

    # Stored: the same document comes back, and the list shows it.
    again = client.get(f"/v1/audits/{doc['id']}").json()
    assert again == doc
    listed = client.get("/v1/audits").json()
    assert listed["total"] == 1 and listed["items"][0]["passed"] is False


def test_zero_one_columns_and_csv_upload(client: Client) -> None:
    csv = b"y,p,g\n" + b"".join(
        f"{i % 2},{(i // 2) % 2},{'ab'[i % 3 == 0]}\n".encode() for i in range(90)
    )
    r = client.post("/v1/datasets", files={"file": ("p.csv", csv)}, data={"name": "csvpreds"})
    assert r.status_code == 201, r.text
    ds = r.json()["id"]
    r = client.post(
        "/v1/audits",
        json={
            "dataset_id": ds,
            "label_column": "y",
            "prediction_column": "p",
            "sensitive_features": ["g"],
            "thresholds": {},
        },
    )
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["positive_label"] == 1 and doc["checks"] == [] and doc["passed"] is True


@pytest.mark.parametrize(
    ("over", "status", "loc", "needle"),
    [
        ({"label_column": "salary"}, 422, ["label_column"], "not in the dataset"),
        ({"prediction_column": "guess"}, 422, ["prediction_column"], "not in the dataset"),
        ({"sensitive_features": ["gender"]}, 422, ["sensitive_features", 0], "not in"),
        ({"score_column": "nope"}, 422, ["score_column"], "not in the dataset"),
        ({"prediction_column": "pred_multi"}, 422, ["prediction_column"], "binary"),
        ({"prediction_column": "pred_nan"}, 422, ["prediction_column"], "missing"),
        (
            {"label_column": "truth01", "prediction_column": "predicted"},
            422,
            ["prediction_column"],
            "not the label values",
        ),
        ({"sensitive_features": ["country"]}, 422, ["sensitive_features", 0], "single group"),
        ({"sensitive_features": ["sex", "nobody"]}, 422, ["sensitive_features", 1], "every row"),
        ({"sensitive_features": ["sex", "income"]}, 422, ["sensitive_features", 1], "label"),
        ({"score_column": "country"}, 422, ["score_column"], "numbers"),
        ({"positive_label": "rich"}, 422, ["positive_label"], "not a value"),
        ({"sensitive_features": []}, 422, ["sensitive_features"], "at least 1"),
        ({"gate": [{"metric": "vibes", "threshold": 0.8}]}, 422, ["gate", 0, "metric"], ""),
        ({"dataset_id": "ds_nope"}, 404, ["dataset_id"], "no dataset"),
        ({"surprise": 1}, 422, ["surprise"], "Extra"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_stored(
    client: Client, over: dict[str, Any], status: int, loc: list[Any], needle: str
) -> None:
    ds = client.upload("preds", predictions())
    r = client.post("/v1/audits", json={**body(ds), **over})
    assert r.status_code == status, r.text
    fields = r.json()["fields"]
    assert loc in [f["loc"] for f in fields], fields
    assert needle in " ".join(f["msg"] for f in fields), fields
    assert client.audits() == 0


def test_predictions_as_float_zero_one_against_text_labels_are_refused(client: Client) -> None:
    ds = client.upload("preds", predictions())
    r = client.post("/v1/audits", json=body(ds, prediction_column="pred_float"))
    assert r.status_code == 422
    assert r.json()["fields"][0]["loc"] == ["prediction_column"]
    assert client.audits() == 0


def test_unknown_audit_is_404(client: Client) -> None:
    r = client.get("/v1/audits/aud_nope")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
