"""One run of the SPT table: linear probe, full fine-tune, VPT or SPT on a zoo ViT and a mini-VTAB task."""

from __future__ import annotations

import time
from typing import Any

import torch

from ..backbones.spec import Backbone
from ..engine import TrainConfig, Trainer
from ..spt.config import SPTConfig
from ..spt.model import SPTModel
from .data import accuracy, task_split
from .plan import SPT_METHODS, BenchProfile


class FullFinetuneModel(SPTModel):
    """The full fine-tuning baseline: every backbone weight trains (never offered as a service method)."""

    trains_backbone = True


def build_spt_method(method: str, backbone: Backbone, class_names: list[str], profile: BenchProfile,
                     num_prompts: int | None = None) -> SPTModel:  # fmt: skip
    """The model of a table row. ``full-ft`` is the one place where backbone weights train (a baseline)."""
    spec = SPT_METHODS[method]
    if spec["family"] in ("linear", "full-ft"):
        full = spec["family"] == "full-ft"
        cls = FullFinetuneModel if full else SPTModel
        model = cls(backbone, SPTConfig(mode="shallow", num_prompts=0, init="xavier"), class_names)
        if full:
            for p in model.vit.parameters():
                p.requires_grad_(True)
        return model
    if num_prompts is None:
        num_prompts = profile.deep_prompts if spec["mode"] == "deep" else profile.shallow_prompts
    config = SPTConfig(mode=spec["mode"], num_prompts=num_prompts, init=spec["init"], init_max_images=1000)
    return SPTModel(backbone, config, class_names)


def run_spt(run: dict[str, Any], backbone: Backbone, task: Any, profile: BenchProfile,
            device: torch.device) -> dict[str, Any]:  # fmt: skip
    """Train on ``train``, keep the epoch with the best ``val`` accuracy, report ``test`` of that epoch."""
    names = list(task.class_names)
    train, val, test = (task_split(task, s, backbone) for s in ("train", "val", "test"))
    torch.manual_seed(run["seed"])
    model = build_spt_method(run["method"], backbone, names, profile, run.get("num_prompts"))
    model.to(device)
    init_seconds = [0.0]
    prepare = model.prepare

    def timed_prepare(data: Any, *, seed: int) -> None:
        t0 = time.perf_counter()
        prepare(data, seed=seed)
        if device.type == "cuda":
            torch.cuda.synchronize()
        init_seconds[0] = time.perf_counter() - t0

    model.prepare = timed_prepare  # type: ignore[method-assign,assignment]
    config = TrainConfig(
        epochs=profile.epochs, batch_size=profile.batch_size, lr=run["lr"], seed=run["seed"],
        warmup_epochs=profile.warmup_epochs, weight_decay=profile.weight_decay, checkpoint_every_steps=0,
        eval_batch_size=500,
    )  # fmt: skip
    t0 = time.perf_counter()
    result = Trainer(model, config, train, val).fit()
    train_seconds = time.perf_counter() - t0
    model.load_learned_state_dict(result.best_state)
    learned = sum(p.numel() for p in model.learned_parameters().values())
    return {
        "val_acc": accuracy(model, val),
        "test_acc": accuracy(model, test),
        "best_epoch": result.best_epoch,
        "steps": result.steps,
        "train_seconds": round(train_seconds, 3),
        "init_seconds": round(init_seconds[0], 4),
        "learned_parameters": learned,
        "num_prompts": model.num_prompts,
    }
