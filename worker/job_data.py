"""A job's data: the dataset's manifest and images from storage, split into train / val / test datasets."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.core.shard_sets import ShardSet
from app.core.storage import Storage
from worker.job_types import JobSpec
from worker.ranks import SINGLE, RankInfo
from worker.state import JobStore


@dataclasses.dataclass
class LoadedData:
    class_names: list[str]
    train: Any
    val: Any
    test: Any
    split: dict[str, list[str]]  # sample paths per split (stored in the checkpoint)
    dataset_name: str | None = None

    def sizes(self) -> dict[str, int]:
        """Images per split (0 for a split the job does not have; a stream's nominal epoch)."""
        return {name: _size(part) for name, part in self.parts().items()}

    def parts(self) -> dict[str, Any]:
        return {"train": self.train, "val": self.val, "test": self.test}


def _size(part: Any) -> int:
    if part is None:
        return 0
    return int(part.num_samples) if getattr(part, "num_samples", None) is not None else len(part)


def load_job_data(
    store: JobStore,
    storage: Storage,
    spec: JobSpec,
    transform: Any,
    *,
    val_fraction: float,
    shots: int | None,
    shard_sets: Mapping[str, ShardSet] | None = None,
    rank: RankInfo = SINGLE,
) -> LoadedData:
    """The job's dataset (re-checked as the tenant's), split as the job's config and seed say; a dataset of
    a registered shard set is streamed instead (this rank's share of its shards)."""
    from models import DataError
    from models import data as mdata

    if spec.dataset_id is None:
        raise DataError("the job's dataset was deleted")
    row = store.dataset(tenant_id=spec.tenant_id, dataset_id=spec.dataset_id)
    if row is None:
        raise DataError("the job's dataset was deleted")
    set_name = (row.report or {}).get("shard_set")
    if set_name is not None:
        shard_set = (shard_sets or {}).get(set_name)
        if shard_set is None:
            raise DataError(f"the shard set {set_name!r} is no longer registered on this server")
        return load_shard_data(shard_set, transform, seed=spec.seed, rank=rank, dataset_name=row.name)
    manifest = _localise(storage, row.storage_key)
    # The images were decoded and checked at upload; a header check catches storage damage.
    listing = mdata.read_manifest(manifest, class_names=row.classes or None, verify="header")
    splits = mdata.split_samples(listing.samples, val_fraction=val_fraction, seed=spec.seed)
    if shots is not None:
        splits["train"] = mdata.few_shot(splits["train"], shots, seed=spec.seed)
    if not splits.get("train"):
        raise DataError("the dataset has no training images")

    def make(split: str) -> Any:
        items = splits.get(split)
        return listing.dataset(transform, samples=items) if items else None

    return LoadedData(
        list(listing.class_names),
        make("train"),
        make("val"),
        make("test"),
        mdata.split_paths({k: v for k, v in splits.items() if v}),
        dataset_name=row.name,
    )


def load_shard_data(
    shard_set: ShardSet, transform: Any, *, seed: int, rank: RankInfo, dataset_name: str | None
) -> LoadedData:
    """The set's train shards as this rank's stream; its val shards read whole (every rank validates in
    full); no test split (the report then uses val)."""
    from models.data import ShardStream, list_shards

    train = ShardStream(list_shards(shard_set.train), shard_set.classes, transform, seed=seed,
                        rank=rank.rank, world_size=rank.world_size, num_samples=shard_set.num_samples)  # fmt: skip
    val = None
    if shard_set.val is not None:
        stream = ShardStream(list_shards(shard_set.val), shard_set.classes, transform, seed=seed)
        val = InMemory([{k: s[k] for k in ("image", "label", "index")} for s in stream], shard_set.classes)
    split = {"shard_set": [shard_set.name]}  # the checkpoint names the set, not millions of paths
    return LoadedData(list(shard_set.classes), train, val, None, split, dataset_name=dataset_name)


class InMemory:
    """A small map-style dataset of decoded samples (a shard set's validation split)."""

    def __init__(self, items: list[dict[str, Any]], class_names: list[str]) -> None:
        self.items, self.class_names = items, list(class_names)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


def _localise(storage: Storage, prefix: str) -> Path:
    """A local path of the dataset's manifest, with every image it names available beside it."""
    manifest_key = f"{prefix}/manifest.jsonl"
    local = storage.get_local_path(manifest_key)
    for line in local.read_text(encoding="utf-8").splitlines():
        if line.strip():
            storage.get_local_path(f"{prefix}/{json.loads(line)['path']}")
    return local


def load_init_from(
    store: JobStore, storage: Storage, spec: JobSpec, method: Any, model_id: str | None
) -> None:
    """Start ``method`` from an earlier checkpoint's learned tensors (``init_from``: downstream tuning)."""
    from safetensors.torch import load_file

    from models import ConfigError, read_checkpoint_metadata, verify_sha256

    row = store.tuned_model(tenant_id=spec.tenant_id, model_id=model_id) if model_id else None
    if row is None:
        raise ConfigError("init_from", f"model {model_id!r} not found")
    path = storage.get_local_path(row.checkpoint_key)
    verify_sha256(path, row.checkpoint_sha256)
    meta = read_checkpoint_metadata(path)
    if meta.get("method") != spec.method:
        raise ConfigError(
            "init_from", f"model {model_id!r} is a {meta.get('method')!r} checkpoint, not {spec.method!r}"
        )
    tensors = load_file(str(path))
    try:
        method.load_learned_state_dict(tensors)
    except Exception as exc:  # CheckpointError: prompt structure differs from this job's config
        raise ConfigError("init_from", f"model {model_id!r} does not fit this config: {exc}") from None
