"""A tuned model's evaluation report: metrics on its held-out split, every epoch's history, the lr search.

The report is the JSON served by ``GET /v1/models/{id}/report`` (schema ``app/schemas/reports.py``) and
stored in ``tuned_models.report``; docs/reports.md defines every number. Floats are rounded to 6 digits,
like the job's metrics, so the report's ``accuracy`` is exactly the job's ``test_acc`` (or the
``val_acc`` of the kept epoch when the dataset has no test split).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from worker.job_data import LoadedData
from worker.reporting import jsonable

# The fields of one epoch in the report's history (missing ones are null: validation may be skipped).
HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")
DIGITS = 6


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, DIGITS)
    if isinstance(value, Mapping):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def _number(value: Any) -> float | None:
    return None if value is None else round(float(value), DIGITS)


def history_rows(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The engine's per-epoch history reduced to the report's fields, in epoch order."""
    return [
        {"epoch": int(entry["epoch"]), **{name: _number(entry.get(name)) for name in HISTORY_FIELDS[1:]}}
        for entry in history
    ]


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """The kept model's pass over its held-out split: ``test``, or ``val`` for a dataset without one."""

    split: str
    result: Any  # models.engine.passes.EvalPass: labels, predictions, loss_sum


def evaluate_held_out(trainer: Any, data: LoadedData) -> HeldOut | None:
    """One pass of the kept model over the test split (else the validation split; else None)."""
    for split in ("test", "val"):
        part = data.parts()[split]
        if part is not None:
            return HeldOut(split, trainer.evaluation_pass(part))
    return None


def job_metrics(result: Any, held_out: HeldOut | None, data: LoadedData) -> dict[str, Any]:
    """The job's metrics: the engine's (best_epoch, val_acc ...), test_acc and test_loss, the split sizes."""
    metrics = jsonable(result.metrics)
    if held_out is not None and held_out.split == "test":
        metrics.update(
            test_acc=round(held_out.result.accuracy, DIGITS), test_loss=round(held_out.result.loss, DIGITS)
        )
    metrics.update({f"num_{name}": size for name, size in data.sizes().items()})
    return metrics


def build_report(
    model_id: str,
    held_out: HeldOut | None,
    class_names: Sequence[str],
    history: Sequence[Mapping[str, Any]],
    *,
    lr_search: dict[str, Any] | None = None,
    created_at: datetime | None = None,
) -> dict[str, Any] | None:
    """The report of ``model_id`` from its held-out pass; None when the job had no split to measure on.

    Args:
        history: the engine's per-epoch history (``TrainResult.history``).
        lr_search: ``{"grid": [...], "trials": [{"lr", "val_acc", "val_loss"}, ...], "chosen": lr}`` when the
            job's learning rate was searched (``lr: "auto"``), else None.
    """
    from models import classification_metrics

    if held_out is None:
        return None
    metrics = classification_metrics(held_out.result.labels, held_out.result.predictions, class_names)
    return {
        "model_id": model_id,
        "split": held_out.split,
        **_rounded(metrics),
        "history": history_rows(history),
        "lr_search": _rounded(lr_search) if lr_search is not None else None,
        "baseline": None,  # reserved: a zero-shot / linear-probe baseline on the same split
        "created_at": (created_at or datetime.now(UTC)).isoformat(),
    }
