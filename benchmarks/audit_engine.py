"""The count-based fairness engine (jobs/fairness.py) against fairlearn's MetricFrame.

In one process, on synthetic data with two sensitive features (2 x 6 values = 12 intersectional
groups) and four metrics (selection rate, accuracy, TPR, FPR):
  1. fairlearn: MetricFrame point estimates, timed once; its bootstrap cost measured on a few
     MetricFrames over rows resampled with replacement and scaled to 200 resamples;
  2. the engine: point estimates, then point estimates plus 200 multinomial resamples;
  3. checks the point estimates agree within 1e-9, prints both times and the speed-up, and the
     engine's peak memory (tracemalloc) relative to the bytes of the input arrays;
  4. regression: engine MAE/RMSE per group with 200 Poisson resamples against a plain pandas
     groupby for the point estimates.

    .venv/bin/python benchmarks/audit_engine.py [--rows 1000000] [--fairlearn-resamples 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import tracemalloc
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import (
    MetricFrame,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score

from jobs.fairness import audit_classification, audit_regression, encode_groups

RESAMPLES = 200
METRICS = ("selection_rate", "accuracy", "true_positive_rate", "false_positive_rate")
SEXES = np.array(["Female", "Male"])
RACES = np.array(["White", "Black", "Asian", "Hispanic", "Native", "Other"])
SEP = " \u00d7 "
MiB = 1 << 20


def make_data(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sex_code = rng.choice(2, n, p=[0.45, 0.55])
    race_code = rng.choice(6, n, p=[0.6, 0.15, 0.1, 0.1, 0.03, 0.02])
    group = sex_code * 6 + race_code
    base = rng.uniform(0.2, 0.5, 12)[group]
    y_true = (rng.random(n) < base).astype(np.int64)
    error = rng.uniform(0.1, 0.3, 12)[group]
    y_pred = np.where(rng.random(n) < error, 1 - y_true, y_true).astype(np.int64)
    target = rng.normal(50, 10, n)
    return {
        "sex": SEXES[sex_code],
        "race": RACES[race_code],
        "y_true": y_true,
        "y_pred": y_pred,
        "target": target,
        "prediction": target + rng.normal(rng.uniform(-1, 1, 12)[group], 5),
    }


def metric_frame(y_true: np.ndarray, y_pred: np.ndarray, sex: Any, race: Any) -> MetricFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MetricFrame(
            metrics={
                "selection_rate": selection_rate,
                "accuracy": accuracy_score,
                "true_positive_rate": true_positive_rate,
                "false_positive_rate": false_positive_rate,
            },
            y_true=y_true,
            y_pred=y_pred,
            sensitive_features={"sex": sex, "race": race},
        )


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median_time(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    runs = [timed(fn) for _ in range(repeats)]
    return statistics.median(t for t, _ in runs), runs[-1][1]


def peak_bytes(fn: Callable[[], Any]) -> int:
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def classification(data: dict[str, np.ndarray], fairlearn_resamples: int) -> float:
    y_true, y_pred, sex, race = data["y_true"], data["y_pred"], data["sex"], data["race"]
    n = y_true.shape[0]

    def engine(resamples: int) -> Any:
        groups = encode_groups({"sex": sex, "race": race}, intersect=True)
        return audit_classification(y_true, y_pred, groups, n_resamples=resamples, seed=0)

    t_fl_point, frame = timed(lambda: metric_frame(y_true, y_pred, sex, race))
    rng = np.random.default_rng(1)
    boot_times = []
    for _ in range(fairlearn_resamples):
        t0 = time.perf_counter()
        rows = rng.integers(0, n, n)
        metric_frame(y_true[rows], y_pred[rows], sex[rows], race[rows])
        boot_times.append(time.perf_counter() - t0)
    t_fl_each = statistics.mean(boot_times)
    t_fl_boot = t_fl_each * RESAMPLES

    t_point, _ = median_time(lambda: engine(0))
    t_total, full = median_time(lambda: engine(RESAMPLES))
    t_encode, _ = median_time(lambda: encode_groups({"sex": sex, "race": race}, True))

    # Point estimates: every group and metric, the overall values, and both disparity methods.
    worst = 0.0
    by_name = {g.name: g for g in full.groups}
    for key, row in frame.by_group.iterrows():
        name = SEP.join(key)
        if np.isnan(row["selection_rate"]):
            assert name in full.empty_intersections
            continue
        for m in METRICS:
            worst = max(worst, abs(by_name[name].metrics[m] - row[m]))
    for m in METRICS:
        worst = max(worst, abs(full.overall[m] - frame.overall[m]))
    names = {
        "demographic_parity": "selection_rate",
        "equal_opportunity": "true_positive_rate",
        "accuracy": "accuracy",
    }
    for method in ("between_groups", "to_overall"):
        diff, ratio = frame.difference(method=method), frame.ratio(method=method)
        for disparity, m in names.items():
            side = getattr(full.disparities[disparity], method)
            worst = max(worst, abs(side.difference - diff[m]), abs(side.ratio - ratio[m]))
        side = getattr(full.disparities["equalized_odds"], method)
        eo_diff = max(diff["true_positive_rate"], diff["false_positive_rate"])
        eo_ratio = min(ratio["true_positive_rate"], ratio["false_positive_rate"])
        worst = max(worst, abs(side.difference - eo_diff), abs(side.ratio - eo_ratio))
    assert worst <= 1e-9, f"engine and fairlearn differ by {worst}"

    input_bytes = sum(a.nbytes for a in (y_true, y_pred, sex, race))
    peak = peak_bytes(lambda: engine(RESAMPLES))
    fl_total = t_fl_point + t_fl_boot
    speedup = fl_total / t_total

    print(
        f"classification: {n:,} rows, {len(full.groups)} groups (sex x race), "
        f"{len(METRICS)} metrics, {RESAMPLES} resamples"
    )
    print(f"  fairlearn MetricFrame, point estimates   {t_fl_point:10.2f} s   (timed once)")
    print(
        f"  fairlearn bootstrap, {RESAMPLES} resamples      {t_fl_boot:10.1f} s   "
        f"(SCALED: {fairlearn_resamples} resampled MetricFrames timed, "
        f"{t_fl_each:.2f} s each, x {RESAMPLES})"
    )
    print(f"  fairlearn total                          {fl_total:10.1f} s")
    print(
        f"  engine, point estimates                  {t_point:10.3f} s   "
        f"(of which encoding the groups {t_encode:.3f} s; median of 3)"
    )
    print(f"  engine, point + {RESAMPLES} resamples           {t_total:10.3f} s   (median of 3)")
    print(f"  speed-up, point estimates                {t_fl_point / t_point:10,.0f} x")
    print(
        f"  speed-up, point + {RESAMPLES} resamples         {speedup:10,.0f} x   (target >= 100 x)"
    )
    print(
        f"  max |engine - fairlearn|, groups x metrics, overall, disparities: {worst:.1e} (<= 1e-9)"
    )
    print(
        f"  engine peak memory (tracemalloc)          {peak / MiB:8.1f} MiB = "
        f"{peak / input_bytes:.2f} x the {input_bytes / MiB:.1f} MiB of input arrays "
        f"(y int64 x 2, sex {sex.dtype}, race {race.dtype})"
    )
    assert speedup >= 100, f"speed-up {speedup:.0f} x is below the 100 x target"
    assert peak <= 2 * input_bytes, "peak memory above 2x the input"
    return speedup


def regression(data: dict[str, np.ndarray]) -> None:
    y_true, y_pred = data["target"], data["prediction"]
    sex, race = data["sex"], data["race"]
    n = y_true.shape[0]

    def engine(resamples: int) -> Any:
        groups = encode_groups({"sex": sex, "race": race}, intersect=True)
        return audit_regression(y_true, y_pred, groups, n_resamples=resamples, seed=0)

    def pandas_groupby() -> pd.DataFrame:
        err = y_pred - y_true
        frame = pd.DataFrame({"sex": sex, "race": race, "abs": np.abs(err), "sq": err * err})
        out = frame.groupby(["sex", "race"]).agg(mae=("abs", "mean"), mse=("sq", "mean"))
        out["rmse"] = np.sqrt(out["mse"])
        return out

    t_pandas, expected = median_time(pandas_groupby)
    t_point, _ = median_time(lambda: engine(0))
    t_total, full = timed(lambda: engine(RESAMPLES))
    by_name = {g.name: g for g in full.groups}
    worst = 0.0
    for (s, r), row in expected.iterrows():
        got = by_name[f"{s}{SEP}{r}"].metrics
        worst = max(worst, abs(got["mae"] - row["mae"]), abs(got["rmse"] - row["rmse"]))
    assert worst <= 1e-9, f"engine and pandas differ by {worst}"
    input_bytes = sum(a.nbytes for a in (y_true, y_pred, sex, race))
    peak = peak_bytes(lambda: engine(RESAMPLES))

    print(f"regression: {n:,} rows, {len(full.groups)} groups, MAE and RMSE per group")
    print(f"  pandas groupby, point estimates          {t_pandas:10.3f} s   (median of 3)")
    print(f"  engine, point estimates                  {t_point:10.3f} s   (median of 3)")
    print(f"  engine, point + {RESAMPLES} Poisson resamples   {t_total:10.3f} s   (timed once)")
    print(f"  max |engine - pandas|                    {worst:10.1e}")
    print(
        f"  engine peak memory (tracemalloc)          {peak / MiB:8.1f} MiB = "
        f"{peak / input_bytes:.2f} x the {input_bytes / MiB:.1f} MiB of input arrays "
        f"(y float64 x 2, sex {sex.dtype}, race {race.dtype})"
    )
    assert peak <= 2 * input_bytes, "peak memory above 2x the input"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--fairlearn-resamples", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPU cores; numpy {np.__version__}")
    data = make_data(args.rows)
    classification(data, args.fairlearn_resamples)
    regression(data)


if __name__ == "__main__":
    main()
