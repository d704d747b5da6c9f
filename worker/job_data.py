"""A job's data: the dataset's manifest and images from storage, split into train / val / test datasets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from app.core.storage import Storage
from worker.job_types import JobSpec
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
        """Images per split (0 for a split the job does not have)."""
        return {name: len(part) if part is not None else 0 for name, part in self.parts().items()}

    def parts(self) -> dict[str, Any]:
        return {"train": self.train, "val": self.val, "test": self.test}


def load_job_data(
    store: JobStore,
    storage: Storage,
    spec: JobSpec,
    transform: Any,
    *,
    val_fraction: float,
    shots: int | None,
) -> LoadedData:
    """The job's dataset (re-checked as the tenant's), split as the job's config and seed say."""
    from models import DataError
    from models import data as mdata

    if spec.dataset_id is None:
        raise DataError("the job's dataset was deleted")
    row = store.dataset(tenant_id=spec.tenant_id, dataset_id=spec.dataset_id)
    if row is None:
        raise DataError("the job's dataset was deleted")
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
