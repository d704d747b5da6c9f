"""Seeding for exact resume: seeds derived from (seed, tags), and items loaded under their own seed."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from ``seed`` and a path of tags, stable across processes and platforms."""
    text = "/".join(map(str, (seed, *parts)))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


def seed_cpu_rngs(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.random.default_generator.manual_seed(seed)


class SeededItems(Dataset):
    """Loads ``data[i]`` after seeding the CPU RNGs from ``(seed, tag, i)``; normalises items to dicts."""

    def __init__(self, data: Any, seed: int, tag: object) -> None:
        self.data, self.seed, self.tag = data, seed, tag

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        seed_cpu_rngs(derive_seed(self.seed, "item", self.tag, idx))
        item = self.data[idx]
        if isinstance(item, Mapping):
            item = dict(item)
            item.setdefault("index", idx)
        elif isinstance(item, Sequence) and len(item) == 2:  # (image, label), torchvision style
            item = {"image": item[0], "label": item[1], "index": idx}
        else:
            raise DataError(
                f"dataset item {idx} must be a dict with image/label/index, got {type(item).__name__}"
            )
        return item
