"""The bundled sample dataset: scikit-learn's handwritten digits as an ImageFolder zip.

``load_digits`` ships inside scikit-learn (1,797 real 8x8 greyscale scans, 10 classes), so the demo
and the end-to-end tests need no download. Each scan is rendered as a PNG (upscaled with nearest
neighbour so it stays readable) into ``train/<class>/``, ``val/<class>/`` and ``test/<class>/``,
split per class with a fixed seed.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from models import atomic_path

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class DigitImage:
    split: str
    label: str
    png: bytes


def digit_images(
    *,
    size: int = 32,
    per_class: int | None = None,
    fractions: Sequence[float] = (0.7, 0.15),
    seed: int = 0,
    resample: str = "nearest",
) -> list[DigitImage]:
    """The digits as PNGs with a seeded stratified train/val/test split.

    Args:
        size: output side in pixels (the 8x8 scans are upscaled with nearest neighbour).
        per_class: keep at most this many images per class (None = all, about 180 each).
        fractions: train and val fractions per class; the rest is test.
        seed: seeds the per-class shuffle.
        resample: ``nearest`` (blocky, readable) or ``bilinear`` (smooth: how the zoo's backbones saw
            digits in pretraining, models/zoo/tasks.py).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    method = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR}[resample]
    rng = np.random.default_rng(seed)
    out: list[DigitImage] = []
    for label_id, name in enumerate(CLASS_NAMES):
        idx = np.flatnonzero(digits.target == label_id)
        rng.shuffle(idx)
        if per_class is not None:
            idx = idx[:per_class]
        n_train = max(1, round(len(idx) * fractions[0]))
        n_val = max(1, round(len(idx) * fractions[1]))
        for rank, i in enumerate(idx):
            split = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
            image = Image.fromarray(pixels[i]).resize((size, size), method)
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            out.append(DigitImage(split, name, buf.getvalue()))
    return out


def write_digits_zip(path: str | Path, **kwargs: object) -> Path:
    """Write the digits as an ImageFolder zip (``<split>/<class>/<n>.png``); returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for n, item in enumerate(digit_images(**kwargs)):  # type: ignore[arg-type]
            zf.writestr(f"{item.split}/{item.label}/{n:05d}.png", item.png)
    return path
