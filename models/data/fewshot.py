"""Seeded train/val splits and K-shot sampling; splits serialise to path lists for checkpoints.

Both are stratified by class and depend only on (samples, seed): samples are ordered by path
within each class before the seeded shuffle, so the input order does not matter.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from ..errors import DataError
from .dataset import Sample

SPLITS = ("train", "val", "test")


def _by_class(samples: Iterable[Sample]) -> dict[int, list[Sample]]:
    groups: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.label].append(s)
    return {label: sorted(group, key=lambda s: s.path) for label, group in sorted(groups.items())}


def _shuffled(group: list[Sample], seed: int, label: int, salt: int) -> list[Sample]:
    rng = np.random.default_rng([seed, salt, label])
    return [group[i] for i in rng.permutation(len(group))]


def split_samples(samples: Sequence[Sample], val_fraction: float, seed: int) -> dict[str, list[Sample]]:
    """``{"train", "val", "test"}`` lists of samples.

    If the dataset has its own validation split (any ``split == "val"``), it is used as is
    (``None`` counts as train). Otherwise a seeded, stratified ``val_fraction`` of each class's
    non-test samples is carved out (rounded half up, always leaving one training sample per
    class). Samples marked ``test`` are only ever returned under ``"test"``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    out: dict[str, list[Sample]] = {k: [] for k in SPLITS}
    if any(s.split == "val" for s in samples):
        for s in samples:
            out[s.split or "train"].append(s)
        return out
    pool: list[Sample] = []
    for s in samples:
        (out["test"] if s.split == "test" else pool).append(s)
    val_ids: set[int] = set()
    for label, group in _by_class(pool).items():
        n_val = min(math.floor(len(group) * val_fraction + 0.5), len(group) - 1)
        val_ids.update(id(s) for s in _shuffled(group, seed, label, 0)[: max(0, n_val)])
    for s in pool:
        (out["val"] if id(s) in val_ids else out["train"]).append(s)
    return out


def few_shot(samples: Sequence[Sample], k: int, seed: int) -> list[Sample]:
    """A seeded K-shot subset: ``k`` samples per class (all of them for smaller classes), in input order."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise DataError(f"k must be a positive integer, got {k!r}")
    keep: set[int] = set()
    for label, group in _by_class(samples).items():
        keep.update(id(s) for s in _shuffled(group, seed, label, 1)[:k])
    return [s for s in samples if id(s) in keep]


def split_paths(splits: Mapping[str, Sequence[Sample]]) -> dict[str, list[str]]:
    """The JSON-serialisable form of a split (stored in checkpoints): split -> sample paths."""
    return {name: [s.path for s in items] for name, items in splits.items()}


def apply_split(samples: Sequence[Sample], paths: Mapping[str, Sequence[str]]) -> dict[str, list[Sample]]:
    """Rebuild a split from :func:`split_paths` output against the same samples."""
    by_path = {s.path: s for s in samples}
    missing = [p for items in paths.values() for p in items if p not in by_path]
    if missing:
        raise DataError(f"{len(missing)} split paths are not in the dataset, e.g. {missing[0]!r}")
    return {name: [by_path[p] for p in items] for name, items in paths.items()}
