"""The training engine: config validation, schedule, best-on-val, callbacks, cancellation, and
exact stop/resume (bit-identical learned tensors) with AdamW and SGD, on a toy method and SPT."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from models.engine import TrainConfig, Trainer, lr_at, read_state, state_files
from models.engine.state import PREV_JSON, STATE_JSON
from models.errors import ConfigError, DataError, TrainingCancelled
from tests.models.engine_toy import ColourData, build_toy

pytestmark = pytest.mark.timeout(300)


# ---- method factories: the toy method always; real SPT on the tiny timm ViT when it imports ----
def _toy(seed: int = 0):
    return build_toy(num_classes=3, seed=seed), ColourData(24, seed=1), ColourData(9, seed=2)


def _spt(seed: int = 0):
    spt = pytest.importorskip("models.spt")
    from models.backbones.timm_loader import load_timm_backbone
    from tests.tiny import tiny_vit_spec

    torch.manual_seed(seed)
    backbone = load_timm_backbone(tiny_vit_spec())
    method = spt.SPTModel(
        backbone,
        spt.SPTConfig(mode="deep", num_prompts=2, init="random", init_max_images=8, init_batch_size=4),
        ["c0", "c1", "c2"],
    )
    return method, ColourData(12, seed=1, size=32), ColourData(6, seed=2, size=32)


def _rpp(seed: int = 0):
    rpp = pytest.importorskip("models.rpp")
    from models.backbones.clip_loader import load_clip_backbone
    from tests.tiny import tiny_clip_spec

    torch.manual_seed(seed)
    backbone = load_clip_backbone(tiny_clip_spec())
    method = rpp.RPPModel(backbone, rpp.RPPConfig.from_dict({"num_sampled_classes": 2}), ["c0", "c1", "c2"])
    return method, ColourData(12, seed=1, size=32), ColourData(6, seed=2, size=32)


FACTORIES = {"toy": _toy, "spt": _spt, "rpp": _rpp}


def _cfg(**kw: Any) -> TrainConfig:
    base = {
        "epochs": 3,
        "batch_size": 5,
        "lr": 0.05,
        "warmup_epochs": 0.5,
        "min_lr": 1e-4,
        "seed": 7,
        "checkpoint_every_steps": 2,
        "weight_decay": 0.01,
        "head_weight_decay": 0.1,
    }
    base.update(kw)
    return TrainConfig.from_dict(base)


def _fit(factory: str, work_dir: Path | None, cfg: TrainConfig, **kw: Any):
    method, train, val = FACTORIES[factory]()
    result = Trainer(method, cfg, train, val, work_dir=work_dir, **kw).fit()
    return method, result


def _assert_same_run(a, b) -> None:
    (ma, ra), (mb, rb) = a, b
    sa, sb = ma.learned_state_dict(), mb.learned_state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"learned tensor {k} differs"
    for k in ra.best_state:
        assert torch.equal(ra.best_state[k], rb.best_state[k]), f"best tensor {k} differs"
    assert ra.history == rb.history
    assert ra.metrics == rb.metrics
    assert (ra.best_epoch, ra.steps) == (rb.best_epoch, rb.steps)


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


# ---- exact resume -------------------------------------------------------------------------
RESUME_CASES = [
    *[("toy", opt, stop) for opt in ("adamw", "sgd") for stop in ("should_stop", "max_steps")],
    ("spt", "adamw", "should_stop"),
    ("spt", "sgd", "max_steps"),
    ("spt", "sgd", "should_stop"),
    ("rpp", "adamw", "should_stop"),  # RPP samples classes with the step generator
]


@pytest.mark.parametrize(("factory", "optimizer", "stop"), RESUME_CASES)
def test_resume_is_bit_identical(tmp_path: Path, factory: str, optimizer: str, stop: str) -> None:
    cfg = _cfg(optimizer=optimizer, grad_clip=1.0 if optimizer == "sgd" else None)
    reference = _fit(factory, tmp_path / "ref", cfg)
    assert reference[1].steps == cfg.epochs * math.ceil(len(FACTORIES[factory]()[1]) / cfg.batch_size)

    work = tmp_path / "run"
    k = reference[1].steps // 2
    k += 1 - k % 2  # odd: after should_stop the resume replays step k from the step-(k-1) state
    if stop == "should_stop":
        n = 0

        def should_stop() -> bool:
            nonlocal n
            n += 1
            return n > k

        with pytest.raises(TrainingCancelled):
            _fit(factory, work, cfg, should_stop=should_stop)
    else:
        first = _fit(factory, work, cfg.__class__.from_dict({**cfg.to_dict(), "max_steps": k}))
        assert not first[1].completed and first[1].steps == k
    resumed = _fit(factory, work, cfg)
    if factory == "toy":
        assert resumed[0].prepared == 0  # prepare() is for fresh runs only
    _assert_same_run(reference, resumed)


def test_resume_with_workers_matches_in_process_loading(tmp_path: Path) -> None:
    cfg = _cfg(checkpoint_every_steps=3)
    reference = _fit("toy", tmp_path / "ref", cfg)
    _fit("toy", tmp_path / "run", TrainConfig.from_dict({**cfg.to_dict(), "max_steps": 7, "num_workers": 2}))
    resumed = _fit("toy", tmp_path / "run", TrainConfig.from_dict({**cfg.to_dict(), "num_workers": 2}))
    _assert_same_run(reference, resumed)


def test_uninterrupted_runs_are_deterministic() -> None:
    _assert_same_run(_fit("toy", None, _cfg()), _fit("toy", None, _cfg()))


def test_finished_state_returns_the_same_result(tmp_path: Path) -> None:
    first = _fit("toy", tmp_path, _cfg())
    second = _fit("toy", tmp_path, _cfg())
    assert second[0].prepared == 0
    _assert_same_run(first, second)


def test_refuses_state_from_a_different_config(tmp_path: Path) -> None:
    _fit("toy", tmp_path, _cfg(max_steps=3))
    with pytest.raises(ConfigError) as err:
        _fit("toy", tmp_path, _cfg(lr=0.02))
    assert err.value.field == "work_dir" and "train.lr" in str(err.value)
    # fit(resume=False) starts over instead
    method, train, val = _toy()
    result = Trainer(method, _cfg(lr=0.02), train, val, work_dir=tmp_path).fit(resume=False)
    assert result.completed and method.prepared == 1


def test_torn_or_tampered_state_falls_back_then_restarts(tmp_path: Path) -> None:
    cfg = _cfg()
    reference = _fit("toy", tmp_path / "ref", cfg)
    work = tmp_path / "run"
    _fit("toy", work, TrainConfig.from_dict({**cfg.to_dict(), "max_steps": 7}))
    current = json.loads((work / STATE_JSON).read_text())
    assert current["step"] == 7
    tensors = work / current["tensors_file"]
    blob = bytearray(tensors.read_bytes())
    blob[-1] ^= 0xFF  # flipped byte in the newest tensors
    tensors.write_bytes(bytes(blob))
    assert read_state(work).step == 6  # the previous complete state
    resumed = _fit("toy", work, cfg)
    _assert_same_run(reference, resumed)

    # nothing usable at all -> a clean restart that still reproduces the reference
    (work / STATE_JSON).write_text("{ torn")
    (work / PREV_JSON).unlink()
    assert read_state(work) is None
    restarted = _fit("toy", work, cfg)
    assert restarted[0].prepared == 1
    _assert_same_run(reference, restarted)


def test_state_files_are_safetensors_and_json_only(tmp_path: Path) -> None:
    _fit("toy", tmp_path, _cfg(max_steps=5))
    files = state_files(tmp_path)
    assert {p.suffix for p in files} == {".json", ".safetensors"}
    assert set(tmp_path.iterdir()) == set(files)
    from safetensors import safe_open

    doc = json.loads((tmp_path / STATE_JSON).read_text())
    with safe_open(str(tmp_path / doc["tensors_file"]), "pt") as fh:
        keys = set(fh.keys())
    assert {"learned/prompt", "learned/head.weight", "best/head.weight"} <= keys
    assert any(k.startswith("optim/prompt/0/exp_avg") for k in keys)
    assert {"step", "epoch", "pos", "history", "best", "fingerprint", "tensors_sha256", "scheduler"} <= set(
        doc
    )


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_crash_inside_a_state_write_leaves_a_complete_state(
    tmp_path: Path, monkeypatch, fail_at: int
) -> None:
    import os

    from models.engine.state import write_state

    _fit("toy", tmp_path, _cfg(max_steps=4))
    state = read_state(tmp_path)
    assert state is not None and state.step == 4
    real_replace, calls = os.replace, 0

    def flaky_replace(src, dst):
        nonlocal calls
        calls += 1
        if calls == fail_at:  # 1: tensors rename, 2: state.json -> state.prev.json, 3: new state.json
            raise OSError("simulated crash")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    state.step, state.learned = 6, {k: v + 1 for k, v in state.learned.items()}
    with pytest.raises(OSError, match="simulated"):
        write_state(tmp_path, state)
    monkeypatch.setattr(os, "replace", real_replace)
    survivor = read_state(tmp_path)
    assert survivor is not None and survivor.step == 4
    # the next successful write cleans up whatever the crash left behind
    write_state(tmp_path, survivor)
    assert set(tmp_path.iterdir()) == set(state_files(tmp_path))
