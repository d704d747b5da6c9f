"""Choosing a learning rate on the validation split: one short training run per candidate rate.

:func:`search_lr` trains one trial per rate of a grid (each on a fresh method, built by the caller) and
keeps the rate whose trial reached the best validation accuracy; on equal accuracy the lower validation
loss wins, and on an exact tie the SMALLER rate (the safer one). Each trial's score is its best epoch's,
as the engine keeps it (``TrainResult.metrics``). A trial whose loss became non-finite (the rate is too
high) is recorded without scores and never chosen. Test data never takes part.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConfigError, PromptuneError


@dataclasses.dataclass(frozen=True)
class LrTrial:
    lr: float
    val_acc: float | None  # None: the trial's loss became non-finite
    val_loss: float | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class LrSearchResult:
    chosen: float
    trials: list[LrTrial]
    grid: tuple[float, ...]

    def as_dict(self) -> dict[str, Any]:
        """``{"grid": [...], "trials": [{"lr", "val_acc", "val_loss"}, ...], "chosen": float}``."""
        return {"grid": list(self.grid), "trials": [t.as_dict() for t in self.trials], "chosen": self.chosen}


def _check_grid(grid: Sequence[float]) -> tuple[float, ...]:
    values = tuple(grid)
    if not values:
        raise ConfigError("lr", "the learning-rate grid is empty")
    for lr in values:
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not (math.isfinite(lr) and lr > 0):
            raise ConfigError("lr", f"every rate of the grid must be a positive number, got {lr!r}")
    if len(set(values)) != len(values):
        raise ConfigError("lr", f"the learning-rate grid repeats a rate: {list(values)}")
    return tuple(sorted(float(lr) for lr in values))


def choose(trials: Sequence[LrTrial]) -> LrTrial:
    """The best scored trial: highest val_acc, then lowest val_loss, then the smaller lr."""
    scored = [(t.val_acc, t.val_loss, t) for t in trials if t.val_acc is not None and t.val_loss is not None]
    if not scored:
        raise PromptuneError(
            f"every learning rate tried diverged ({[t.lr for t in trials]}); give a smaller lr"
        )
    return min(scored, key=lambda s: (-s[0], s[1], s[2].lr))[2]


def _diverged(exc: BaseException) -> bool:
    # The engine raises the bare PromptuneError for a non-finite loss (and for nothing else); every other
    # failure (data, config, cancel, pause) has its own subclass and must stop the search.
    return type(exc) is PromptuneError


def search_lr(
    build_trainer: Callable[[float], Any],
    grid: Sequence[float],
    *,
    on_trial: Callable[[LrTrial, list[LrTrial]], None] | None = None,
) -> LrSearchResult:
    """Train one trial per rate of ``grid`` (ascending) and choose the rate by validation accuracy.

    Args:
        build_trainer: ``lr -> Trainer`` on a FRESH method (every trial must start from the same state),
            with validation data and the trial's budget already in its config. Its ``fit(resume=False)``
            runs the trial (the method's ``prepare`` included).
        grid: the rates to try (positive, distinct).
        on_trial: called after each trial with it and every trial so far (progress reports).

    Raises:
        ConfigError: (field ``lr``) the grid is unusable, or a trainer has no validation data: without
            it there is nothing to choose by (test data is never used for a choice).
        PromptuneError: every trial diverged.
    """
    rates = _check_grid(grid)
    trials: list[LrTrial] = []
    for lr in rates:
        trainer = build_trainer(lr)
        if getattr(trainer, "val_data", None) is None:
            raise ConfigError(
                "lr", '"auto" needs validation data: give the dataset a val split or val_fraction > 0'
            )
        try:
            metrics = trainer.fit(resume=False).metrics
            trial = LrTrial(lr, float(metrics["val_acc"]), float(metrics["val_loss"]))
        except PromptuneError as exc:
            if not _diverged(exc):
                raise
            trial = LrTrial(lr, None, None)
        trials.append(trial)
        if on_trial is not None:
            on_trial(trial, list(trials))
    return LrSearchResult(choose(trials).lr, trials, rates)
