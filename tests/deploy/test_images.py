"""cluster/images: the image definitions agree with what they must run under.

No container engine runs on the test machines, so the images are not built here; what can be
checked is: the wheel they install (built here from the same build context) carries every file
the API and the cluster need at run time, and the Dockerfiles agree with the chart (user,
command, Ray version) and with the project's pins.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import ray
import yaml

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "cluster" / "images"
VALUES = yaml.safe_load((ROOT / "helm" / "crucible" / "values.yaml").read_text())


def _final_stage(dockerfile: str) -> str:
    return (IMAGES / dockerfile).read_text().rsplit("\nFROM ", 1)[1]


def _arg(dockerfile: str, name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", (IMAGES / dockerfile).read_text(), re.M)
    assert match, f"{dockerfile} has no ARG {name}"
    return match.group(1)


def test_the_api_image_runs_what_the_chart_runs_as_the_chart_user() -> None:
    final = _final_stage("Dockerfile.api")
    assert re.search(r"^USER 1000$", final, re.M)
    assert VALUES["podSecurityContext"]["runAsUser"] == 1000
    deployment = (ROOT / "helm" / "crucible" / "templates" / "deployment.yaml").read_text()
    command = re.search(r"command: (\[.*\])", deployment)
    assert command
    cmd = re.search(r"^CMD (\[.*\])$", final, re.M)
    assert cmd and yaml.safe_load(cmd.group(1)) == yaml.safe_load(command.group(1))


def test_pins_match_the_project() -> None:
    install = (ROOT / "scripts" / "install.sh").read_text()
    torch_pin = re.search(r"torch==([\d.]+)", install)
    assert torch_pin
    for dockerfile in ("Dockerfile.api", "Dockerfile.ray"):
        assert _arg(dockerfile, "TORCH_VERSION") == torch_pin.group(1)
    # A driver on another Ray version than the cluster's cannot join it.
    base = _arg("Dockerfile.ray", "BASE")
    assert base == f"rayproject/ray:{ray.__version__}-py311"
    assert base.endswith(VALUES["rayCluster"]["image"]["tag"])
    gpu = re.search(r"BASE=(rayproject/ray:\S+)", (IMAGES / "Dockerfile.ray").read_text())
    assert gpu and VALUES["rayCluster"]["gpuImage"]["tag"] in gpu.group(1)


def test_the_wheel_the_images_install_carries_the_runtime_files(tmp_path: Path) -> None:
    # What the Dockerfiles copy into their build stage is exactly what the wheel needs.
    for dockerfile in ("Dockerfile.api", "Dockerfile.ray"):
        text = (IMAGES / dockerfile).read_text()
        for source in ("pyproject.toml README.md", "jobs ./jobs", "services ./services"):
            assert f"COPY {source}" in text, (dockerfile, source)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("crucible-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    needed = [
        "jobs/run.py",
        "jobs/score.py",
        "services/serving/app.py",
        "services/web/app.js",
        "services/store/migrations/env.py",
        "services/store/migrations/versions/0001_initial_schema.py",
    ]
    assert [n for n in needed if n not in names] == []
    assert any(n.startswith("jobs/datasets/") and n.endswith(".parquet") for n in names)
    assert any(n.endswith("entry_points.txt") for n in names)
