"""How the client verbs print: one-line summaries, aligned tables, JSON, reports, and the live job view.

``watch`` draws a rich progress bar (phase, progress, loss, accuracy) when stdout is a terminal, and prints
one plain line per event otherwise (or one JSON object per event with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from promptune._client import Client
from promptune._types import Backbone, Dataset, Job, JobEvent, Prediction, Report, TunedModel


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def show(args: argparse.Namespace, item: Any, line: Callable[[Any], str]) -> None:
    print_json(item.raw) if getattr(args, "json", False) else print(line(item))


def show_done(args: argparse.Namespace, value: dict[str, Any], text: str) -> None:
    print_json(value) if getattr(args, "json", False) else print(text)


def print_table(rows: Sequence[list[str]]) -> None:
    if not rows:
        print("(none)")
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _when(item: Any) -> str:
    return item.created_at.strftime("%Y-%m-%d %H:%M:%S") if item.created_at else "-"


def backbone_row(b: Backbone) -> list[str]:
    size = f"{b.size_bytes / 1e6:.0f} MB" if b.size_bytes else "-"
    return [
        b.name,
        b.family,
        b.kind,
        b.availability or ("available" if b.available else "missing"),
        size,
        b.source,
    ]


def dataset_line(d: Dataset) -> str:
    return f"dataset {d.id} {d.name!r}: {d.num_images} images, {d.num_classes} classes, splits {d.splits}"


def dataset_row(d: Dataset) -> list[str]:
    return [d.id, d.name, f"{d.num_images} images", f"{d.num_classes} classes", _when(d)]


def _metrics(metrics: dict[str, Any]) -> str:
    keys = [k for k in ("val_acc", "test_acc", "train_loss") if isinstance(metrics.get(k), int | float)]
    return " ".join(f"{k}={metrics[k]:.4g}" for k in keys)


def job_line(j: Job) -> str:
    parts = [f"job {j.id} {j.status}", f"{j.method} on {j.backbone}", f"progress {j.progress:.0%}"]
    if j.phase:
        parts.append(f"phase {j.phase}")
    if j.model_id:
        parts.append(f"model {j.model_id}")
    if j.error:
        parts.append(f"error {j.error.code}: {j.error.message}")
    if _metrics(j.metrics):
        parts.append(_metrics(j.metrics))
    return ", ".join(parts)


def job_row(j: Job) -> list[str]:
    return [j.id, j.status, j.method, j.backbone, f"{j.progress:.0%}", j.model_id or "-", _when(j)]


def model_line(m: TunedModel) -> str:
    return f"model {m.id}: {m.method} on {m.backbone}, {len(m.classes)} classes, job {m.job_id} {_metrics(m.metrics)}".rstrip()


def model_row(m: TunedModel) -> list[str]:
    return [m.id, m.method, m.backbone, f"{len(m.classes)} classes", _metrics(m.metrics) or "-", _when(m)]


def print_report(r: Report) -> None:
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    print(f"model {r.model_id}: {r.num_samples} {r.split} images")
    print(f"accuracy {pct(r.accuracy)}  macro F1 {pct(r.macro_f1)}  weighted F1 {pct(r.weighted_f1)}")
    rows = [["class", "precision", "recall", "f1", "support"]]
    rows += [[n, pct(m.precision), pct(m.recall), pct(m.f1), str(m.support)] for n, m in r.per_class.items()]
    print_table(rows)
    if r.lr_search:
        print(f"learning rate chosen by search: {r.lr_search.get('chosen')}")


def print_predictions(images: Sequence[str], predictions: Sequence[Prediction], *, as_json: bool) -> None:
    if as_json:
        print_json([{"image": image, **p.raw} for image, p in zip(images, predictions, strict=True)])
        return
    for image, p in zip(images, predictions, strict=True):
        others = ", ".join(f"{t.label} {t.score:.3f}" for t in p.top_k[1:])
        print(f"{image}: {p.label} ({p.score:.3f})" + (f"  [{others}]" if others else ""))


def event_line(e: JobEvent) -> str:
    """One event as a plain line: epochs with their metrics, progress with loss, statuses as they are."""
    d = e.data
    if e.type == "metrics" and "epoch" in d:
        figures = " ".join(f"{k}={v:.4g}" for k, v in d.items() if k != "epoch" and isinstance(v, float))
        return f"epoch {d['epoch']}: {figures}"
    if e.type == "message" and "step" in d and "total_steps" in d:
        figures = " ".join(f"{k}={d[k]:.4g}" for k in ("loss", "acc") if isinstance(d.get(k), int | float))
        return f"step {d['step']}/{d['total_steps']} {figures}".rstrip()
    return f"[{e.type}] {e.message}"


def watch(client: Client, job_id: str, *, as_json: bool) -> Job:
    """Follow the job until it ends, drawing its progress; returns the final job."""
    if as_json:
        return client.jobs.wait(job_id, on_event=lambda e: print(json.dumps(e.raw), flush=True))
    if not sys.stdout.isatty():
        job = client.jobs.wait(job_id, on_event=lambda e: print(event_line(e), flush=True))
        print(job_line(job))
        return job
    return _watch_live(client, job_id)


def _watch_live(client: Client, job_id: str) -> Job:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    console = Console(highlight=False)  # job text is printed as it is: no colouring, no markup
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[figures]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"job {job_id[:8]}", total=1.0, figures="")
        figures: dict[str, float] = {}

        def on_event(e: JobEvent) -> None:
            d = e.data
            for key, name in (
                ("loss", "loss"),
                ("acc", "acc"),
                ("val_acc", "val_acc"),
                ("train_loss", "loss"),
            ):
                if isinstance(d.get(key), int | float):
                    figures[name] = float(d[key])
            done = d.get("progress")
            if done is None and d.get("total_steps"):
                done = d.get("step", 0) / d["total_steps"]
            phase = d.get("phase") or d.get("status")
            if e.type == "metrics" or (e.type == "status" and e.message):
                progress.console.print(event_line(e), markup=False)
            progress.update(
                task,
                completed=float(done) if done is not None else None,
                description=f"job {job_id[:8]} {phase}" if phase else None,
                figures=" ".join(f"{k} {v:.4g}" for k, v in figures.items()),
            )

        job = client.jobs.wait(job_id, on_event=on_event)
        if job.status == "succeeded":
            progress.update(task, completed=1.0)
    console.print(job_line(job), markup=False)
    return job
