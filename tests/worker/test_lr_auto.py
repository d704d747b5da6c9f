"""choose_lr: the worker's lr "auto" search on real (tiny, random-weight) backbones and a small dataset."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from app.core.job_plan import build_plan
from models import ConfigError, TrainConfig, Trainer, build_method, load_backbone, read_state
from tests.models.engine_toy import ColourData
from tests.tiny import tiny_clip_spec, tiny_vit_spec
from worker.lr_auto import choose_lr, resumed_lr
from worker.runner import LoadedData

SPECS = {"vit": tiny_vit_spec(kind="mae"), "clip": tiny_clip_spec()}


def loaded(*, val: bool = True) -> LoadedData:
    train = ColourData(16, num_classes=3, seed=1, jitter=False, size=32)
    held_out = ColourData(9, num_classes=3, seed=2, jitter=False, size=32) if val else None
    return LoadedData(list(train.class_names), train, held_out, None, {})


def auto_plan(method: str, backbone: str, **config: Any) -> Any:
    return build_plan(
        method=method,
        backbone=backbone,
        config={"lr": "auto", "epochs": 5, "batch_size": 8, **config},
        seed=4,
        specs=SPECS,
        max_epochs=50,
        checkpoint_every_steps=0,
    )


@pytest.mark.parametrize(
    ("method", "backbone", "config"),
    [
        ("spt", "vit", {"mode": "deep", "num_prompts": 2, "init": "random"}),
        ("rpp", "clip", {"n_ctx": 2, "kd_weight": 0.0}),
    ],
)
def test_choose_lr_tries_the_grid_reports_each_trial_and_keeps_the_best(
    method: str, backbone: str, config: dict[str, Any]
) -> None:
    plan = auto_plan(method, backbone, **config)
    data = loaded()
    reports: list[tuple[str, dict[str, Any]]] = []
    initialised: list[Any] = []
    train_config, search = choose_lr(
        method_name=method,
        backbone=load_backbone(plan.backbone),
        plan=plan,
        data=data,
        device=torch.device("cpu"),
        report=lambda text, payload: reports.append((text, payload)),
        init_method=initialised.append,
    )
    grid = list(plan.lr_grid)
    assert search["grid"] == grid and [t["lr"] for t in search["trials"]] == grid
    scored = [t for t in search["trials"] if t["val_acc"] is not None]
    best = min(scored, key=lambda t: (-t["val_acc"], t["val_loss"], t["lr"]))
    assert search["chosen"] == best["lr"]
    assert isinstance(train_config, TrainConfig)
    assert train_config == TrainConfig.from_dict({**plan.train_config.to_dict(), "lr": best["lr"]})
    assert len(initialised) == len(grid) and len({id(m) for m in initialised}) == len(grid)  # fresh per trial
    # one message per trial (the trials so far, nothing chosen yet), then the choice
    assert [len(payload["trials"]) for _, payload in reports] == [1, 2, 3, 3]
    assert [payload["chosen"] for _, payload in reports] == [None, None, None, best["lr"]]
    assert reports[-1][1] == search and f"chose lr {best['lr']:g}" in reports[-1][0]


def test_choose_lr_refuses_a_job_without_validation_data() -> None:
    plan = auto_plan("spt", "vit", num_prompts=2)
    with pytest.raises(ConfigError) as info:
        choose_lr(
            method_name="spt",
            backbone=load_backbone(plan.backbone),
            plan=plan,
            data=loaded(val=False),
            device=torch.device("cpu"),
            report=lambda text, payload: pytest.fail("nothing to report"),
        )
    assert info.value.field == "lr" and info.value.code == "invalid_config"


def test_a_resumed_job_reuses_the_rate_its_state_was_trained_with(tmp_path: Path) -> None:
    plan = auto_plan("spt", "vit", num_prompts=2)
    data = loaded()
    chosen = dataclasses.replace(plan.train_config, lr=0.3)  # as if the search had chosen 0.3
    method = build_method("spt", load_backbone(plan.backbone), plan.method_config, data.class_names)
    stopped = dataclasses.replace(chosen, max_steps=1)  # the attempt stops after one step
    Trainer(method, stopped, data.train, data.val, work_dir=tmp_path).fit()
    assert resumed_lr(read_state(tmp_path), plan) == chosen
