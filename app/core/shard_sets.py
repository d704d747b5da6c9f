"""Shard sets: large WebDataset datasets an operator registers for streamed training (docs/distributed.md).

``PROMPTUNE_SHARD_SETS_FILE`` names a JSON file::

    {"imagenet21k-16shot": {
        "train": "s3://bucket/in21k/train-*.tar",   # a glob, a folder or an fsspec URL of tar shards
        "num_samples": 167200,                       # one pass over the train shards (the nominal epoch)
        "classes": ["tench", "goldfish", ...],        # or "classes_file": a JSON list beside this file
        "val": "s3://bucket/in21k/val-*.tar",        # optional, read whole for validation
        "val_samples": 10450}}                       # optional, shown as the val split's size

A tenant turns a set into one of its datasets by name (``POST /v1/datasets/shards``) and trains on it
like on an upload; the worker streams the train shards (split by rank and DataLoader worker) and never
copies them whole. security: tenants only ever name a registered set, never a URL (the worker would read
whatever a URL names, including other tenants' storage). The file is read on every use, so an operator's
edit needs no restart.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from app.core.errors import ServiceError
from app.core.settings import Settings

MAX_FILE_BYTES = 64 << 20  # a class list of a few hundred thousand names


class ShardSetsError(ServiceError):
    """The operator's shard-set file is unreadable or malformed (a server-side fault, never the client's)."""


@dataclasses.dataclass(frozen=True)
class ShardSet:
    name: str
    train: str
    num_samples: int
    classes: list[str]
    val: str | None = None
    val_samples: int | None = None


def _positive(name: str, field: str, value: Any, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ShardSetsError("invalid_shard_sets", f"shard set {name!r}: {field} must be a positive integer")
    return value


def _classes(name: str, entry: dict[str, Any], base: Path) -> list[str]:
    classes = entry.get("classes")
    if classes is None and isinstance(entry.get("classes_file"), str):
        classes = json.loads((base / entry["classes_file"]).read_text(encoding="utf-8"))
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise ShardSetsError("invalid_shard_sets", f"shard set {name!r}: classes must be a list of names")
    if len(set(classes)) != len(classes):
        raise ShardSetsError("invalid_shard_sets", f"shard set {name!r}: class names repeat")
    return list(classes)


def _parse(name: str, entry: Any, base: Path) -> ShardSet:
    if not isinstance(entry, dict) or not isinstance(entry.get("train"), str) or not entry["train"]:
        raise ShardSetsError(
            "invalid_shard_sets", f"shard set {name!r}: 'train' (shard URL or glob) is required"
        )
    val = entry.get("val")
    if val is not None and not isinstance(val, str):
        raise ShardSetsError("invalid_shard_sets", f"shard set {name!r}: 'val' must be a shard URL or glob")
    num_samples = _positive(name, "num_samples", entry.get("num_samples"))
    val_samples = _positive(name, "val_samples", entry.get("val_samples"), optional=True)
    assert num_samples is not None
    return ShardSet(name, entry["train"], num_samples, _classes(name, entry, base), val, val_samples)


def load_shard_sets(settings: Settings) -> dict[str, ShardSet]:
    """Every registered set by name (none when no file is configured)."""
    path = settings.shard_sets_file
    if path is None:
        return {}
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ShardSetsError("invalid_shard_sets", f"{path.name} is larger than {MAX_FILE_BYTES} bytes")
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ShardSetsError(
            "invalid_shard_sets", f"the shard-set file cannot be read ({type(exc).__name__})"
        ) from exc
    if not isinstance(doc, dict):
        raise ShardSetsError("invalid_shard_sets", "the shard-set file must hold an object of named sets")
    return {str(name): _parse(str(name), entry, path.parent) for name, entry in doc.items()}
