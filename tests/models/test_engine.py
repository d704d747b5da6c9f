"""The training engine: config validation, schedule, best-on-val, callbacks and cancellation, on a toy
method (exact stop/resume lives in test_engine_resume.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from models.engine import TrainConfig, Trainer, lr_at, read_state
from models.engine.state import STATE_JSON
from models.errors import ConfigError, DataError, TrainingCancelled

# test_engine_pause.py imports _assert_same_run and _fit from this module: they stay re-exported here.
from tests.models.engine_runs import _assert_same_run as _assert_same_run
from tests.models.engine_runs import _cfg, _toy
from tests.models.engine_runs import _fit as _fit
from tests.models.engine_toy import ColourData

pytestmark = pytest.mark.timeout(300)


# ---- config -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("epochs", 1.5),
        ("batch_size", 0),
        ("lr", 0.0),
        ("lr", -1),
        ("optimizer", "adam"),
        ("momentum", 1.0),
        ("betas", (0.9,)),
        ("betas", (0.9, 1.0)),
        ("weight_decay", -0.1),
        ("head_weight_decay", -1),
        ("warmup_epochs", -1),
        ("warmup_epochs", 3),
        ("min_lr", 1.0),
        ("seed", -1),
        ("grad_clip", 0.0),
        ("checkpoint_every_steps", -1),
        ("eval_every_epochs", 0),
        ("max_steps", 0),
        ("num_workers", -1),
        ("eval_batch_size", 0),
        ("drop_last", "yes"),
        ("lr", True),
        ("seed", "1"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({"epochs": 3, "lr": 0.01, field: value})
    assert err.value.field == field


def test_config_round_trip_and_unknown_keys() -> None:
    cfg = TrainConfig.from_dict({"betas": [0.8, 0.99], "optimizer": "sgd", "grad_clip": 1.0})
    assert cfg.betas == (0.8, 0.99)
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({"learning_rate": 0.1})
    assert err.value.field == "learning_rate"
    assert "max_steps" not in cfg.trajectory_dict() and "lr" in cfg.trajectory_dict()


# ---- schedule -----------------------------------------------------------------------------
def test_schedule_matches_spt_adjust_learning_rate() -> None:
    kw = {"lr": 0.1, "min_lr": 0.001, "warmup_epochs": 2.0, "epochs": 10}
    spe = 4
    assert lr_at(0, spe, **kw) == 0.0
    assert lr_at(4, spe, **kw) == pytest.approx(0.05)  # linear warm-up, per step
    assert lr_at(8, spe, **kw) == pytest.approx(0.1)  # peak at the end of warm-up
    e = 25 / spe
    expected = 0.001 + (0.1 - 0.001) * 0.5 * (1 + math.cos(math.pi * (e - 2) / 8))
    assert lr_at(25, spe, **kw) == pytest.approx(expected)
    assert lr_at(40, spe, **kw) == pytest.approx(0.001)
    lrs = [lr_at(s, spe, **kw) for s in range(8, 40)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))  # monotone cosine decay
    assert lr_at(3, spe, lr=0.1, min_lr=0.0, warmup_epochs=0.0, epochs=1) == pytest.approx(
        0.1 * 0.5 * (1 + math.cos(math.pi * 0.75))
    )


# ---- training -----------------------------------------------------------------------------
def test_learns_and_keeps_best_on_validation(tmp_path: Path) -> None:
    method, train, val = _toy()
    cfg = _cfg(epochs=6, lr=0.1, checkpoint_every_steps=0)
    result = Trainer(method, cfg, train, val, work_dir=tmp_path).fit()
    assert result.completed and result.steps == 6 * 5
    assert len(result.history) == 6 and [h["epoch"] for h in result.history] == list(range(1, 7))
    accs = [h["val_acc"] for h in result.history]
    assert max(accs) >= 0.99 > 1 / 3  # a colour task: well above chance
    best = result.best_epoch
    assert result.history[best - 1]["val_acc"] == max(accs)
    # earliest epoch among the ties on (acc, then loss)
    key = [(h["val_acc"], -h["val_loss"]) for h in result.history]
    assert best - 1 == key.index(max(key))
    # best_state really is that epoch's model: evaluating it reproduces the recorded metrics
    method.load_learned_state_dict(result.best_state)
    again = Trainer(method, cfg, train, val).evaluate(val)
    assert again["acc"] == result.metrics["val_acc"]
    assert again["loss"] == pytest.approx(result.metrics["val_loss"], rel=1e-6)


def test_without_validation_keeps_last_epoch() -> None:
    method, train, _ = _toy()
    result = Trainer(method, _cfg(epochs=2), train).fit()
    assert result.best_epoch == 2
    for k, v in method.learned_state_dict().items():
        assert torch.equal(result.best_state[k], v)
    assert "val_acc" not in result.history[-1]


def test_eval_every_epochs_and_last_epoch() -> None:
    method, train, val = _toy()
    result = Trainer(method, _cfg(epochs=5, eval_every_epochs=2), train, val).fit()
    assert ["val_acc" in h for h in result.history] == [False, True, False, True, True]


def test_only_learned_tensors_change_and_grad_contract() -> None:
    method, train, _ = _toy()
    frozen = {k: v.clone() for k, v in method.backbone.model.state_dict().items()}
    before = method.learned_state_dict()
    Trainer(method, _cfg(epochs=1), train).fit()
    for k, v in method.backbone.model.state_dict().items():
        assert torch.equal(frozen[k], v)
    assert any(not torch.equal(before[k], v) for k, v in method.learned_state_dict().items())


def test_refuses_unfrozen_backbone_or_bad_groups() -> None:
    method, train, _ = _toy()
    next(method.backbone.model.parameters()).requires_grad_(True)
    with pytest.raises(RuntimeError, match="frozen|backbone"):
        Trainer(method, _cfg(), train).fit()

    method, train, _ = _toy()
    method.param_groups = lambda wd, hwd: [{"name": "prompt", "params": [method.prompt], "weight_decay": wd}]  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="not optimised"):
        Trainer(method, _cfg(), train).fit()


class _Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield from ()


def test_rejects_unusable_data() -> None:
    method, train, _ = _toy()
    with pytest.raises(DataError):
        Trainer(method, _cfg(), _Stream())
    with pytest.raises(DataError):
        Trainer(method, _cfg(batch_size=100, drop_last=True), train)
    other = ColourData(10, num_classes=4)
    with pytest.raises(DataError, match="class_names"):
        Trainer(method, _cfg(), other)


def test_callbacks_and_their_exceptions(tmp_path: Path) -> None:
    events: list[tuple] = []

    class Recorder:
        def on_progress(self, step, total, logs):
            events.append(("progress", step, total, sorted(logs)))

        def on_epoch_end(self, epoch, metrics):
            events.append(("epoch", epoch, metrics["val_acc"]))

        def on_checkpoint(self, step, path):
            assert Path(path).name == STATE_JSON and Path(path).exists()
            events.append(("ckpt", step))

    method, train, val = _toy()
    result = Trainer(
        method, _cfg(epochs=2), train, val, work_dir=tmp_path, callbacks=[Recorder(), object()]
    ).fit()
    progress = [e for e in events if e[0] == "progress"]
    assert [e[1] for e in progress] == list(range(1, result.steps + 1))
    assert all(e[2] == 10 and {"loss", "lr", "epoch", "acc"} <= set(e[3]) for e in progress)
    assert [e[1] for e in events if e[0] == "epoch"] == [1, 2]
    assert [e[1] for e in events if e[0] == "ckpt"] == [0, 2, 4, 5, 6, 8, 10]

    class Boom:
        def on_epoch_end(self, epoch, metrics):
            raise KeyError("boom")

    method, train, val = _toy()
    with pytest.raises(KeyError, match="boom"):
        Trainer(method, _cfg(), train, val, callbacks=[Boom()]).fit()


def test_cancellation_raises_and_writes_nothing_more(tmp_path: Path) -> None:
    snapshot: dict[str, bytes] = {}
    calls = 0

    def should_stop() -> bool:
        nonlocal calls
        calls += 1
        if calls == 6:  # polled before step 6 (5 steps done, last state at step 4)
            snapshot.update({p.name: p.read_bytes() for p in tmp_path.iterdir()})
            return True
        return False

    method, train, val = _toy()
    with pytest.raises(TrainingCancelled) as err:
        Trainer(method, _cfg(), train, val, work_dir=tmp_path, should_stop=should_stop).fit()
    assert err.value.code == "cancelled_by_user"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == snapshot
    assert read_state(tmp_path).step == 4


def test_prepare_runs_on_fresh_runs_only(tmp_path: Path) -> None:
    method, train, val = _toy()
    Trainer(method, _cfg(max_steps=3), train, val, work_dir=tmp_path).fit()
    assert method.prepared == 1
    method2, train, val = _toy()
    Trainer(method2, _cfg(), train, val, work_dir=tmp_path).fit()
    assert method2.prepared == 0
