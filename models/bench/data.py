"""Zoo tasks as engine datasets: uint8 images normalised once with the backbone's mean and std."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from ..backbones.spec import Backbone
from ..zoo.tasks import Task


class NormalisedSplit(Dataset):
    """``{"image", "label", "index"}`` items of one task split, ready for the backbone (same size, no crop)."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, backbone: Backbone, class_names: Sequence[str]
    ) -> None:
        prep = backbone.preprocessing
        size = images.shape[-1]
        if size != prep.image_size:
            raise ValueError(f"task images are {size} px, the backbone expects {prep.image_size} px")
        mean = torch.tensor(prep.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(prep.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.images = (images.float() / 255.0 - mean) / std
        self.labels = labels.long()
        self.class_names = list(class_names)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "label": int(self.labels[index]), "index": index}


def task_split(
    task: Task, split: str, backbone: Backbone, class_names: Sequence[str] | None = None
) -> NormalisedSplit:
    images, labels = task.split(split)
    return NormalisedSplit(images, labels, backbone, class_names or task.class_names)


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: NormalisedSplit, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model(images)`` logits on a split (model already on its device)."""
    device = next(model.parameters()).device
    model.eval()
    correct = 0
    for start in range(0, len(data), batch_size):
        x = data.images[start : start + batch_size].to(device)
        y = data.labels[start : start + batch_size].to(device)
        correct += int((model(x).argmax(dim=-1) == y).sum())
    return correct / max(1, len(data))
