"""Image folders: decoded once into an array column; unreadable or odd files are reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.data import DataError, array_values
from jobs.images import read_image_folder


def write(folder: Path, name: str, array: np.ndarray) -> None:
    Image.fromarray(array).save(folder / name)


def test_a_folder_becomes_an_image_column_and_bad_files_are_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grey = [rng.integers(0, 256, (6, 5), dtype=np.uint8) for _ in range(3)]
    for i, a in enumerate(grey):
        write(tmp_path, f"g{i}.png", a)
    write(tmp_path, "big.png", rng.integers(0, 256, (7, 5), dtype=np.uint8))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "labels.csv").write_text(
        "file,label\ng0.png,0\ng1.png,1\ng2.png,1\nbig.png,0\nbroken.png,1\nmissing.png,0\n"
        "../escape.png,1\n"
    )
    folder = read_image_folder(tmp_path)
    assert folder.shape == [6, 5]
    assert folder.table.column("label").to_pylist() == [0, 1, 1]
    images = array_values(folder.table.column("image").to_pylist(), "image")
    assert np.array_equal(images, np.stack(grey).astype(np.float64))
    reasons = {s["file"]: s["reason"] for s in folder.skipped}
    assert set(reasons) == {"big.png", "broken.png", "missing.png", "../escape.png"}
    assert "shape [7, 5]" in reasons["big.png"] and "decoded" in reasons["broken.png"]


def test_colour_images_are_channels_first(tmp_path: Path) -> None:
    rgb = np.zeros((4, 3, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    write(tmp_path, "r.jpg", rgb)
    (tmp_path / "labels.csv").write_text("file,kind\nr.jpg,red\n")
    folder = read_image_folder(tmp_path)
    assert folder.shape == [3, 4, 3]
    image = np.array(folder.table.column("image").to_pylist()[0])
    assert image[0].mean() > 200 and image[1].mean() < 50  # red plane first
    assert folder.table.column("kind").to_pylist() == ["red"]


def test_a_folder_without_labels_or_images_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"labels\.csv"):
        read_image_folder(tmp_path)
    (tmp_path / "labels.csv").write_text("file,label\nnone.png,1\n")
    with pytest.raises(DataError, match="no readable image"):
        read_image_folder(tmp_path)
