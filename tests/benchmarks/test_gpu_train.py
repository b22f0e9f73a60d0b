"""benchmarks/gpu_train.py runs both sides for real (tiny sizes on the CPU), so it cannot rot
before the next session with a GPU runs it at full size."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.gpu_train import main


def test_gpu_train_quick_on_cpu_prints_both_sides_and_the_ratio(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = main(["--quick", "--device", "cpu"])
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    sides = [line["side"] for line in printed[:-1]]
    assert sides == ["plain", "project"]  # no pinned variant without CUDA
    for line in printed[:-1]:
        assert line["device"] == "cpu"
        assert line["epochs"] >= 2  # one warm-up epoch, then at least one timed
        assert line["samples_per_s"] > 0
    ratio = printed[-1]
    assert ratio["project"] == pytest.approx(
        printed[1]["samples_per_s"] / printed[0]["samples_per_s"], rel=1e-2
    )
    assert math.isfinite(ratio["project"])
    assert out["lines"] == printed[:-1]


def test_gpu_train_imports_no_ray() -> None:
    """The GPU machine has PyTorch but no Ray: the script and the loop must not need it."""
    import subprocess
    import sys

    code = (
        "import sys, benchmarks.gpu_train; "
        "sys.exit(any(m == 'ray' or m.startswith('ray.') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
