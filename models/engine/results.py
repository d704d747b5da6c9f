"""What a training run returns: per-epoch summaries and the kept (best-on-validation) state.

The kept state is the one with the highest validation top-1 accuracy; on equal accuracy the lower
validation loss wins, and on an exact tie the EARLIER epoch is kept. Without validation data the
latest learned tensors are kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from ..base import PromptMethod
from .state import ResumeState


@dataclasses.dataclass
class TrainResult:
    best_state: dict[str, torch.Tensor]  # learned tensors of the kept epoch (CPU)
    best_epoch: int | None  # 1-based; None when stopped before the first epoch ended
    metrics: dict[str, Any]
    history: list[dict[str, Any]]  # one entry per finished epoch
    steps: int  # global optimisation steps done
    completed: bool = True  # False when the run stopped at max_steps before the last epoch


def epoch_train_metrics(accum: Mapping[str, Any], epoch: int, step: int) -> dict[str, Any]:
    """The finished epoch's history entry from its running sums: mean loss, train top-1, mean method logs.

    ``train_acc`` is the fraction of the epoch's training images whose logits, as computed by the
    training step (train mode, before that step's update), put the true class first. When no step of the
    epoch computed full logits (see ``TrainTop1``), a method's own ``acc`` log, if any, stands in.
    """
    count = max(1, accum["count"])
    metrics: dict[str, Any] = {
        "epoch": epoch,
        "step": step,
        "lr": accum["lr"],
        "train_loss": accum["loss_sum"] / count,
    }
    if accum.get("seen"):
        metrics["train_acc"] = accum["hits"] / accum["seen"]
    for k, v in sorted(accum["logs"].items()):
        metrics.setdefault(f"train_{k}", v / count)  # the engine's own train_loss and train_acc win
    return metrics


def improves_on_best(val: Mapping[str, float], best: Mapping[str, Any]) -> bool:
    """Strictly better validation (accuracy, then loss): an exact tie keeps the earlier epoch."""
    return (
        not best
        or val["acc"] > best["val_acc"]
        or (val["acc"] == best["val_acc"] and val["loss"] < best["val_loss"])
    )


def train_result(
    state: ResumeState, method: PromptMethod, *, validated: bool, completed: bool
) -> TrainResult:
    """The run's result from its state; ``validated``: the run had validation data."""
    history = list(state.history)
    if validated and state.best_state is not None:
        best_state, best_epoch = state.best_state, state.best["epoch"]
        metrics = {
            "best_epoch": best_epoch,
            "val_acc": state.best["val_acc"],
            "val_loss": state.best["val_loss"],
        }
    else:  # no validation (or none yet): keep the latest weights
        best_state = method.learned_state_dict()
        best_epoch = history[-1]["epoch"] if history else None
        metrics = {"best_epoch": best_epoch}
    if history:
        metrics["train_loss"] = history[-1]["train_loss"]
    metrics.update(steps=state.step, epochs_completed=len(history))
    best_state = {k: v.detach().to("cpu").clone() for k, v in best_state.items()}
    return TrainResult(
        best_state=best_state,
        best_epoch=best_epoch,
        metrics=metrics,
        history=history,
        steps=state.step,
        completed=completed,
    )
