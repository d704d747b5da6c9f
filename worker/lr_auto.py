"""lr "auto": before the real training, try the plan's grid of rates on the validation split.

The runner calls :func:`choose_lr` when ``plan.lr_grid`` is set (the job asked for ``"lr": "auto"``,
app/core/job_plan.py). Each trial builds a fresh method on the already loaded backbone, trains it for
``plan.lr_trial_epochs`` epochs on the job's own schedule shape (``lr_trial_config``), and is scored by its
best validation epoch; the choice rule is the models library's (``search_lr``). Trials write no resume
state: a job handed back or retried during the search runs the search again from the start. Once the
real training has written a resume state, a later attempt must NOT search again (on a GPU a rerun could
choose another rate, and the state would no longer match the recipe): :func:`resumed_lr` reads the rate
that state was trained with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from app.core.job_plan import JobPlan, lr_trial_config

Report = Callable[[str, dict[str, Any]], None]


def _progress(grid: tuple[float, ...], trials: list[Any], chosen: float | None) -> dict[str, Any]:
    """The ``lr_search`` payload: the same shape in every report and in the model's report."""
    return {"grid": list(grid), "trials": [t.as_dict() for t in trials], "chosen": chosen}


def _describe(trial: Any) -> str:
    if trial.val_acc is None:
        return f"lr {trial.lr:g}: the loss diverged"
    return f"lr {trial.lr:g}: val acc {trial.val_acc:.1%}, val loss {trial.val_loss:.4f}"


def choose_lr(
    *,
    method_name: str,
    backbone: Any,
    plan: JobPlan,
    data: Any,
    device: Any,
    report: Report,
    init_method: Callable[[Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    should_pause: Callable[[], bool] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Search ``plan.lr_grid``; returns ``(plan.train_config at the chosen lr, lr_search dict)``.

    Args:
        backbone: the loaded backbone (moved to ``device`` here).
        data: the runner's ``LoadedData`` (``class_names``, ``train``, ``val``).
        report: ``(text, lr_search dict)`` after each trial (``chosen`` None) and once for the choice.
        init_method: applied to each trial's fresh method before training (``init_from``'s tensors).
        should_stop, should_pause: polled by every trial's trainer, as in the real training.

    Raises:
        ConfigError: (field ``lr``) there is no validation data.
    """
    import torch

    from models import ConfigError, Trainer, build_method, search_lr

    if plan.lr_grid is None or plan.lr_trial_epochs is None:
        raise ValueError("choose_lr needs a plan whose lr is 'auto'")
    if data.val is None:
        raise ConfigError(
            "lr", '"auto" needs validation data: give the dataset a val split or val_fraction > 0'
        )
    grid, trial_epochs = plan.lr_grid, plan.lr_trial_epochs
    backbone.model.to(device)

    def build_trainer(lr: float) -> Any:
        torch.manual_seed(plan.train_config.seed)  # every trial starts from the same initial tensors
        method = build_method(method_name, backbone, plan.method_config, data.class_names)
        if init_method is not None:
            init_method(method)
        method.to(device)
        config = lr_trial_config(plan.train_config, lr, trial_epochs)
        return Trainer(
            method, config, data.train, data.val, should_stop=should_stop, should_pause=should_pause
        )

    def on_trial(trial: Any, trials: list[Any]) -> None:
        text = f"lr search: trial {len(trials)} of {len(grid)} ({trial_epochs} epochs), {_describe(trial)}"
        report(text, _progress(grid, trials, None))

    result = search_lr(build_trainer, grid, on_trial=on_trial)
    chosen = result.as_dict()
    best = next(t for t in result.trials if t.lr == result.chosen)
    report(f"lr search: chose lr {result.chosen:g} ({_describe(best)})", chosen)
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.empty_cache()  # the trials' optimizer states are garbage now
    return dataclasses.replace(plan.train_config, lr=result.chosen), chosen


def resumed_lr(state: Any, plan: JobPlan) -> Any:
    """``plan.train_config`` at the rate a resume state (``models.read_state``) was trained with, or None
    when the state does not name one (then search)."""
    lr = (state.fingerprint_payload or {}).get("train", {}).get("lr")
    if isinstance(lr, bool) or not isinstance(lr, int | float):
        return None
    return dataclasses.replace(plan.train_config, lr=float(lr))
