"""Trainer(should_pause=...): stop with a resume state at the current step, then continue exactly there."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.engine import read_state
from models.errors import TrainingPaused
from tests.models.test_engine import _assert_same_run, _cfg, _fit


def _pause_before(step: int):
    """A should_pause that answers True when polled before step ``step + 1`` (``step`` steps done)."""
    polls = 0

    def should_pause() -> bool:
        nonlocal polls
        polls += 1
        return polls > step

    return should_pause


@pytest.mark.parametrize("factory", ["toy", "spt"])
def test_pause_writes_the_current_step_and_resumes_bit_identically(tmp_path: Path, factory: str) -> None:
    cfg = _cfg()  # checkpoint_every_steps=2: step 5 is not a checkpoint step
    reference = _fit(factory, tmp_path / "ref", cfg)
    work = tmp_path / "run"
    checkpoints: list[int] = []

    class Recorder:
        def on_checkpoint(self, step: int, path: Path) -> None:
            checkpoints.append(step)

    with pytest.raises(TrainingPaused) as err:
        _fit(factory, work, cfg, should_pause=_pause_before(5), callbacks=[Recorder()])
    assert err.value.code == "paused"
    state = read_state(work)
    assert state is not None and state.step == 5  # nothing to recompute
    assert checkpoints[-1] == 5  # the pause state went through on_checkpoint (the worker uploads it)
    _assert_same_run(reference, _fit(factory, work, cfg))


def test_pause_right_after_a_checkpoint_writes_nothing_more(tmp_path: Path) -> None:
    checkpoints: list[int] = []

    class Recorder:
        def on_checkpoint(self, step: int, path: Path) -> None:
            checkpoints.append(step)

    with pytest.raises(TrainingPaused):
        _fit("toy", tmp_path, _cfg(), should_pause=_pause_before(4), callbacks=[Recorder()])
    assert checkpoints == [0, 2, 4]  # prepare(), steps 2 and 4; no second write of step 4
    state = read_state(tmp_path)
    assert state is not None and state.step == 4
