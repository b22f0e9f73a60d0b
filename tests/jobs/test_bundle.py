from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from jobs.bundle import BundleError, OutputHead, load_bundle, save_bundle
from jobs.models import build_model
from jobs.preprocess import Preprocessor
from jobs.spec import MLPSpec


def make(tmp_path: Path) -> tuple[Path, str, Preprocessor, object]:
    cols = {"x": np.array([1.0, 2.0, 3.0]), "c": np.array(["a", "b", "a"], dtype=object)}
    pre = Preprocessor.fit(cols, {"x": "numeric", "c": "categorical"})
    spec = MLPSpec(hidden_sizes=[4])
    model = build_model(spec, pre.example_shape, 2)
    rows = [{"x": 1.0, "c": "a"}]
    head = OutputHead("classification", ["no", "yes"])
    digest = save_bundle(
        tmp_path / "b", model.state_dict(), spec, pre, head, rows, {"job_id": "job_1"}
    )
    return tmp_path / "b", digest, pre, model


def test_round_trip_predicts_like_the_original(tmp_path: Path) -> None:
    folder, digest, pre, model = make(tmp_path)
    predictor = load_bundle(folder, digest)
    instances: list[dict[str, Any]] = [{"x": 2.5, "c": "b"}, {"x": None, "c": "unseen"}]
    out = predictor.predict(instances)
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(pre.transform(pre.columns_from_records(instances)))
        expected = torch.softmax(model(x), 1).numpy()  # type: ignore[operator]
    got = np.array([[p["no"], p["yes"]] for p in out["probabilities"]])
    assert np.allclose(got, expected, atol=1e-6)
    assert out["predictions"] == [["no", "yes"][i] for i in expected.argmax(1)]
    assert not list(folder.glob("*.pt")) and not list(folder.glob("*.pkl"))


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    folder, digest, _, _ = make(tmp_path)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match"):
        load_bundle(folder, digest)


def test_tampered_manifest_is_refused(tmp_path: Path) -> None:
    folder, digest, _, _ = make(tmp_path)
    manifest = folder / "bundle.json"
    manifest.write_text(manifest.read_text().replace('"yes"', '"YES"'))
    with pytest.raises(BundleError, match="digest on record"):
        load_bundle(folder, digest)


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path``: a disk that fills up for real (root only)."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        why = f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_full_disk_leaves_no_partial_bundle(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "store", "256k") as store:
        folder, digest, pre, _ = make(store)  # a small bundle fits
        spec = MLPSpec(hidden_sizes=[4])
        head = OutputHead("classification", ["no", "yes"])
        big = {"w": torch.zeros(512 * 1024 // 4 * 3)}  # 768 KiB of weights do not
        for target in (folder, store / "fresh"):
            with pytest.raises(OSError) as caught:
                save_bundle(target, big, spec, pre, head, [], {"job_id": "job_2"})
            assert caught.value.errno == errno.ENOSPC
            assert caught.value.filename == str(target)  # what was being written
        # The bundle that was there is whole and unchanged; no new one, no temporary folder.
        assert load_bundle(folder, digest).manifest["metadata"] == {"job_id": "job_1"}
        assert sorted(p.name for p in store.iterdir()) == ["b"]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o755), (0o077, 0o700)])
def test_a_bundle_folder_follows_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    # `crucible up` runs with umask 077: its bundles were 0755 all the same (a fixed chmod).
    old = os.umask(umask)
    try:
        folder, *_ = make(tmp_path)
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == mode
    assert all(f.stat().st_mode & 0o777 == mode & 0o666 for f in folder.iterdir())
