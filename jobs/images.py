"""Image-folder datasets: a folder of PNG/JPEG files plus a labels file, as one table.

A folder is read once, when it is registered, into a Parquet table with an ``image`` array
column (``[H][W]`` for grey images, ``[C][H][W]`` for colour; pixel values 0-255) and the
labels file's other columns. Files that cannot be decoded are skipped and reported by name
(the rest is kept), and so are files whose size differs from the first image's: a model needs
one shape. A labels file naming a file that is not there is reported the same way.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from jobs.data import DataError

LABELS_FILE = "labels.csv"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_COLUMN = "image"


@dataclass
class ImageFolder:
    table: pa.Table
    shape: list[int]
    skipped: list[dict[str, str]] = field(default_factory=list)


def read_image_folder(folder: Path, labels_file: str = LABELS_FILE) -> ImageFolder:
    """Decode every image the labels file names (column ``file``, plus label columns)."""
    from PIL import Image, UnidentifiedImageError

    labels_path = folder / labels_file
    if not labels_path.is_file():
        raise DataError(
            f"an image folder needs a {labels_file} (file,label,...) next to the images"
        )
    with open(labels_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "file" not in rows[0]:
        raise DataError(f"{labels_file} needs a header with a 'file' column and a label column")
    others = [k for k in rows[0] if k != "file"]
    if not others:
        raise DataError(f"{labels_file} has no label column besides 'file'")

    images: list[np.ndarray] = []
    kept: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    shape: tuple[int, ...] | None = None
    root = folder.resolve()
    for row in rows:
        name = row["file"]
        path = (folder / name).resolve()
        if root not in path.parents or path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append({"file": name, "reason": "not a PNG or JPEG file inside the folder"})
            continue
        try:
            with Image.open(path) as img:
                img.load()
                array = _channels_first(np.asarray(img.convert(_mode(img.mode))))
        except FileNotFoundError:
            skipped.append({"file": name, "reason": "no such file"})
            continue
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            skipped.append({"file": name, "reason": f"cannot be decoded: {exc}"})
            continue
        if shape is None:
            shape = array.shape
        elif array.shape != shape:
            skipped.append(
                {"file": name, "reason": f"shape {list(array.shape)}, not {list(shape)}"}
            )
            continue
        images.append(array)
        kept.append(row)
    if not images or shape is None:
        raise DataError(f"no readable image in {folder} ({len(skipped)} skipped)")
    columns: dict[str, Any] = {
        IMAGE_COLUMN: pa.array(
            [a.tolist() for a in images], type=_list_type(len(shape), pa.uint8())
        ),
        "file": pa.array([r["file"] for r in kept]),
    }
    for name in others:
        columns[name] = _typed([r[name] for r in kept])
    return ImageFolder(pa.table(columns), list(shape), skipped)


def _mode(mode: str) -> str:
    return "L" if mode in ("1", "L", "I", "I;16", "F") else "RGB"


def _channels_first(array: np.ndarray) -> np.ndarray:
    return array if array.ndim == 2 else np.transpose(array, (2, 0, 1))


def _list_type(depth: int, item: pa.DataType) -> pa.DataType:
    for _ in range(depth):
        item = pa.list_(item)
    return item


def _typed(values: list[str]) -> pa.Array:
    """A label column as integers when every value is one (digits: 0-9), else as text."""
    try:
        return pa.array([int(v) for v in values], pa.int64())
    except ValueError:
        return pa.array(values, pa.string())
