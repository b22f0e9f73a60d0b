"""Live view of a running job for the CLI: a progress bar per trial and a leaderboard.

Driven by the job's server-sent events (``GET /v1/jobs/{id}/events``); a dropped stream is
resumed from the last event seen, so nothing is shown twice or missed.
"""

from __future__ import annotations

from typing import Any

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from jobs.spec import natural_mode
from services.client import FINAL, Crucible


def planned_epochs(spec: dict[str, Any]) -> int:
    epochs = int(spec["training"]["epochs"])
    searched = spec["search"]["space"].get("training.epochs")
    if searched:
        values = searched.get("choice") or searched.get("grid") or searched.get("randint") or []
        epochs = max([epochs, *(int(v) for v in values)])
    cap = spec["search"].get("max_epochs_per_trial")
    return min(epochs, cap) if cap else epochs


def leaderboard(trials: list[dict[str, Any]], metric: str, mode: str) -> Table:
    table = Table(title=f"Leaderboard ({metric}, best epoch)")
    searched = sorted({k for t in trials for k in t["config"]})
    for col in ("trial", "status", "epochs", *searched, metric):
        table.add_column(col)

    def score(t: dict[str, Any]) -> float:
        values = [h[metric] for h in t["history"] if metric in h]
        if not values:
            return float("-inf") if mode == "max" else float("inf")
        return max(values) if mode == "max" else min(values)

    for t in sorted(trials, key=score, reverse=mode == "max"):
        cells = [_fmt(t["config"].get(k)) for k in searched]
        table.add_row(
            t["trial_id"], t["status"], str(t["epochs_completed"]), *cells, _fmt(score(t))
        )
    return table


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.4f}"
    return str(v)


def follow(client: Crucible, job_id: str, console: Console) -> dict[str, Any]:
    """Show the job's progress until it ends; return its final state."""
    job = client.job(job_id)
    spec = job["spec"]
    metric = spec["search"]["metric"] or "val_accuracy"
    total = planned_epochs(spec)
    bars: dict[str, TaskID] = {}
    last_id = 0
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        while True:
            try:
                for ev in client.events(job_id, after=last_id):
                    last_id = ev["id"]
                    _show(progress, bars, ev, total, metric)
                break  # the stream ends when the job has ended
            except httpx.TransportError:
                continue  # API restarted: resume after the last event seen
    job = client.job(job_id)
    if job["status"] in FINAL:
        console.print(
            leaderboard(
                client.trials(job_id),
                metric,
                spec["search"].get("mode") or natural_mode(metric),
            )
        )
    return job


def _task(progress: Progress, task_id: TaskID) -> Task:
    return next(t for t in progress.tasks if t.id == task_id)


def _show(
    progress: Progress, bars: dict[str, TaskID], ev: dict[str, Any], total: int, metric: str
) -> None:
    kind, d = ev["type"], ev["data"]
    trial = d.get("trial_id")
    if kind == "job.status":
        progress.console.print(f"job {d['status']}" + (f": {d['error']}" if d.get("error") else ""))
    elif kind == "job.relaunched":
        progress.console.print(f"driver lost ({d['reason']}); relaunched, attempt {d['attempt']}")
    elif kind == "job.waiting":
        progress.console.print(f"[yellow]{d.get('reason', 'waiting for resources')}[/]")
    elif kind == "job.resumed":
        progress.console.print(f"resources free: trials run again (waited {d['waited_s']:.0f} s)")
    elif kind == "trial.started" and trial not in bars:
        bars[trial] = progress.add_task(f"trial {d['number']:>3} {trial}", total=total)
    elif kind == "trial.epoch":
        if trial not in bars:
            bars[trial] = progress.add_task(f"trial {trial}", total=total)
        value = d["metrics"].get(metric)
        label = f" {metric}={value:.4f}" if value is not None else ""
        desc = _task(progress, bars[trial]).description.split(" ", 3)[:3]
        progress.update(bars[trial], completed=d["epoch"], description=" ".join(desc) + label)
    elif kind in ("trial.finished", "trial.stopped", "trial.failed") and trial in bars:
        task = _task(progress, bars[trial])
        if kind == "trial.finished":
            progress.update(bars[trial], completed=task.completed, total=task.completed or total)
        else:
            what = "stopped early" if kind == "trial.stopped" else f"failed: {d.get('error')}"
            progress.update(bars[trial], description=f"{task.description} ({what})")
