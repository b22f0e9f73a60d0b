"""Reading a dataset at registration: in the API's own process (as before) against the child
process with caps that reads it now (services/core/intake.py).

    .venv/bin/python -m benchmarks.intake [--rows 400000] [--repeats 3]

Both sides read, check, describe and profile the same CSV and write its Parquet copy, in one
process run, alternating. Printed per side: the median wall time, and how much the calling
process's peak resident memory grew (``ru_maxrss``) while it ran; then the ratios. The
in-process side runs last, since its peak stays with the process.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from jobs.intake import Limits, inspect
from services.config import Settings
from services.core.intake import IntakeCaps, inspect_file


def _csv(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    ages = rng.integers(17, 90, rows)
    hours = rng.normal(40, 10, rows).round(1)
    work = rng.choice(["Private", "State-gov", "Self-emp", "Never-worked"], rows)
    label = rng.choice(["<=50K", ">50K"], rows)
    with open(path, "w") as f:
        f.write("age,hours,workclass,income\n")
        f.writelines(
            f"{a},{h},{w},{y}\n" for a, h, w, y in zip(ages, hours, work, label, strict=False)
        )


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=400_000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp())
    source = folder / "data.csv"
    _csv(source, args.rows)
    size_mb = source.stat().st_size / 1e6
    caps = IntakeCaps.of(Settings(data_dir=folder))

    child_times: list[float] = []
    start_peak = _peak_mb()
    for i in range(args.repeats):
        t = time.perf_counter()
        inspect_file(source, caps, field="file", target="income", output=folder / f"c{i}.pq")
        child_times.append(time.perf_counter() - t)
    child_peak = _peak_mb() - start_peak

    own_times: list[float] = []
    start_peak = _peak_mb()
    for i in range(args.repeats):
        t = time.perf_counter()
        request = {"path": str(source), "target": "income", "output": str(folder / f"o{i}.pq")}
        inspect({**request, "limits": vars(Limits())})
        own_times.append(time.perf_counter() - t)
    own_peak = _peak_mb() - start_peak

    child, own = statistics.median(child_times), statistics.median(own_times)
    print(f"{args.rows} rows, {size_mb:.1f} MB of CSV, median of {args.repeats}")
    print(f"in the API's process: {own:.2f} s, peak memory +{own_peak:.0f} MB")
    print(f"in a child process:   {child:.2f} s, peak memory +{child_peak:.0f} MB (the API's)")
    print(f"time ratio child/in-process: {child / own:.2f}x; extra {child - own:+.2f} s")


if __name__ == "__main__":
    main()
