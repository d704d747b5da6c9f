"""One run of the RPP table: prompt pretraining of the zoo CLIP on the source set, then zero-shot transfer
to every held-out target, then base-to-new (tune the pretrained prompts on base classes, test base and new).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..backbones.spec import Backbone
from ..engine import TrainConfig, Trainer
from ..rpp.config import RPPConfig
from ..rpp.model import RPPModel
from ..zoo.tasks import RPP_TEMPLATES, Task
from .data import NormalisedSplit, accuracy, task_split
from .plan import RPP_METHODS, BenchProfile


def rpp_config(method: str, profile: BenchProfile) -> RPPConfig:
    overrides = dict(RPP_METHODS[method])
    overrides.setdefault("kd_weight", profile.rpp_kd_weight)
    return RPPConfig(
        num_sampled_classes=profile.rpp_sampled_classes, templates=list(RPP_TEMPLATES), **overrides
    )


def _remapped(task: Task, split: str, subset: list[int], backbone: Backbone) -> NormalisedSplit:
    """A base-to-new split with labels re-indexed into ``subset`` (the base or the new class list)."""
    images, labels = task.split(split)
    index = {full: i for i, full in enumerate(subset)}
    mapped = torch.tensor([index[int(y)] for y in labels], dtype=torch.int64)
    return NormalisedSplit(images, mapped, backbone, [task.class_names[i] for i in subset])


def _fit(
    model: RPPModel, train: Any, val: Any, run: dict[str, Any], epochs: int, profile: BenchProfile
) -> int:
    config = TrainConfig(
        epochs=epochs, batch_size=profile.rpp_batch_size, lr=run["lr"], seed=run["seed"],
        warmup_epochs=min(1.0, epochs / 2), checkpoint_every_steps=0, eval_batch_size=500,
    )  # fmt: skip
    result = Trainer(model, config, train, val).fit()
    model.load_learned_state_dict(result.best_state)
    return result.steps


def run_rpp(run: dict[str, Any], backbone: Backbone, suite: dict[str, Any], profile: BenchProfile,
            device: torch.device) -> dict[str, Any]:  # fmt: skip
    source: Task = suite["source"]
    torch.manual_seed(run["seed"])
    model = RPPModel(backbone, rpp_config(run["method"], profile), source.class_names).to(device)
    train, val, test = (task_split(source, s, backbone) for s in ("train", "val", "test"))
    t0 = time.perf_counter()
    steps = 0
    if run["method"] != "zero-shot":
        steps = _fit(model, train, val, run, profile.rpp_epochs, profile)
    out: dict[str, Any] = {"train_seconds": round(time.perf_counter() - t0, 3), "steps": steps}
    out["val_acc"] = accuracy(model, val)  # source val: what chooses the learning rate
    out["source_test_acc"] = accuracy(model, test)
    pretrained = model.learned_state_dict()
    targets: dict[str, dict[str, float]] = {}
    for target in suite["targets"]:
        model.set_class_names(target.class_names)
        targets[target.name] = {
            "val_acc": accuracy(model, task_split(target, "val", backbone)),
            "test_acc": accuracy(model, task_split(target, "test", backbone)),
        }
    out["targets"] = targets
    out["test_acc"] = sum(t["test_acc"] for t in targets.values()) / max(1, len(targets))
    out["base_to_new"] = _base_to_new(run, backbone, suite["base_to_new"], pretrained, profile, device)
    return out


def _base_to_new(run: dict[str, Any], backbone: Backbone, task: Task, pretrained: dict[str, torch.Tensor],
                 profile: BenchProfile, device: torch.device) -> dict[str, float]:  # fmt: skip
    base, new = list(task.meta["base"]), list(task.meta["new"])
    base_names = [task.class_names[i] for i in base]
    new_names = [task.class_names[i] for i in new]
    model = RPPModel(backbone, rpp_config(run["method"], profile), base_names).to(device)
    if pretrained:
        model.load_learned_state_dict(pretrained)
    if run["method"] != "zero-shot" and profile.rpp_b2n_epochs > 0:
        _fit(model, _remapped(task, "train", base, backbone), _remapped(task, "val", base, backbone),
             run, profile.rpp_b2n_epochs, profile)  # fmt: skip
    base_acc = accuracy(model, _remapped(task, "test_base", base, backbone))
    model.set_class_names(new_names)
    new_acc = accuracy(model, _remapped(task, "test_new", new, backbone))
    hm = 2 * base_acc * new_acc / (base_acc + new_acc) if base_acc + new_acc > 0 else 0.0
    return {"base": base_acc, "new": new_acc, "hm": hm}
