"""Training-time transforms built from a backbone's :class:`Preprocessing` (Pillow input).

``augment``: ``none`` = the backbone's eval transform (VTAB-style, no augmentation);
``flip`` = random horizontal flip then the eval transform; ``crop_flip`` = random-resized-crop +
flip (SPT/VPT's FGVC recipe). Randomness comes from the global RNGs, which the engine seeds per
(seed, epoch, item), so augmented runs stay reproducible and resumable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

AUGMENTS = ("none", "flip", "crop_flip")


def train_transform(backbone: Any, augment: str = "none") -> Callable[[Image.Image], torch.Tensor]:
    """A PIL -> tensor training transform for ``backbone`` (a loaded :class:`Backbone`)."""
    from torchvision import transforms as T

    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    if augment == "none":
        return backbone.transform
    if augment == "flip":
        return T.Compose([T.RandomHorizontalFlip(), backbone.transform])
    pre = backbone.preprocessing
    interpolation = getattr(T.InterpolationMode, str(pre.interpolation).upper(), T.InterpolationMode.BICUBIC)
    return T.Compose(
        [
            T.RandomResizedCrop(pre.image_size, interpolation=interpolation),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(pre.mean, pre.std),
        ]
    )
