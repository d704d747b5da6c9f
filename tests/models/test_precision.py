"""Mixed precision in the training engine (CPU): fp32 is the unchanged path, bf16 trains under autocast
with float32 learned tensors and resumes bit for bit, fp16 scales the loss and resumes with its scaler,
and the job plan publishes and checks ``precision``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from app.core.job_plan import JobConfigError
from models.engine import TrainConfig, Trainer, read_state
from models.errors import ConfigError, TrainingCancelled
from tests.api.test_job_plan import plan, refusal
from tests.models.engine_runs import _assert_same_run, _cfg, _fit, _spt, _toy

pytestmark = pytest.mark.timeout(300)


def test_fp32_is_the_unchanged_path(tmp_path: Path) -> None:
    omitted = _fit("toy", tmp_path / "omitted", _cfg(grad_clip=1.0))
    explicit = _fit("toy", tmp_path / "fp32", _cfg(grad_clip=1.0, precision="fp32"))
    _assert_same_run(omitted, explicit)
    # fp32 keeps the fingerprint of states written before `precision` existed
    payload = read_state(tmp_path / "fp32").fingerprint_payload
    assert "precision" not in payload["train"]


def test_bf16_trains_with_autocast_and_float32_learned_tensors() -> None:
    method, train, val = _spt()
    seen: set[torch.dtype] = set()
    linears = [m for m in method.backbone.model.modules() if isinstance(m, nn.Linear)]
    handles = [m.register_forward_hook(lambda _m, _a, out: seen.add(out.dtype)) for m in linears]
    backbone_dtypes = {p.dtype for p in method.backbone.model.parameters()}
    losses: list[float] = []

    class Losses:
        def on_progress(self, step: int, total: int, logs: dict) -> None:
            losses.append(logs["loss"])

    cfg = _cfg(precision="bf16", epochs=6, lr=0.05, warmup_epochs=0.0, checkpoint_every_steps=0)
    result = Trainer(method, cfg, train, val, callbacks=[Losses()]).fit()
    for h in handles:
        h.remove()
    assert torch.bfloat16 in seen  # the backbone's linear layers ran in bf16
    assert all(p.dtype == torch.float32 for p in method.learned_parameters().values())
    assert {p.dtype for p in method.backbone.model.parameters()} == backbone_dtypes
    assert all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first, (first, last)
    assert math.isfinite(result.metrics["val_loss"])


def _interrupted_then_resumed(tmp_path: Path, factory: str, cfg: TrainConfig) -> None:
    reference = _fit(factory, tmp_path / "ref", cfg)
    n, k = 0, reference[1].steps // 2 + 1

    def should_stop() -> bool:
        nonlocal n
        n += 1
        return n > k

    with pytest.raises(TrainingCancelled):
        _fit(factory, tmp_path / "run", cfg, should_stop=should_stop)
    _assert_same_run(reference, _fit(factory, tmp_path / "run", cfg))


@pytest.mark.parametrize("factory", ["toy", "spt"])
def test_bf16_resume_is_bit_identical(tmp_path: Path, factory: str) -> None:
    _interrupted_then_resumed(tmp_path, factory, _cfg(precision="bf16"))


def test_fp16_on_cpu_trains_with_a_loss_scaler_and_resumes(tmp_path: Path) -> None:
    # torch's CPU autocast supports float16, so fp16 is accepted on CPU (with a GradScaler)
    cfg = _cfg(precision="fp16", grad_clip=1.0)
    _interrupted_then_resumed(tmp_path, "toy", cfg)
    state = read_state(tmp_path / "run")
    assert state is not None and state.grad_scaler is not None and state.grad_scaler["scale"] > 0
    assert state.fingerprint_payload["train"]["precision"] == "fp16"


def test_fp16_loss_scaler_state_resumes(tmp_path: Path) -> None:
    # a tiny growth interval makes the scale change during the run, so a resume that restarted the
    # scaler would multiply different numbers (and the saved scale would be off the reference's)
    from models.engine import precision

    real = precision.torch.amp.GradScaler

    def fast_growth(device: str) -> torch.amp.GradScaler:
        return real(device, init_scale=2.0**4, growth_interval=2)

    mp = pytest.MonkeyPatch()
    mp.setattr(precision.torch.amp, "GradScaler", fast_growth)
    try:
        _interrupted_then_resumed(tmp_path, "toy", _cfg(precision="fp16"))
    finally:
        mp.undo()
    ref, run = read_state(tmp_path / "ref"), read_state(tmp_path / "run")
    assert ref.grad_scaler == run.grad_scaler and ref.grad_scaler["scale"] > 2.0**4


def test_old_state_without_scaler_still_loads(tmp_path: Path) -> None:
    import json

    cfg = _cfg(precision="fp16")
    _fit("toy", tmp_path, TrainConfig.from_dict({**cfg.to_dict(), "max_steps": 4}))
    doc_path = tmp_path / "state.json"
    doc = json.loads(doc_path.read_text())
    del doc["grad_scaler"]
    doc_path.write_text(json.dumps(doc))
    assert read_state(tmp_path).grad_scaler is None
    assert _fit("toy", tmp_path, cfg)[1].completed


def test_a_different_precision_is_refused_on_resume(tmp_path: Path) -> None:
    _fit("toy", tmp_path, _cfg(max_steps=3))
    with pytest.raises(ConfigError) as err:
        _fit("toy", tmp_path, _cfg(precision="bf16"))
    assert err.value.field == "work_dir" and "train.precision" in str(err.value)


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(precision="fp8")
    assert err.value.field == "precision"


def test_unsupported_autocast_device_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    method, train, val = _toy()
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: False)
    with pytest.raises(ConfigError) as err:
        Trainer(method, _cfg(precision="bf16"), train, val)
    assert err.value.field == "precision"
    Trainer(method, _cfg(), train, val)  # fp32 never needs autocast


def test_job_plan_takes_precision() -> None:
    assert plan("spt", {"precision": "bf16"}).train_config.precision == "bf16"
    assert plan("spt", {}).train_config.precision == "fp32"
    error = refusal("spt", {"precision": "fp64"})
    assert isinstance(error, JobConfigError)
    assert (error.code, error.param) == ("invalid_config", "config.precision")
