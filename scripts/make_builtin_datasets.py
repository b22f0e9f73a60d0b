"""Write the small built-in datasets that ship in jobs/datasets/ (besides Adult).

Run once by a developer (``.venv/bin/python scripts/make_builtin_datasets.py``); the outputs are
committed, so nothing is generated or downloaded at run time. Seeds are fixed: the same script
writes the same files.

- digits.parquet: scikit-learn's copy of the UCI handwritten digits (8x8 images, 1,797 rows);
- sines.parquet: noisy sine waves in three frequency classes (a sequence-classification set);
- anomalies.parquet: points near a 2-D plane in 8-D space plus 5% points off it.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sklearn

OUT = Path(__file__).resolve().parent.parent / "jobs" / "datasets"


def digits() -> pa.Table:
    raw = Path(sklearn.__file__).parent / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(raw, "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.int64)
    pixels, labels = data[:, :64], data[:, 64]
    images = pa.array(
        [[row[r * 8 : r * 8 + 8].tolist() for r in range(8)] for row in pixels],
        type=pa.list_(pa.list_(pa.uint8())),
    )
    return pa.table({"image": images, "digit": pa.array(labels, pa.int64())})


def sines(n: int = 900, length: int = 32, seed: int = 7) -> pa.Table:
    rng = np.random.default_rng(seed)
    names = np.array(["slow", "medium", "fast"])
    cycles = np.array([1.0, 2.0, 3.5])
    label = rng.integers(0, 3, n)
    t = np.linspace(0, 1, length, endpoint=False)
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    amplitude = rng.uniform(0.5, 2.0, (n, 1))
    series = amplitude * np.sin(2 * np.pi * cycles[label][:, None] * t + phase)
    series += rng.normal(0, 0.6, series.shape)
    return pa.table(
        {
            "series": pa.array(series.astype(np.float32).tolist(), pa.list_(pa.float32())),
            "label": pa.array(names[label]),
        }
    )


def anomalies(n: int = 2000, rate: float = 0.05, seed: int = 11) -> pa.Table:
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(2, 8))
    normal = rng.normal(size=(n, 2)) @ basis + rng.normal(0, 0.1, (n, 8))
    is_anomaly = rng.random(n) < rate
    # Anomalies have the same spread as normal points but lie off the plane.
    normal[is_anomaly] = rng.normal(0, normal.std(0), (int(is_anomaly.sum()), 8))
    cols = {f"f{i}": pa.array(normal[:, i].astype(np.float32)) for i in range(8)}
    return pa.table({**cols, "anomaly": pa.array(is_anomaly.astype(np.int64))})


def main() -> None:
    for name, table in (("digits", digits()), ("sines", sines()), ("anomalies", anomalies())):
        pq.write_table(table, OUT / f"{name}.parquet", compression="zstd")
        print(name, table.num_rows, "rows", (OUT / f"{name}.parquet").stat().st_size, "bytes")


if __name__ == "__main__":
    main()
