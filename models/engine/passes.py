"""The data loading and the evaluation pass shared by the Trainer and :mod:`models.evaluation`.

Every item is loaded under a seed derived from ``(seed, tag, index)`` (``SeededItems``), so a pass
sees the same images whatever the worker count, and evaluation is one forward per batch in eval mode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, default_collate

from .precision import autocast
from .seeding import SeededItems


def method_device(method: nn.Module) -> torch.device:
    """Where a method's learned tensors live (CPU for a method with none)."""
    for p in method.parameters():
        if p.requires_grad:
            return p.device
    return torch.device("cpu")


def seeded_loader(
    data: Any,
    *,
    seed: int,
    tag: object,
    batches: list[list[int]],
    num_workers: int,
    device: torch.device,
) -> DataLoader:
    """A DataLoader over ``batches`` (lists of indices) loading each item under its own seed."""
    return DataLoader(
        SeededItems(data, seed, tag),
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=default_collate,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),  # keep DataLoader set-up off the global RNG
    )


@dataclasses.dataclass(frozen=True)
class EvalPass:
    """One pass of a method over a dataset, in dataset order."""

    labels: torch.Tensor  # (N,) int64, CPU
    predictions: torch.Tensor  # (N,) int64, CPU: the top-1 class of each item
    loss_sum: float  # summed cross-entropy (float64 accumulation)

    @property
    def accuracy(self) -> float:
        return int((self.predictions == self.labels).sum()) / len(self.labels)

    @property
    def loss(self) -> float:
        return self.loss_sum / len(self.labels)


@torch.no_grad()
def evaluation_pass(
    method: nn.Module,
    data: Any,
    *,
    batch_size: int,
    seed: int = 0,
    num_workers: int = 0,
    before_batch: Callable[[], None] | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> EvalPass:
    """Top-1 predictions and cross-entropy of ``method`` on every item of ``data`` (eval mode).

    ``before_batch`` is called before each batch (the Trainer polls for cancellation there).
    ``autocast_dtype``: run each forward under autocast in this dtype (the Trainer's precision).
    """
    device, n = method_device(method), len(data)
    batches = [list(range(i, min(n, i + batch_size))) for i in range(0, n, batch_size)]
    was_training = method.training
    method.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    labels_out: list[torch.Tensor] = []
    predictions_out: list[torch.Tensor] = []
    loader = seeded_loader(
        data, seed=seed, tag="eval", batches=batches, num_workers=num_workers, device=device
    )
    try:
        for batch in loader:
            if before_batch is not None:
                before_batch()
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["label"].to(device, non_blocking=True)
            with autocast(autocast_dtype, device):
                logits = method(images)
            logits = logits.float()  # the loss and argmax in float32 whatever the forward's dtype
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
            labels_out.append(labels)
            predictions_out.append(logits.argmax(dim=1))
    finally:
        method.train(was_training)
    return EvalPass(
        labels=torch.cat(labels_out).to("cpu", torch.int64),
        predictions=torch.cat(predictions_out).to("cpu", torch.int64),
        loss_sum=float(loss_sum.item()),
    )


class TrainTop1:
    """Top-1 hits of the logits a training step computes, read by a forward hook on the method.

    A method that computes its training logits through ``self(images)`` (SPT, most heads) shows them to
    the hook, which only reads them: the step's numbers are untouched. The first ``(B, C)`` output of the
    method's own forward counts. A step that never runs the full forward (RPP contrasts each image with a
    sample of classes) leaves ``hits`` as ``None``.

    Use as a context manager around ``training_loss``.
    """

    def __init__(self, method: nn.Module, labels: torch.Tensor, num_classes: int) -> None:
        self.method, self.labels, self.num_classes = method, labels, num_classes
        self._hits: torch.Tensor | None = None
        self._handle: Any = None

    def _hook(self, _module: nn.Module, _args: Any, output: Any) -> None:
        expected = (self.labels.shape[0], self.num_classes)
        if self._hits is None and isinstance(output, torch.Tensor) and tuple(output.shape) == expected:
            self._hits = (output.detach().argmax(dim=1) == self.labels.to(output.device)).sum()

    def __enter__(self) -> TrainTop1:
        self._handle = self.method.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    @property
    def hits(self) -> int | None:
        return None if self._hits is None else int(self._hits.item())
