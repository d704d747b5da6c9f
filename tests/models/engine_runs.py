"""Shared run helpers for the engine tests: method factories (toy, SPT, RPP), the base config, one
fit, and the bit-identity check that resume tests compare runs with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from models.engine import TrainConfig, Trainer
from tests.models.engine_toy import ColourData, build_toy


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
