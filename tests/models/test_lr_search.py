"""search_lr: one trial per rate, chosen by validation accuracy, then loss, then the smaller rate."""

from __future__ import annotations

from typing import Any

import pytest

from models.engine import TrainConfig, Trainer
from models.engine.lr_search import LrTrial, choose, search_lr
from models.errors import ConfigError, DataError, PromptuneError
from tests.models.engine_toy import ColourData, build_toy


class ScriptedTrainer:
    """Stands in for a Trainer whose trial ends with the given validation scores (or raises)."""

    def __init__(self, outcome: dict[str, float] | BaseException, val_data: Any = "val") -> None:
        self.outcome, self.val_data, self.fits = outcome, val_data, 0

    def fit(self, resume: bool = True) -> Any:
        assert resume is False  # a trial never continues an older state
        self.fits += 1
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return type("Result", (), {"metrics": {"best_epoch": 1, **self.outcome}})()


def scripted(outcomes: dict[float, dict[str, float] | BaseException]) -> Any:
    return lambda lr: ScriptedTrainer(outcomes[lr])


@pytest.mark.parametrize(
    ("outcomes", "chosen"),
    [
        # the highest validation accuracy wins, whatever its loss
        ({0.01: {"val_acc": 0.5, "val_loss": 0.1}, 0.1: {"val_acc": 0.8, "val_loss": 0.9}}, 0.1),
        # equal accuracy: the lower loss
        ({0.01: {"val_acc": 0.8, "val_loss": 0.7}, 0.1: {"val_acc": 0.8, "val_loss": 0.6}}, 0.1),
        # an exact tie: the smaller rate, whichever order the grid was given in
        ({0.1: {"val_acc": 0.8, "val_loss": 0.6}, 0.01: {"val_acc": 0.8, "val_loss": 0.6}}, 0.01),
    ],
)
def test_the_choice_rule(outcomes: dict[float, dict[str, float]], chosen: float) -> None:
    seen: list[tuple[float, int]] = []
    result = search_lr(
        scripted(outcomes),
        list(outcomes),
        on_trial=lambda trial, so_far: seen.append((trial.lr, len(so_far))),
    )
    assert result.chosen == chosen
    assert result.grid == tuple(sorted(outcomes)) and [t.lr for t in result.trials] == sorted(outcomes)
    assert seen == [(lr, n) for n, lr in enumerate(sorted(outcomes), start=1)]  # a report after each trial
    assert result.as_dict() == {
        "grid": sorted(outcomes),
        "trials": [{"lr": lr, **outcomes[lr]} for lr in sorted(outcomes)],
        "chosen": chosen,
    }


def test_a_diverged_trial_is_recorded_and_never_chosen() -> None:
    diverged = PromptuneError("training loss is nan at step 3 (lr 1); lower the learning rate")
    result = search_lr(scripted({0.01: {"val_acc": 0.2, "val_loss": 2.0}, 1.0: diverged}), [0.01, 1.0])
    assert result.chosen == 0.01
    assert result.trials[1] == LrTrial(1.0, None, None)
    with pytest.raises(PromptuneError, match="every learning rate tried diverged"):
        search_lr(scripted({0.5: diverged, 1.0: diverged}), [0.5, 1.0])


def test_other_trial_failures_stop_the_search() -> None:
    with pytest.raises(DataError):
        search_lr(scripted({0.01: DataError("train_data is empty")}), [0.01])


def test_no_validation_data_is_refused_before_anything_trains() -> None:
    method = build_toy()
    data = ColourData(12, seed=1)
    config = TrainConfig(epochs=1, batch_size=4, checkpoint_every_steps=0)
    with pytest.raises(ConfigError) as info:
        search_lr(
            lambda lr: Trainer(method, TrainConfig.from_dict({**config.to_dict(), "lr": lr}), data), [0.1]
        )
    assert info.value.field == "lr" and "validation" in info.value.message
    assert method.prepared == 0  # the trial never started


@pytest.mark.parametrize("grid", [[], [0.1, -1.0], [0.1, 0.1], [float("nan")], [True]])
def test_an_unusable_grid_is_refused(grid: list[Any]) -> None:
    with pytest.raises(ConfigError) as info:
        search_lr(scripted({}), grid)
    assert info.value.field == "lr"


def test_trials_on_the_toy_model_are_real_reproducible_runs() -> None:
    train, val = ColourData(24, seed=1), ColourData(12, seed=2)
    base = TrainConfig(epochs=2, batch_size=8, checkpoint_every_steps=0, seed=3)

    def run(lr: float) -> Trainer:
        config = TrainConfig.from_dict({**base.to_dict(), "lr": lr})
        return Trainer(build_toy(seed=5), config, train, val)  # a fresh method per trial

    grid = [1e-4, 0.3]
    result = search_lr(run, grid)
    assert result.chosen == choose(result.trials).lr
    for trial in result.trials:  # each score is what a plain run at that rate reaches
        alone = run(trial.lr).fit().metrics
        assert (trial.val_acc, trial.val_loss) == (alone["val_acc"], alone["val_loss"])
    # 1e-4 for two epochs barely moves a random head; 0.3 learns the colours
    assert result.chosen == 0.3 and result.trials[1].val_acc > result.trials[0].val_acc
