"""The engine's per-epoch ``train_acc``: top-1 of the logits each training step computed, counted over the
epoch; a method's own ``acc`` log stands in when a step never computes full logits; resume states written
before the counters existed still load."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from models.engine import Trainer
from models.engine.state import STATE_JSON
from tests.models.engine_runs import _cfg
from tests.models.engine_toy import ColourData, ToyConfig, ToyPromptMethod, toy_backbone


class ForwardToy(ToyPromptMethod):
    """The toy method with an SPT-style step: logits from ``self(images)``; records its own hit counts."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[int, int]] = []  # (hits, batch size) of every step

    def training_loss(
        self, batch: Mapping[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self(batch["image"])
        labels = batch["label"]
        self.seen.append((int((logits.argmax(1) == labels).sum()), int(labels.shape[0])))
        return F.cross_entropy(logits, labels), {"acc": -1.0}  # a log the engine's own number must beat


def _forward_toy(seed: int = 0) -> ForwardToy:
    torch.manual_seed(seed)
    return ForwardToy(toy_backbone(), ToyConfig.from_dict({}), ["c0", "c1", "c2"])


def test_train_acc_is_top1_over_the_epochs_training_images() -> None:
    method = _forward_toy()
    cfg = _cfg(epochs=3, batch_size=5, checkpoint_every_steps=0)
    result = Trainer(method, cfg, ColourData(23, seed=1), ColourData(9, seed=2)).fit()
    steps_per_epoch = 5  # ceil(23 / 5): the last batch holds 3 images
    assert len(method.seen) == 3 * steps_per_epoch
    for epoch, entry in enumerate(result.history):
        counts = method.seen[epoch * steps_per_epoch : (epoch + 1) * steps_per_epoch]
        assert sum(n for _, n in counts) == 23
        assert entry["train_acc"] == sum(h for h, _ in counts) / 23
        assert {"train_loss", "val_acc", "val_loss", "lr"} <= set(entry)
    assert not method._forward_hooks  # the engine's hook is gone after each step


class HeadOnlyToy(ToyPromptMethod):
    """The toy method as is (its step computes logits through the head, never ``self(images)``, as RPP's
    contrast over sampled classes bypasses forward); records the ``acc`` it logs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logged: list[float] = []

    def training_loss(
        self, batch: Mapping[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        loss, logs = super().training_loss(batch, generator)
        self.logged.append(logs["acc"])
        return loss, logs


def test_a_method_without_full_logits_keeps_its_own_acc_log() -> None:
    torch.manual_seed(0)
    method = HeadOnlyToy(toy_backbone(), ToyConfig.from_dict({}), ["c0", "c1", "c2"])
    result = Trainer(method, _cfg(epochs=1, batch_size=4), ColourData(10, seed=1)).fit()
    assert len(method.logged) == 3
    assert result.history[0]["train_acc"] == sum(method.logged) / 3


def test_a_resume_state_without_the_counters_still_loads(tmp_path: Path) -> None:
    cfg = _cfg(epochs=2, batch_size=5, checkpoint_every_steps=1)
    train, val = ColourData(20, seed=1), ColourData(6, seed=2)
    Trainer(_forward_toy(), _cfg(**{**cfg.to_dict(), "max_steps": 6}), train, val, work_dir=tmp_path).fit()
    state_path = tmp_path / STATE_JSON
    doc = json.loads(state_path.read_text())
    assert doc["step"] == 6 and doc["epoch_accum"]["seen"] == 10  # 2 steps into epoch 2
    del doc["epoch_accum"]["hits"], doc["epoch_accum"]["seen"]  # as written before train_acc was counted
    state_path.write_text(json.dumps(doc))

    method = _forward_toy()
    result = Trainer(method, cfg, train, val, work_dir=tmp_path).fit()
    assert result.completed and [h["epoch"] for h in result.history] == [1, 2]
    assert len(method.seen) == 2  # the last two steps of epoch 2 ran here
    # epoch 2's accuracy counts the images seen since the resume
    assert result.history[1]["train_acc"] == sum(h for h, _ in method.seen) / 10
