"""WebDataset tar shards streamed from any fsspec URL, split by rank and DataLoader worker, resumable.

A shard is a tar of ``<key>.<png|jpg|jpeg|webp>`` + ``<key>.cls`` (an integer or a class name) or
``<key>.json`` (``{"label": ...}``) members, as in :mod:`.webdataset`. Shards are opened with
``fsspec.open`` and read member by member (``tarfile`` stream mode), so a shard is never copied to
local disk and nothing is ever extracted: member names are only used as grouping keys.

Epoch order: the shard list is permuted by a generator seeded from ``(seed, epoch)`` (identical on
every rank); the shards of that order go round-robin to the ``world_size x num_workers`` (rank, worker)
slots, and each slot skips the ones already finished. Each sample is ``{"image", "label", "index", "last"}`` where
``index = shard_id * 2**32 + position of the sample's key group in the shard`` (stable across epochs
and resumes, unique, not dense) and ``last`` marks the final sample of its shard.

Resume guarantee: the position is ``(epoch, shards_done, samples consumed per in-flight shard)``.
Progress is recorded from the samples the *consumer* received (automatically when iterated in the
main process; call :meth:`ShardStream.observe` on each batch when a DataLoader with workers is used).
A stream loaded with that state (merged over ranks with :meth:`ShardStream.merge_states`) yields
exactly the epoch's remaining samples: none repeated, none skipped. The price is that each in-flight
shard (at most one per (rank, worker)) has its consumed prefix re-read from storage and discarded
without decoding. Samples prefetched by workers but never received are simply not recorded.
"""

from __future__ import annotations

import dataclasses
import glob as globlib
import hashlib
import io
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import fsspec
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import DataError
from .dataset import DatasetReport, _to_tensor, open_image
from .webdataset import IMAGE_EXTS, raw_label, read_tar_groups

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
MAX_PIXELS = 40_000_000
_POS_BITS = 32
STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """One shard: its fsspec URL, a stable id (position in the sorted listing) and size if known."""

    url: str
    shard_id: int
    size: int | None = None


def list_shards(url_or_glob: str | Path) -> list[ShardSpec]:
    """Shards under a folder/URL (``*.tar``, ``*.tar.gz``, ``*.tgz``), a glob, or one shard, sorted."""
    fs, path = fsspec.core.url_to_fs(str(url_or_glob))
    if globlib.has_magic(path):
        found = fs.glob(path, detail=True)
    elif fs.isdir(path):
        found = fs.find(path, maxdepth=1, detail=True)
    elif fs.exists(path):
        found = {path: fs.info(path)}
    else:
        raise DataError(f"no shards at {url_or_glob}")
    paths = sorted(
        p for p, info in found.items() if info.get("type") == "file" and p.endswith(SHARD_SUFFIXES)
    )
    if not paths:
        raise DataError(f"no {'/'.join(SHARD_SUFFIXES)} shards at {url_or_glob}")
    return [ShardSpec(fs.unstrip_protocol(p), i, found[p].get("size")) for i, p in enumerate(paths)]


def _shard_specs(shards: Sequence[ShardSpec | str]) -> list[ShardSpec]:
    specs = [s if isinstance(s, ShardSpec) else ShardSpec(str(s), i) for i, s in enumerate(shards)]
    if not specs:
        raise DataError("no shards given")
    ids = [s.shard_id for s in specs]
    if len(set(ids)) != len(ids) or min(ids) < 0 or max(ids) >= 1 << 31:
        raise DataError("shard ids must be unique and in 0..2**31-1")
    return specs


class ShardStream(IterableDataset):
    """Iterable dataset over tar shards for one rank; see the module docstring for order and resume.

    Args:
        shards: from :func:`list_shards` (or plain URLs, numbered in the given order).
        class_names: the label vocabulary (``.cls`` may hold an index or one of these names).
        transform: PIL RGB image -> tensor; ``None`` = float in [0, 1].
        seed, epoch: the shard order; call :meth:`set_epoch` between epochs (non-persistent workers).
        rank, world_size: this process's data-parallel slot.
        num_samples: samples in one pass over all the shards; the Trainer's nominal epoch is
            ``num_samples // batch_size`` steps (models/engine/sources.py). Needed to train on the stream.

    Iterating in the main process records progress, so a second pass in the same epoch yields only
    what the first did not: call :meth:`set_epoch` to start an epoch over.
    """

    def __init__(
        self,
        shards: Sequence[ShardSpec | str],
        class_names: Sequence[str],
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        max_pixels: int = MAX_PIXELS,
        num_samples: int | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} outside 0..{world_size - 1}")
        self.shards = _shard_specs(shards)
        self.class_names = list(class_names)
        self._class_index = {name: i for i, name in enumerate(self.class_names)}  # O(1) with 10k+ classes
        self.transform = transform
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        self.max_pixels = max_pixels
        self.num_samples = num_samples
        self.report = DatasetReport()  # per process: workers keep their own copy
        self.groups_reread = 0  # groups passed over on resume (main-process iteration only)
        self._done: set[int] = set()
        self._progress: dict[int, int] = {}

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning (forgets the position within the previous epoch)."""
        self.epoch = epoch
        self._done, self._progress = set(), {}

    def epoch_order(self) -> list[ShardSpec]:
        """All shards in this epoch's order: the same on every rank and worker."""
        digest = hashlib.sha256(f"shards:{self.seed}:{self.epoch}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        return [self.shards[i] for i in torch.randperm(len(self.shards), generator=gen).tolist()]

    def assigned_shards(self, worker_id: int = 0, num_workers: int = 1) -> list[ShardSpec]:
        """The unfinished shards this (rank, worker) reads, in order (round-robin over all slots)."""
        # Round-robin over the whole epoch order, not over what is left: a slot's shards never depend on
        # what the others finished, so each rank may resume from its own position (Trainer streaming).
        slots, slot = self.world_size * num_workers, worker_id * self.world_size + self.rank
        order = self.epoch_order()
        return [s for i, s in enumerate(order) if i % slots == slot and s.shard_id not in self._done]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        wid, nworkers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        for spec in self.assigned_shards(wid, nworkers):
            for sample in self._read_shard(spec, self._progress.get(spec.shard_id, 0)):
                if worker is None:  # in a worker this copy's progress is lost: the consumer observes
                    self._record(sample["index"], sample["last"])
                yield sample

    def _read_shard(self, spec: ShardSpec, skip: int) -> Iterator[dict[str, Any]]:
        """Decoded samples of one shard from key group ``skip`` on; the final one has ``last=True``."""
        pending: dict[str, Any] | None = None
        try:
            fh = fsspec.open(spec.url, "rb").open()
        except (OSError, ValueError) as exc:  # as above: never a silent hole in the epoch
            raise DataError(f"shard {spec.url} cannot be opened: {type(exc).__name__}: {exc}") from exc
        with fh:
            for pos, key, members in read_tar_groups(fh, spec.url, self.report, skip=skip):
                decoded = self._decode(f"{spec.url}:{key}", members)
                if decoded is None:
                    continue
                if pending is not None:  # one-sample lookahead so the shard's final sample is known
                    yield pending
                index = (spec.shard_id << _POS_BITS) + pos
                pending = {"image": decoded[0], "label": decoded[1], "index": index, "last": False}
        if skip and get_worker_info() is None:
            self.groups_reread += skip
        if pending is not None:
            pending["last"] = True
            yield pending

    def _decode(self, where: str, members: dict[str, bytes]) -> tuple[Any, int] | None:
        ext = next((e for e in IMAGE_EXTS if e in members), None)
        if ext is None:
            self.report.add(where, "no image member (jpg/jpeg/png/webp)")
            return None
        try:
            raw = raw_label(members)
            if raw is None:
                self.report.add(where, "no label member (cls/json/txt)")
                return None
            label = self._resolve(raw)
        except (ValueError, UnicodeDecodeError, DataError) as exc:
            self.report.add(where, f"bad label: {exc}")
            return None
        try:
            img = open_image(io.BytesIO(members[ext]), max_pixels=self.max_pixels)
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types for bad files
            self.report.add(where, f"unreadable image: {type(exc).__name__}: {exc}")
            return None
        return (self.transform(img) if self.transform is not None else _to_tensor(img)), label

    def _resolve(self, raw: int | str) -> int:
        """Label index from a class name or an integer (as text or JSON), checked against the classes."""
        if isinstance(raw, str):
            if raw in self._class_index:
                return self._class_index[raw]
            if not raw.isdigit():
                raise ValueError(f"unknown label {raw!r}")
            raw = int(raw)
        if not 0 <= raw < len(self.class_names):
            raise ValueError(f"label {raw} outside 0..{len(self.class_names) - 1}")
        return raw

    def _record(self, index: int, last: bool) -> None:
        shard_id, pos = index >> _POS_BITS, index & ((1 << _POS_BITS) - 1)
        if last:
            self._done.add(shard_id)
            self._progress.pop(shard_id, None)
        elif shard_id not in self._done:
            self._progress[shard_id] = max(self._progress.get(shard_id, 0), pos + 1)

    def observe(self, batch: Mapping[str, Any]) -> None:
        """Record a batch (or sample) the consumer received from a DataLoader over this stream."""
        index, last = batch["index"], batch["last"]
        indices = index.tolist() if isinstance(index, torch.Tensor) else index
        lasts = last.tolist() if isinstance(last, torch.Tensor) else last
        if isinstance(indices, int):
            indices, lasts = [indices], [lasts]
        for i, is_last in zip(indices, lasts, strict=True):
            self._record(int(i), bool(is_last))

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe position of this rank's consumer within the epoch."""
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "epoch": self.epoch,
            "shard_ids": sorted(s.shard_id for s in self.shards),
            "shards_done": sorted(self._done),
            "in_flight": {str(k): v for k, v in sorted(self._progress.items())},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` (every rank must load the same state, merged over all ranks)."""
        if state.get("version") != STATE_VERSION:
            raise DataError(f"unsupported shard stream state version {state.get('version')!r}")
        if list(state["shard_ids"]) != sorted(s.shard_id for s in self.shards):
            raise DataError("the state was taken over a different shard set")
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
        self._done = {int(i) for i in state["shards_done"]}
        self._progress = {int(k): int(v) for k, v in state["in_flight"].items() if int(k) not in self._done}

    @staticmethod
    def merge_states(states: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """One state from every rank's: finished shards united, in-flight progress maxed."""
        states = list(states)
        if not states:
            raise DataError("no states to merge")
        keys = {(s["version"], s["seed"], s["epoch"], tuple(s["shard_ids"])) for s in states}
        if len(keys) != 1:
            raise DataError("states disagree on version, seed, epoch or shard set")
        done = sorted({int(i) for s in states for i in s["shards_done"]})
        progress: dict[int, int] = {}
        for s in states:
            for k, v in s["in_flight"].items():
                if int(k) not in done:
                    progress[int(k)] = max(progress.get(int(k), 0), int(v))
        return {
            **dict(states[0]),
            "shards_done": done,
            "in_flight": {str(k): v for k, v in sorted(progress.items())},
        }


def _image_bytes(image: Image.Image | bytes) -> bytes:
    if isinstance(image, bytes):
        return image
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def _add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # mtime 0: byte-identical reruns
    tf.addfile(info, io.BytesIO(data))


def write_shards(
    folder_or_url: str | Path,
    samples: Iterable[tuple[Image.Image | bytes, int | str]],
    *,
    shard_size: int,
    prefix: str = "shard",
) -> list[str]:
    """Write ``(image, label)`` pairs as ``<prefix>-NNNNNN.tar`` shards of ``<key>.png`` + ``<key>.cls``.

    ``image`` is a PIL image (saved as PNG) or already-encoded PNG bytes; keys are the running
    sample number. Each shard is streamed to ``fsspec.open(url, "wb")``. Returns the shard URLs.
    """
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    fs, root = fsspec.core.url_to_fs(str(folder_or_url))
    fs.makedirs(root, exist_ok=True)
    urls: list[str] = []
    out: Any = None
    tf: tarfile.TarFile | None = None
    try:
        for n, (image, label) in enumerate(samples):
            if n % shard_size == 0:
                if tf is not None:
                    tf.close()
                    out.close()
                path = f"{root.rstrip('/')}/{prefix}-{len(urls):06d}.tar"
                urls.append(fs.unstrip_protocol(path))
                out = fs.open(path, "wb")
                tf = tarfile.open(fileobj=out, mode="w|", format=tarfile.USTAR_FORMAT)
            assert tf is not None
            _add_member(tf, f"{n:09d}.png", _image_bytes(image))
            _add_member(tf, f"{n:09d}.cls", str(label).encode())
    finally:
        if tf is not None:
            tf.close()
            out.close()
    return urls
