"""A large many-class synthetic WebDataset shard set, cheap and deterministic (for streaming tests/benches).

Each class is a seeded 4x4 grid of colours scaled up to ``image_size``; each sample adds seeded
per-pixel noise, so samples of a class differ but stay recognisable. Labels are written as class
indices in ``.cls`` members; class names are ``class_00000``... (returned, not stored in the shards).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.shards import write_shards

GRID = 4
NOISE = 24


def class_names_for(num_classes: int) -> list[str]:
    width = max(5, len(str(num_classes - 1)))
    return [f"class_{c:0{width}d}" for c in range(num_classes)]


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "PNG", compress_level=1)  # speed over size
    return buf.getvalue()


def _samples(num_classes: int, per_class: int, image_size: int, seed: int) -> Iterator[tuple[bytes, int]]:
    """Class-interleaved order (c0 s0, c1 s0, ..., c0 s1, ...) so every shard mixes many classes."""
    reps = -(-image_size // GRID)
    bases = []
    for c in range(num_classes):
        grid = np.random.default_rng([seed, 0, c]).integers(0, 256, (GRID, GRID, 3), dtype=np.int16)
        bases.append(np.kron(grid, np.ones((reps, reps, 1), dtype=np.int16))[:image_size, :image_size])
    for s in range(per_class):
        for c in range(num_classes):
            noise = np.random.default_rng([seed, 1, c, s]).integers(-NOISE, NOISE + 1, bases[c].shape)
            yield _png(np.clip(bases[c] + noise, 0, 255).astype(np.uint8)), c


def write_many_class_shards(
    url: str | Path,
    *,
    num_classes: int = 10_000,
    per_class: int = 1,
    image_size: int = 32,
    seed: int = 0,
    shard_size: int = 1000,
) -> tuple[list[str], list[str]]:
    """Write ``num_classes * per_class`` samples as shards under ``url``; returns (shard URLs, class names)."""
    if num_classes < 1 or per_class < 1 or image_size < 1:
        raise ValueError("num_classes, per_class and image_size must be >= 1")
    urls = write_shards(url, _samples(num_classes, per_class, image_size, seed), shard_size=shard_size)
    return urls, class_names_for(num_classes)
