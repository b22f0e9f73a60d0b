"""``python -m jobs.run <job id>``: the Ray job driver, the one entrypoint the cluster runs.

The control plane submits this fixed command through Ray's Jobs API; what to do comes from the
job's manifest in artifact storage (written and validated by the API), never from the command
line. The driver prepares the data (jobs/prepare.py), runs the search (jobs/search.py),
evaluates and audits the best trial and writes the model bundles (jobs/finish.py), and reports
every step as progress events.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.data import DataError
from jobs.events import UNDELIVERED, Event, EventSink
from jobs.prepare import prepare, start_quality
from jobs.spec import JobSpec

if TYPE_CHECKING:
    from jobs.checkpoint import StateDict

log = logging.getLogger("jobs.run")


@dataclass
class Manifest:
    job_id: str
    spec: JobSpec
    dataset_uri: str
    dataset_sha256: str
    job_dir: Path
    parent: dict[str, Any] | None = None  # transfer learning: model_id, bundle_uri, digest

    @classmethod
    def load(cls, artifact_root: str, job_id: str) -> Manifest:
        job_dir = Path(artifact_root) / "jobs" / job_id
        raw = json.loads((job_dir / "manifest.json").read_text())
        return cls(
            job_id=job_id,
            spec=JobSpec.model_validate(raw["spec"]),
            dataset_uri=raw["dataset"]["uri"],
            dataset_sha256=raw["dataset"]["sha256"],
            job_dir=job_dir,
            parent=raw.get("parent"),
        )


def execute(manifest: Manifest, sink: EventSink) -> dict[str, Any]:
    """Everything the job does once it runs; returns the result event's data."""
    # Imported here, not at the top: the driver reports `running` before paying for them.
    # Nothing before the search imports torch (tests/jobs/test_driver_imports.py); the
    # finishing work does, with fairlearn (sklearn, pandas), once the search is over.
    import ray

    from jobs.search import run_search
    from jobs.tune_state import state_key

    prepared = prepare(manifest.spec, manifest.dataset_uri)
    spec = prepared.spec
    sink.emit(
        "job.running",
        "job.running.prepared",
        stage="search",
        task=spec.resolved_task,
        split_sizes=prepared.split_sizes,
        classes=prepared.classes,
        data_quality=start_quality(spec, manifest.dataset_uri),
    )
    data = prepared.train
    if manifest.parent is not None:
        data = dataclasses.replace(data, init_state=parent_weights(manifest.parent, spec))
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    # The job's token (an HMAC of the job id under the control plane's secret): a relaunched
    # driver of this job gets the same one, the artifact store never holds it.
    key = state_key(os.environ["CRUCIBLE_JOB_TOKEN"])
    best = run_search(spec, data, manifest.job_dir / "tune", manifest.job_id, sink, key)

    from jobs.finish import finish

    return finish(manifest, prepared, best, sink)


def parent_weights(parent: dict[str, Any], spec: JobSpec) -> StateDict:
    """The weights a transfer-learning job starts from, checked against their digest."""
    from jobs.bundle import BundleError, read_bundle

    try:
        manifest, weights = read_bundle(parent["bundle_uri"], parent["bundle_digest"])
    except BundleError as exc:
        raise DataError(f"model.init_from: {exc}") from exc
    if manifest["model"]["architecture"] != spec.model.architecture:
        raise DataError(
            f"model.init_from: model {parent['model_id']} is a "
            f"{manifest['model']['architecture']}, this job trains a {spec.model.architecture}"
        )
    return weights


# How long the driver, its work done, keeps trying to deliver its last events.
FLUSH_TIMEOUT_S = float(os.environ.get("CRUCIBLE_EVENTS_FLUSH_TIMEOUT_S", "120"))


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc``, or what caused it, is a full disk (or quota), also when a library
    (Tune, pyarrow) passed it on as text."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def failure_reason(exc: BaseException) -> str:
    """What the job's error says: the message of a known failure, the storage's state when
    the artifact store is full, else the exception's type and message."""
    if disk_full(exc):
        where = getattr(exc, "filename", None)
        if where:
            detail = f" (writing {where})"
        elif isinstance(exc, OSError):
            detail = ""
        else:
            detail = f" ({type(exc).__name__}: {exc})"
        return f"artifact store full: No space left on device{detail}"
    known = isinstance(exc, DataError) or type(exc).__name__ in ("SearchFailed",)
    return str(exc) if known else f"{type(exc).__name__}: {exc}"


def write_result(job_dir: Path, result: dict[str, Any]) -> None:
    """result.json, all or nothing: the reconciler ingests it when the final event is lost."""
    path = job_dir / "result.json"
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps(result))
        tmp.replace(path)
    except BaseException as exc:
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)
        tmp.unlink(missing_ok=True)
        raise


def save_undelivered(job_dir: Path, events: list[Event]) -> bool:
    """Append the events the API never took to the job's folder (one JSON a line)."""
    try:
        with open(job_dir / UNDELIVERED, "a") as f:
            f.write("".join(e.model_dump_json() + "\n" for e in events))
            f.flush()
            os.fsync(f.fileno())
        return True
    except OSError:
        log.exception("could not keep the undelivered events in %s", job_dir)
        return False


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if len(argv) != 2:
        print("usage: python -m jobs.run <job id>", file=sys.stderr)
        return 2
    job_id = argv[1]
    manifest = Manifest.load(os.environ["CRUCIBLE_ARTIFACT_ROOT"], job_id)
    sink = EventSink(os.environ["CRUCIBLE_API_URL"], job_id, os.environ["CRUCIBLE_JOB_TOKEN"])
    log.info("driver for job %s started (pid %d)", job_id, os.getpid())
    # The pid lets an operator (or a chaos test) find the driver of a job.
    sink.emit("job.running", f"job.running:{os.getpid()}", stage="prepare", pid=os.getpid())
    code = 0
    try:
        result = execute(manifest, sink)
        write_result(manifest.job_dir, result)
        sink.emit("job.succeeded", "job.succeeded", **result)
    except Exception as exc:
        traceback.print_exc()
        sink.emit("job.failed", "job.failed", error=failure_reason(exc))
        code = 1
    if not sink.close(timeout=FLUSH_TIMEOUT_S):
        pending = sink.undelivered()
        log.error("could not deliver %d event(s) to the control plane", len(pending))
        # Kept for the reconciler, which settles the job from them once the API is back.
        if not save_undelivered(manifest.job_dir, pending):
            code = code or 3
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
