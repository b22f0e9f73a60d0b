"""The search's saved state (Tune's pickles in the artifact store) is signed by the job's
driver and verified before anything in it is unpickled (jobs/tune_state.py).

A replaced state file must never run: each tampering below swaps in a pickle whose
``__reduce__`` writes a marker file, and the marker must stay absent. A driver killed at any
moment, on the other hand, must leave state that verifies and a search that resumes.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ray
from ray import cloudpickle, tune

from jobs import tune_state
from jobs.events import EventSink
from jobs.search import SearchFailed, run_search, train_one_trial
from jobs.spec import JobSpec
from jobs.tune_state import StateRefused, signed_filesystem, state_key
from tests.jobs.test_search import Collector, blobs

KEY = state_key("token-of-this-job")
REPO = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this writes ``marker``: what an attacker's pickle would do, made visible."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "the pickle ran"))


def embedded_pickle(obj: object) -> str:
    """An experiment state whose trial entry is a pickle, as Tune's JSON encoder embeds one."""
    blob = cloudpickle.dumps(obj).hex()
    return json.dumps({"trial_data": [{"_type": "CLOUDPICKLE_FALLBACK", "value": blob}]})


def make_spec(name: str, epochs: int, lrs: list[float], **search: Any) -> JobSpec:
    return JobSpec.model_validate(
        {
            "name": name,
            "dataset": {"id": "d", "target": "y"},
            "model": {"hidden_sizes": [8]},
            "training": {"epochs": epochs, "batch_size": 8},
            "search": {
                "space": {"training.learning_rate": {"choice": lrs}},
                "algorithm": "grid",
                "max_concurrent": 1,
                **search,
            },
        }
    )


def run(collector: Collector, storage: Path, name: str, spec: JobSpec, key: bytes = KEY) -> Any:
    sink = EventSink(collector.url, name, "token")
    try:
        return run_search(spec, blobs(), storage, name, sink, key)
    finally:
        assert sink.close(30)


# --- the signing filesystem on its own ----------------------------------------------------


def test_state_files_are_signed_on_write_and_refused_once_changed(tmp_path: Path) -> None:
    fs = signed_filesystem(tmp_path, KEY)
    exp = tmp_path / "job_1"
    trial = exp / "trial_0"
    trial.mkdir(parents=True)
    files = {
        exp / "tuner.pkl": b"tuner",
        exp / "experiment_state-1.json": b"{}",
        trial / "error.pkl": b"error",
        trial / "result.json": b"{}\n",  # plain data: not a state file, left unsigned
    }
    for path, data in files.items():
        with fs.open_output_stream(str(path)) as f:
            f.write(data)
    for path, data in files.items():
        with fs.open_input_stream(str(path)) as f:
            assert f.readall() == data
    assert not (trial / "result.json.crucible-sig").exists()
    tune_state.verify_experiment(fs, exp)

    marker = tmp_path / "ran"
    (exp / "tuner.pkl").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(StateRefused, match=r"job_1/tuner\.pkl does not match the signature"):
        fs.open_input_file(str(exp / "tuner.pkl"))
    # A signed file copied over another keeps the other's signature: refused too.
    shutil.copy(trial / "error.pkl", exp / "callback-states-1.pkl")
    shutil.copy(trial / "error.pkl.crucible-sig", exp / "callback-states-1.pkl.crucible-sig")
    # A state file that was never signed.
    (exp / "experiment_state-2.json").write_text("{}")
    with pytest.raises(StateRefused) as refused:
        tune_state.verify_experiment(fs, exp)
    assert str(refused.value).split("; ") == [
        "job_1/callback-states-1.pkl does not match the signature this job's driver wrote "
        "(it was changed)",
        "job_1/experiment_state-2.json has no signature of this job's driver",
        "job_1/tuner.pkl does not match the signature this job's driver wrote (it was changed)",
    ]
    assert not marker.exists()

    # Another job's key (another job's token) verifies nothing of this one.
    other = signed_filesystem(tmp_path, state_key("token-of-another-job"))
    with pytest.raises(StateRefused, match=r"job_1/experiment_state-1\.json does not match"):
        other.open_input_stream(str(exp / "experiment_state-1.json"))
    # Nor can a copy inside the store launder an unsigned file into a signed one.
    with pytest.raises(StateRefused, match="copied from an unsigned file"):
        fs.copy_file(str(trial / "result.json"), str(exp / "searcher-state-1.pkl"))


KILLED_WRITER = """
import itertools, sys
from pathlib import Path
from jobs.tune_state import signed_filesystem
root = Path(sys.argv[1])
fs = signed_filesystem(root, bytes.fromhex(sys.argv[2]))
(root / "job_1").mkdir(exist_ok=True)
print("writing", flush=True)
for i in itertools.count():
    for name in ("tuner.pkl", "experiment_state-1.json", "searcher-state-1.pkl"):
        with fs.open_output_stream(str(root / "job_1" / name)) as f:
            f.write(f"{i}:".encode() + b"x" * 20000)
"""


def test_a_driver_killed_while_writing_its_state_leaves_state_that_verifies(
    tmp_path: Path,
) -> None:
    """No window where legitimately written state fails verification: a writer killed (-9)
    at random moments, over and over, always leaves each state file whole and verifying."""
    rng = random.Random(7)
    for _ in range(12):
        writer = subprocess.Popen(
            [sys.executable, "-c", KILLED_WRITER, str(tmp_path), KEY.hex()],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
        time.sleep(rng.uniform(0.0, 0.15))
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
        fs = signed_filesystem(tmp_path, KEY)
        tune_state.verify_experiment(fs, tmp_path / "job_1")
        for name in ("tuner.pkl", "experiment_state-1.json", "searcher-state-1.pkl"):
            path = tmp_path / "job_1" / name
            if path.exists():  # killed before its first write
                with fs.open_input_stream(str(path)) as f:
                    data = f.readall()
                assert data.split(b":")[0].isdigit() and data.endswith(b"x" * 20000)


# --- on a real search ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The storage of a small finished search (one trial, two epochs), its state signed."""
    storage = tmp_path_factory.mktemp("finished") / "tune"
    c = Collector()
    try:
        run(c, storage, "job_1", make_spec("job_1", 2, [0.01]))
    finally:
        c.server.shutdown()
    return storage


def _tuner(storage: Path) -> None:
    (storage / "job_1" / "tuner.pkl").write_bytes(pickle.dumps(Payload(storage / "ran")))


def _tuner_unsigned(storage: Path) -> None:
    _tuner(storage)
    (storage / "job_1" / "tuner.pkl.crucible-sig").unlink()


def _tuner_signed_by_another_job(storage: Path) -> None:
    other = signed_filesystem(storage, state_key("token-of-another-job"))
    with other.open_output_stream(str(storage / "job_1" / "tuner.pkl")) as f:
        f.write(pickle.dumps(Payload(storage / "ran")))


def _newer_experiment_state(storage: Path) -> None:
    # Tune restores the newest experiment state by name, and expands the cloudpickle its JSON
    # embeds ("CLOUDPICKLE_FALLBACK") when it rebuilds the trials.
    state = storage / "job_1" / "experiment_state-9999-12-31_23-59-59.json"
    state.write_text(embedded_pickle(Payload(storage / "ran")))


def _searcher_state(storage: Path) -> None:
    (state,) = (storage / "job_1").glob("basic-variant-state-*.json")
    state.write_bytes(cloudpickle.dumps(Payload(storage / "ran")))


@pytest.mark.parametrize(
    "tamper, refusal",
    [
        (_tuner, r"job_1/tuner.pkl does not match the signature this job's driver wrote"),
        (_tuner_unsigned, r"job_1/tuner.pkl has no signature of this job's driver"),
        (_tuner_signed_by_another_job, r"job_1/tuner.pkl does not match the signature"),
        (_newer_experiment_state, r"job_1/experiment_state-9999-12-31_23-59-59.json has no sig"),
        (_searcher_state, r"job_1/basic-variant-state-[\d_-]+.json does not match the sig"),
    ],
)
def test_a_replaced_state_file_is_not_run_and_the_restore_is_refused(
    finished: Path,
    collector: Collector,
    tmp_path: Path,
    tamper: Callable[[Path], None],
    refusal: str,
) -> None:
    storage = tmp_path / "tune"
    shutil.copytree(finished, storage)
    tamper(storage)
    with pytest.raises(SearchFailed) as failed:
        run(collector, storage, "job_1", make_spec("job_1", 2, [0.01]))
    message = str(failed.value)
    assert message.startswith(
        "the search's saved state failed verification, so none of it was loaded: job_1/"
    )
    assert message.endswith("; submit the job again to start a fresh search")
    assert re.search(refusal, message), message
    assert not (storage / "ran").exists()
    assert not collector.of("trial.started")  # refused before anything ran


def test_a_state_file_changed_after_the_check_is_refused_where_tune_reads_it(
    finished: Path, tmp_path: Path
) -> None:
    """Tune reads the files again after the driver's check; a file replaced in between is
    refused at that read, and the failed resume Tune would catch (and then start the search
    over) fails the search instead."""
    storage = tmp_path / "tune"
    shutil.copytree(finished, storage)
    fs = signed_filesystem(storage, KEY)
    tune_state.verify_experiment(fs, storage / "job_1")  # as run_search does: it passes
    (state,) = (storage / "job_1").glob("experiment_state-*.json")
    state.write_text(embedded_pickle(Payload(storage / "ran")))
    spec = make_spec("job_1", 2, [0.01])
    trainable = tune.with_parameters(train_one_trial, spec_json=spec.model_dump(), data=blobs())
    tuner = tune.Tuner.restore(
        str(storage / "job_1"), trainable=trainable, resume_errored=True, storage_filesystem=fs
    )
    with pytest.raises(StateRefused, match=r"job_1/experiment_state-[\d_-]+.json does not match"):
        tuner.fit()
    assert not (storage / "ran").exists()


def test_a_trial_error_is_read_as_text_and_its_pickle_only_once_verified(
    ray_cluster: None, collector: Collector, tmp_path: Path
) -> None:
    import dataclasses

    import torch

    storage = tmp_path / "tune"
    spec = make_spec("job_2", 2, [0.01], max_failures=0)
    # Weights that fit no layer: the trial raises as it builds its model.
    data = dataclasses.replace(blobs(), init_state={"nope": torch.zeros(3)})
    sink = EventSink(collector.url, "job_2", "token")
    with pytest.raises(SearchFailed, match=r"all 1 trials failed; first error: model\.init_from"):
        run_search(spec, data, storage, "job_2", sink, KEY)
    assert sink.close(30)
    # The event says what this failure was (error.txt on the driver's disk), not "no error
    # recorded" (error.pkl in the store is only there after the next sync).
    (failed,) = collector.of("trial.failed")
    assert failed["error"] == (
        "TrainingError: model.init_from: none of the parent model's layers fit this model; "
        "is it the same architecture on the same input?"
    )
    # Results read each failed trial's error.pkl back from the store: only once it verifies.
    (error_pkl,) = (storage / "job_2").glob("*/error.pkl")
    error_pkl.write_bytes(cloudpickle.dumps(Payload(tmp_path / "ran")))
    fs = signed_filesystem(storage, KEY)
    trainable = tune.with_parameters(train_one_trial, spec_json=spec.model_dump(), data=data)
    restored = tune.Tuner.restore(str(storage / "job_2"), trainable, storage_filesystem=fs)
    with pytest.raises(StateRefused, match=r"job_2/[^/]+/error.pkl does not match the signature"):
        restored.get_results()
    assert not (tmp_path / "ran").exists()


DRIVER = """
import sys
from pathlib import Path
import ray
from jobs.events import EventSink
from jobs.search import run_search
from tests.jobs.test_search import blobs
from tests.jobs.test_search_state import KEY, make_spec
address, storage, url = sys.argv[1:]
ray.init(address=address, log_to_driver=False)
sink = EventSink(url, "job_3", "token")
run_search(make_spec("job_3", 16, [0.01, 0.02]), blobs(), Path(storage), "job_3", sink, KEY)
"""


def test_a_killed_driver_search_is_restored_and_resumes(
    ray_cluster: None, collector: Collector, tmp_path: Path
) -> None:
    """The legitimate case: the driver is killed (-9) mid-search, with one trial finished and
    the next part-way; a new driver of the same job (same key) restores and goes on."""
    storage = tmp_path / "tune"
    address = ray.get_runtime_context().gcs_address
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, address, str(storage), collector.url], cwd=REPO
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            finished = {e["trial_id"] for e in collector.of("trial.finished")}
            going = [
                e
                for e in collector.of("trial.epoch")
                if e["trial_id"] not in finished and e["epoch"] >= 3
            ]
            if finished and going:
                break
            assert driver.poll() is None, "the driver ended before it could be killed"
            assert time.monotonic() < deadline, collector.events
            time.sleep(0.05)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    (interrupted,) = {e["trial_id"] for e in going}
    before = len(collector.events)

    best = run(collector, storage, "job_3", make_spec("job_3", 16, [0.01, 0.02]))

    after = collector.events[before:]
    assert any(e["type"] == "job.running" and e["data"].get("stage") == "restore" for e in after), (
        "the search was not restored"
    )
    started = [e["data"]["trial_id"] for e in after if e["type"] == "trial.started"]
    assert started == [interrupted]  # the finished trial is not run again
    resumed = [e["data"] for e in after if e["type"] == "trial.epoch"]
    # From its checkpoint, not from the start, and on to its last epoch.
    start = resumed[0]["start_epoch"]
    assert start >= 1
    assert [e["epoch"] for e in resumed] == list(range(start + 1, 17))
    assert best.metrics["epoch"] >= 1
    tune_state.verify_experiment(signed_filesystem(storage, KEY), storage / "job_3")


def test_the_driver_derives_the_key_from_its_job_token() -> None:
    """Same job, same token, same key: a relaunched driver verifies what the first signed;
    the key is not the token itself (a signature never doubles as a bearer token)."""
    assert state_key("a") == state_key("a") != state_key("b")
    assert state_key("a") != b"a" and len(state_key("a")) == 32
