"""Reading a user's dataset file in a child process with caps (jobs/intake.py does the reading).

Why a process and not a thread: a hostile file crashes or exhausts its reader inside Arrow's
or Pillow's C++ code (a segfault, an abort, GBs of memory), which no ``try`` in Python can
catch. A child that dies takes nothing with it; its end becomes a 422 for the caller, and the
API, its other requests and its memory stay as they were. Starting one costs about 0.4 s
(Python, pyarrow and numpy imports), small next to a registration's own parsing and hashing.

Caps on the child: its address space (``intake_memory_bytes``: pyarrow's and numpy's
allocations fail past it, so a file that needs more is refused rather than the machine
swapping), a wall-clock timeout, and the size of the Parquet copy it writes (what is left of
the project's storage quota, so the quota is checked while writing, not after). At most
``intake_concurrency`` children run at once, so many concurrent uploads cannot multiply the
memory cap past the machine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.config import Settings
from services.core.errors import Invalid, Unavailable

log = logging.getLogger("crucible.intake")

RETRY_AFTER_S = 5


@dataclass(frozen=True)
class IntakeCaps:
    memory_bytes: int
    timeout_s: float
    concurrency: int
    max_columns: int
    max_cell_values: int
    max_cell_bytes: int

    @classmethod
    def of(cls, settings: Settings) -> IntakeCaps:
        return cls(
            memory_bytes=settings.intake_memory_bytes,
            timeout_s=settings.intake_timeout_s,
            concurrency=settings.intake_concurrency,
            max_columns=settings.max_columns,
            max_cell_values=settings.max_cell_values,
            max_cell_bytes=settings.max_cell_bytes,
        )

    @property
    def limits(self) -> dict[str, int]:
        return {
            "max_columns": self.max_columns,
            "max_cell_values": self.max_cell_values,
            "max_cell_bytes": self.max_cell_bytes,
        }


class OutputCapReached(Exception):
    """The child's Parquet copy passed ``output_bytes``: the caller knows which quota that is."""


_slots: dict[int, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


def _slot(concurrency: int) -> threading.BoundedSemaphore:
    with _slots_lock:
        return _slots.setdefault(concurrency, threading.BoundedSemaphore(concurrency))


def inspect_file(
    path: Path,
    caps: IntakeCaps,
    *,
    field: str,
    target: str | None = None,
    output: Path | None = None,
    output_bytes: int | None = None,
    image_folder: bool = False,
) -> dict[str, Any]:
    """What jobs/intake.py found in ``path`` (format, num_rows, columns, quality, skipped, and
    the ``output`` copy's sha256 and size), or Invalid naming ``field`` (and the column and
    row, or the file, the child named) when the file is refused or its reader died."""
    request = {
        "path": str(path),
        "target": target,
        "output": str(output) if output else None,
        "image_folder": image_folder,
        "limits": caps.limits,
        "caps": {"memory_bytes": caps.memory_bytes, "output_bytes": output_bytes},
    }
    slot = _slot(caps.concurrency)
    if not slot.acquire(timeout=caps.timeout_s):
        raise Unavailable(
            f"{caps.concurrency} datasets are being read already; retry in a moment",
            retry_after_s=RETRY_AFTER_S,
        )
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "jobs.intake"],
            input=json.dumps(request).encode(),
            capture_output=True,
            timeout=caps.timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise _refused(field, [], f"reading it took longer than {caps.timeout_s:g} s") from None
    finally:
        slot.release()
    return _outcome(proc, caps, field)


def _outcome(proc: subprocess.CompletedProcess[bytes], caps: IntakeCaps, field: str) -> Any:
    answer: dict[str, Any] = {}
    with contextlib.suppress(ValueError):  # a child that died mid-answer: judged by its end
        answer = json.loads(proc.stdout or b"{}")
    if proc.returncode == 0 and "ok" in answer:
        return answer["ok"]
    error = answer.get("error")
    if error is not None:
        if error["cap"] == "output":
            raise OutputCapReached
        if error["cap"] == "memory":
            detail = f"reading it needs more than the {caps.memory_bytes} bytes of memory allowed"
            raise _refused(field, [], detail)
        if error.get("target"):
            raise Invalid(error["detail"], [{"loc": ["target"], "msg": error["detail"]}])
        raise _refused(field, error["loc"] or [], error["detail"])
    stderr = proc.stderr.decode(errors="replace").strip()
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        log.warning("a dataset's reader died of %s; stderr: %s", name, stderr[-2000:])
        detail = (
            f"the file crashed its reader ({name}): it is malformed, or needs more than the "
            f"{caps.memory_bytes} bytes of memory allowed"
        )
        raise _refused(field, [], detail)
    # An exception the reader did not expect: still the file's doing (ours read it fine until
    # this file), so a 422 with its last line, and the whole trace in the API's log.
    log.error("a dataset's reader failed (exit %s): %s", proc.returncode, stderr[-4000:])
    last = stderr.splitlines()[-1] if stderr else f"exit status {proc.returncode}"
    raise _refused(field, [], f"the file could not be read: {last[:500]}")


def _refused(field: str, loc: list[Any], detail: str) -> Invalid:
    where = [field, *loc]
    return Invalid(f"{field}: {detail}", [{"loc": where, "msg": detail}])
