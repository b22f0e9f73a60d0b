"""The job driver reaches its search without importing torch.

torch's import is over a second of CPU on these machines; the driver used to pay it before its
first trial could start (docs/benchmarks.md, "Job latency"). Its trials import torch in their
own processes, and the driver imports it once the search is over (jobs/finish.py). A new
module-level ``import torch`` on the driver's way to the search fails this test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

DRIVER_UNTIL_SEARCH = """
import sys
import jobs.run, jobs.search
from ray import tune
from jobs.prepare import prepare, start_quality
from jobs.spec import JobSpec

spec = JobSpec.model_validate(
    {"name": "j", "dataset": {"id": "d", "target": "y"}, "model": {"hidden_sizes": [4]}}
)
prepared = prepare(spec, sys.argv[1])
start_quality(prepared.spec, sys.argv[1])
tune.with_parameters(jobs.search.train_one_trial, spec_json={}, data=prepared.train)
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""


def test_the_driver_prepares_its_data_and_trainable_without_torch(tmp_path: Path) -> None:
    n = 90
    path = tmp_path / "d.parquet"
    pq.write_table(
        pa.table(
            {
                "x": [float(i % 11) for i in range(n)],
                "c": ["a" if i % 3 else "b" for i in range(n)],
                "y": [i % 2 for i in range(n)],
            }
        ),
        path,
    )
    out = subprocess.run(
        [sys.executable, "-c", DRIVER_UNTIL_SEARCH, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_what_the_driver_and_trials_import_later_imports() -> None:
    """jobs.finish runs only after a whole search and jobs.trial only inside a trial: an
    import error there should not wait for a Ray run to show."""
    import jobs.finish
    import jobs.trial

    assert callable(jobs.finish.finish) and callable(jobs.trial.train)
