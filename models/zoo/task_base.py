"""The :class:`Task` record and the helpers every task builder shares (seeds, balanced world splits)."""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from . import world as W


@dataclasses.dataclass
class TaskSplit:
    images: torch.Tensor  # uint8 (N, 3, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclasses.dataclass
class Task:
    """A labelled image task with named splits (``train``, ``val``, ``test``; base-to-new adds more).

    ``templates`` turn a class name into text for zero-shot CLIP (``"a picture of a {}."``);
    ``class_prompts``, when set, gives the texts of each class explicitly (an ensemble averaged by the
    zero-shot classifier) for tasks whose class names alone are not caption-like (``count``: "three"
    becomes "three circles", "three stars", ...). ``zero_shot`` is False where captions never describe
    the label (digits, distance), so a zero-shot score would be meaningless.
    """

    name: str
    group: str
    class_names: list[str]
    splits: dict[str, TaskSplit]
    templates: tuple[str, ...] = ("a {}",)
    class_prompts: list[list[str]] | None = None
    zero_shot: bool = True
    description: str = ""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return int(next(iter(self.splits.values())).images.shape[-1])

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in self.splits:
            raise KeyError(f"task {self.name!r} has no split {name!r} (has {', '.join(self.splits)})")
        s = self.splits[name]
        return s.images, s.labels

    def texts(self) -> list[list[str]]:
        """The zero-shot texts of every class (explicit prompts, else templates x class name)."""
        if self.class_prompts is not None:
            return [list(p) for p in self.class_prompts]
        return [[t.format(c) for t in self.templates] for c in self.class_names]

    def pil_images(self, split: str) -> list[Any]:
        from PIL import Image

        images, _ = self.split(split)
        return [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "group": self.group,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "splits": {k: len(v) for k, v in self.splits.items()},
            "zero_shot": self.zero_shot,
            "description": self.description,
        }


def _sub_seed(seed: int, *parts: object) -> int:
    """A stable 63-bit seed from a base seed and names (crc32-chained; never Python's salted hash)."""
    value = int(seed) & 0xFFFFFFFF
    for part in parts:
        value = zlib.crc32(f"{part}".encode(), value)
    return (int(seed) << 32) ^ value


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def _balanced_counts(total: int, k: int) -> list[int]:
    base, extra = divmod(total, k)
    return [base + (1 if i < extra else 0) for i in range(k)]


def _world_split(
    task: str,
    split: str,
    seed: int,
    n: int,
    image_size: int,
    classes: Sequence[dict[str, Any]],
    common: dict[str, Any],
) -> TaskSplit:
    """``n`` images, balanced over ``classes`` (each a dict of world constraints), shuffled."""
    images, labels = [], []
    for label, (constraints, k) in enumerate(zip(classes, _balanced_counts(n, len(classes)), strict=True)):
        if k == 0:
            continue
        batch = W.sample_scenes(
            k, _sub_seed(seed, task, split, label), image_size=image_size, **{**common, **constraints}
        )
        images.append(W.render_scenes(batch))
        labels.append(np.full(k, label, dtype=np.int64))
    img = np.concatenate(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8)
    lab = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    order = np.random.default_rng(_sub_seed(seed, task, split, "order")).permutation(len(lab))
    return TaskSplit(_to_tensor(img[order]), torch.from_numpy(lab[order]))


def _world_task(
    name: str,
    group: str,
    class_names: Sequence[str],
    classes: Sequence[dict[str, Any]],
    common: dict[str, Any],
    *,
    seed: int,
    image_size: int,
    sizes: dict[str, int],
    **task_kwargs: Any,
) -> Task:
    splits = {
        split: _world_split(name, split, seed, n, image_size, classes, common) for split, n in sizes.items()
    }
    return Task(name=name, group=group, class_names=list(class_names), splits=splits, **task_kwargs)


def _plural(shape: str) -> str:
    return W.PLURALS[shape]


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"
