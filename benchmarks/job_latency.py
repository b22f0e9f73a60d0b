"""Where the time goes between `POST /v1/jobs` and the first trained epoch.

Starts a local stack (Ray head + API, like `crucible up`), then in the same run:
  1. baseline: a trivial Ray job (`python -c pass`) submitted straight to Ray's Jobs API,
     timed from submission to SUCCEEDED — the floor any Ray-job-per-search design pays;
  2. Crucible: a one-trial, one-epoch job on 2,000 Adult rows, timed by polling the API
     every 0.1 s: submitted -> running (driver started) -> first trial visible -> first
     epoch stored -> succeeded.
Prints each step and the ratio of Crucible's submit-to-first-epoch to the Ray baseline.

    .venv/bin/python benchmarks/job_latency.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq

from jobs.datasets import BUILTIN
from services.client import Crucible
from services.stack import LocalStack, StackConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_trivial_job(stack: LocalStack, n: int) -> float:
    headers = stack.ray_headers
    url = stack.cfg.dashboard_url
    t0 = time.perf_counter()
    sid = f"bench-{n}-{int(time.time() * 1000)}"
    httpx.post(
        f"{url}/api/jobs/",
        json={"entrypoint": "python -c pass", "submission_id": sid},
        headers=headers,
    ).raise_for_status()
    while httpx.get(f"{url}/api/jobs/{sid}", headers=headers).json()["status"] != "SUCCEEDED":
        time.sleep(0.05)
    return time.perf_counter() - t0


def crucible_job(client: Crucible, dataset_id: str) -> dict[str, float]:
    spec = {
        "name": "latency",
        "dataset": {"id": dataset_id, "target": "income"},
        "model": {"hidden_sizes": [8]},
        "training": {"epochs": 1, "batch_size": 256},
    }
    t0 = time.perf_counter()
    job_id = client.submit_job(spec)["id"]
    marks: dict[str, float] = {"accepted": time.perf_counter() - t0}
    while True:
        job = client.job(job_id)
        now = time.perf_counter() - t0
        if job["status"] != "queued":
            marks.setdefault("running", now)
        trials = client.trials(job_id)
        if trials:
            marks.setdefault("first trial", now)
        if any(t["history"] for t in trials):
            marks.setdefault("first epoch", now)
        if job["status"] in ("succeeded", "failed", "cancelled"):
            assert job["status"] == "succeeded", job["error"]
            marks["succeeded"] = now
            return marks
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="crucible-bench-"))
    cfg = StackConfig(
        data_dir=folder,
        port=free_port(),
        ray_port=free_port(),
        dashboard_port=free_port(),
        serve_port=free_port(),
        client_server_port=free_port(),
        agent_port=free_port(),
    )
    stack = LocalStack(cfg)
    t0 = time.perf_counter()
    stack.start()
    print(f"stack start (Ray head + API ready): {time.perf_counter() - t0:.1f}s")
    try:
        data = folder / "adult2k.parquet"
        pq.write_table(pq.read_table(BUILTIN["adult"].path).slice(0, 2000), data)
        with Crucible(cfg.api_url, (folder / "token").read_text().strip()) as client:
            ds = client.upload_dataset(data, "adult-2k")
            ray_times, runs = [], []
            for i in range(args.repeats):
                ray_times.append(ray_trivial_job(stack, i))
                runs.append(crucible_job(client, ds["id"]))
    finally:
        stack.stop()
    print(f"\nmedian of {args.repeats} runs (s)")
    print(f"  Ray trivial job, submit -> SUCCEEDED : {statistics.median(ray_times):6.2f}")
    for step in ("accepted", "running", "first trial", "first epoch", "succeeded"):
        print(f"  Crucible submit -> {step:<17}: {statistics.median(r[step] for r in runs):6.2f}")
    ratio = statistics.median(r["first epoch"] for r in runs) / statistics.median(ray_times)
    print(f"\nratio Crucible submit->first epoch / Ray trivial job: {ratio:.2f}x")


if __name__ == "__main__":
    main()
