"""The training engine's exact stop/resume: bit-identical learned tensors after should_stop or
max_steps with AdamW and SGD (toy method, SPT, RPP), worker loading, refused or torn states, and crash-safe
state writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from models.engine import TrainConfig, Trainer, read_state, state_files
from models.engine.state import PREV_JSON, STATE_JSON
from models.errors import ConfigError, TrainingCancelled
from tests.models.engine_runs import FACTORIES, _assert_same_run, _cfg, _fit, _toy

pytestmark = pytest.mark.timeout(300)


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
