"""``crucible demo``: the whole flow on the built-in Adult data, narrated.

Start the embedded stack, submit a small search, follow it, show the leaderboard, the
evaluation and the audit, promote the winner and ask the endpoint for predictions.
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow.parquet as pq
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from jobs.datasets import BUILTIN
from services.client import Crucible
from services.progress import follow

DEMO_SPEC: dict[str, Any] = {
    "name": "adult-demo",
    "dataset": {
        "id": "ds_builtin_adult",
        "target": "income",
        "split": {"validation": 0.15, "test": 0.15, "seed": 7},
    },
    "model": {
        "architecture": "mlp",
        "hidden_sizes": [64, 32],
        "activation": "relu",
        "dropout": 0.1,
    },
    "training": {"optimizer": "adam", "learning_rate": 0.002, "batch_size": 256, "epochs": 4},
    "search": {
        "space": {
            "training.learning_rate": {"loguniform": [0.0005, 0.01]},
            "model.hidden_sizes": {"choice": [[32], [64, 32], [128, 64]]},
        },
        "num_trials": 4,
        "max_concurrent": 2,
        "metric": "val_accuracy",
    },
    "audit": {"sensitive_features": ["sex", "race"]},
}


def run_demo(client: Crucible, console: Console) -> int:
    t0 = time.monotonic()
    job = client.submit_job(DEMO_SPEC)
    console.print(f"[bold]Submitted[/] job {job['id']} (4 trials, 4 epochs each)")
    job = follow(client, job["id"], console)  # progress bars, then the leaderboard
    if job["status"] != "succeeded":
        console.print(f"[red]Job {job['status']}[/]: {job['error']}")
        return 1
    console.print(f"Search finished in {job['duration_s']:.1f}s")

    ev = client.evaluation(job["id"])
    console.print(
        f"[bold]Test split[/] ({ev['num_rows']} rows): accuracy {ev['accuracy']:.4f}, "
        f"F1 macro {ev['f1_macro']:.4f}, precision {ev['precision']:.4f}, "
        f"recall {ev['recall']:.4f} for '{ev['positive_class']}'"
    )
    cm = Table(title="Confusion matrix (rows: true, columns: predicted)")
    cm.add_column("")
    for c in ev["classes"]:
        cm.add_column(str(c))
    for c, row in zip(ev["classes"], ev["confusion_matrix"], strict=True):
        cm.add_row(str(c), *map(str, row))
    console.print(cm)

    audit = client.audit(job["id"])
    table = Table(title=f"Fairness audit (favourable outcome: {audit['positive_label']})")
    for col in ("feature", "groups", "DP difference", "DP ratio", "EO difference"):
        table.add_column(col)

    def between(d: dict[str, Any], family: str, kind: str) -> str:
        value = d[family]["between_groups"][kind]
        return "-" if value is None else f"{value:.3f}"

    for name, sec in audit["features"].items():
        d = sec["disparities"]
        table.add_row(
            name,
            str(len(sec["groups"])),
            between(d, "demographic_parity", "difference"),
            between(d, "demographic_parity", "ratio"),
            between(d, "equalized_odds", "difference"),
        )
    console.print(table)
    for c in audit["checks"]:
        mark = "[green]pass[/]" if c["passed"] else "[red]FAIL[/]"
        console.print(f"  {mark} {escape(c['reason'])}")
    console.print(f"  report: crucible jobs report {job['id']} -o audit.html")

    console.print("[bold]Promoting[/] to endpoint 'adult' ...")
    promo = client.promote(job["id"], "adult")
    console.print(f"  model {promo['model_id']} serving at {promo['url']}")
    rows = pq.read_table(BUILTIN["adult"].path).slice(0, 3).to_pylist()
    instances = [{k: v for k, v in r.items() if k != "income"} for r in rows]
    out = client.predict(promo["url"], instances)
    for r, label, probs in zip(rows, out["predictions"], out["probabilities"], strict=True):
        console.print(
            f"  age {r['age']}, {r['occupation']}: predicted {label} "
            f"(p={probs[label]:.2f}), actual {r['income']}"
        )
    console.print(
        f"[bold green]Demo complete[/] in {time.monotonic() - t0:.0f}s "
        "from submission to prediction."
    )
    return 0
