"""Per-step learning-rate schedule: linear warm-up then half-cosine, as SPT's ``adjust_learning_rate``.

SPT (after MAE's ``util/lr_sched.py``) calls the schedule before every iteration with the
fractional epoch ``epoch + it / iters_per_epoch``::

    lr = base_lr * e / warmup                                        if e < warmup
    lr = min_lr + (base_lr - min_lr) * 0.5 * (1 + cos(pi * (e - warmup) / (epochs - warmup)))

The lr is a pure function of the global step, so a resumed run needs no scheduler state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def lr_at(
    step: int, steps_per_epoch: int, *, lr: float, min_lr: float, warmup_epochs: float, epochs: int
) -> float:
    """Learning rate for the optimiser step that follows ``step`` completed steps."""
    if steps_per_epoch < 1:
        raise ValueError("steps_per_epoch must be >= 1")
    e = step / steps_per_epoch
    if e < warmup_epochs:
        return lr * e / warmup_epochs
    span = epochs - warmup_epochs
    progress = min(1.0, (e - warmup_epochs) / span) if span > 0 else 1.0
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(param_groups: Iterable[dict[str, Any]], lr: float) -> None:
    """Apply ``lr`` to every group, honouring an optional per-group ``lr_scale`` (as MAE/SPT do)."""
    for group in param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
