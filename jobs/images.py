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


# Values (pixels x channels) of one image by default; jobs/intake.py passes its own limit.
MAX_IMAGE_VALUES = 4 * 1024 * 1024


def read_image_folder(
    folder: Path, labels_file: str = LABELS_FILE, max_cell_values: int = MAX_IMAGE_VALUES
) -> ImageFolder:
    """Decode every image the labels file names (column ``file``, plus label columns).

    An image larger than ``max_cell_values`` (width x height x channels) is a DataError naming
    the file, found from its header before any pixel is decoded: a 69-byte PNG can claim
    20000x20000 pixels, and decoding one of 6000x6000 took 2.3 GB.
    """
    from PIL import Image, UnidentifiedImageError

    # Pillow's own guard, at the same size: it refuses a larger claim inside Image.open.
    Image.MAX_IMAGE_PIXELS = max_cell_values

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
                mode = _mode(img.mode)
                values = img.size[0] * img.size[1] * (1 if mode == "L" else 3)
                if values > max_cell_values:
                    raise _too_large(name, img.size, values, max_cell_values)
                img.load()
                array = _channels_first(np.asarray(img.convert(mode)))
        except FileNotFoundError:
            skipped.append({"file": name, "reason": "no such file"})
            continue
        except DataError:
            raise  # too large: refused, not skipped (a ValueError, so before the next clause)
        except Image.DecompressionBombError as exc:
            raise DataError(f"image '{name}': {exc}", [name]) from None
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
        IMAGE_COLUMN: _nested(np.stack(images)),
        "file": pa.array([r["file"] for r in kept]),
    }
    for name in others:
        columns[name] = _typed([r[name] for r in kept])
    return ImageFolder(pa.table(columns), list(shape), skipped)


def _mode(mode: str) -> str:
    return "L" if mode in ("1", "L", "I", "I;16", "F") else "RGB"


def _channels_first(array: np.ndarray) -> np.ndarray:
    return array if array.ndim == 2 else np.transpose(array, (2, 0, 1))


def _too_large(name: str, size: tuple[int, int], values: int, limit: int) -> DataError:
    return DataError(
        f"image '{name}' is {size[0]}x{size[1]} pixels ({values} values); at most {limit} "
        "values an image",
        [name],
    )


def _nested(stack: np.ndarray) -> pa.Array:
    """Images of one shape as nested lists (``list<list<uint8>>`` for grey, one level more for
    colour), built from the pixel buffer and offsets: no Python object per pixel."""
    if stack.size > np.iinfo(np.int32).max:
        raise DataError(f"the images hold {stack.size} values in all; at most 2^31 - 1")
    array: pa.Array = pa.array(stack.reshape(-1), pa.uint8())
    for width in reversed(stack.shape[1:]):
        offsets = np.arange(0, len(array) + 1, width, dtype=np.int32)
        array = pa.ListArray.from_arrays(pa.array(offsets), array)
    return array


def _typed(values: list[str]) -> pa.Array:
    """A label column as integers when every value is one (digits: 0-9), else as text."""
    try:
        return pa.array([int(v) for v in values], pa.int64())
    except ValueError:
        return pa.array(values, pa.string())
