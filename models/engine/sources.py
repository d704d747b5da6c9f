"""Where the Trainer's training batches come from: an indexed dataset, or a stream of tar shards.

**Indexed** (map-style data, the default): epoch ``e``'s order is ``randperm`` seeded by ``(seed, e)``, cut
into global batches of ``batch_size`` indices; each rank loads its contiguous slice (distributed.py), each
item under its own seed. The position ``(epoch, pos)`` alone resumes it exactly.

**Streamed** (an iterable dataset with a position: :class:`~models.data.shards.ShardStream`): nominal
epochs of ``num_samples // batch_size`` global batches, as open_clip's ``--train-num-samples``. Each step
every rank draws its slice's size of samples from its own stream; a stream whose shards run out goes on
into its next shard epoch (a new shard order). So every rank takes the same number of steps, whatever the
shard sizes, and within a shard epoch no two ranks read the same shard. The position of every rank's
stream is stored in the resume state (:meth:`StreamedBatches.state`): resumed on the same world size,
each stream continues exactly where its consumer stopped, with no sample repeated or skipped. On another
world size the streams restart from the oldest shard epoch among the ranks, merged over the ranks that
were in it (samples that faster ranks had already taken from the next epoch can be seen again: logged).
With DataLoader workers (``num_workers`` > 0) the samples still resume exactly, none repeated or skipped,
but their order within the interrupted shard epoch can differ from the uninterrupted run's (workers hand
samples out in turn, and a resume restarts the turn), so the tensors are then equal in distribution, not
bit for bit; with ``num_workers=0`` a resumed run is bit-identical. Streamed items are not seeded one by
one, so random augmentations are not reproducible across a resume; the service's transforms are
deterministic.

Both draw a batch only when the step runs (after the stop and pause polls), so a paused run never
counts a batch it did not train on.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.data._utils.collate import default_collate

from ..errors import DataError
from .distributed import DataParallel
from .passes import seeded_loader
from .seeding import derive_seed

log = logging.getLogger(__name__)

PREPARE_SAMPLES = 1000  # what a data-dependent init (SPT's prototypes) sees of a stream: its first samples

Fetch = Callable[[], dict[str, Any] | None]  # this rank's batch of the step (None: an empty slice)


class BatchSource(Protocol):
    num_samples: int
    steps_per_epoch: int

    def batches(self, epoch: int, pos: int) -> Iterator[tuple[int, Fetch]]: ...
    def state(self) -> dict[str, Any] | None: ...
    def load_state(self, data_state: dict[str, Any] | None) -> None: ...
    def prepare_data(self) -> Any: ...
    def close(self) -> None: ...


def is_stream(data: Any) -> bool:
    """An iterable dataset that can say and restore its position (what streamed training needs)."""
    return isinstance(data, IterableDataset) and all(
        hasattr(data, name) for name in ("state_dict", "load_state_dict", "set_epoch", "num_samples")
    )


def make_source(data: Any, *, batch_size: int, drop_last: bool, seed: int, num_workers: int,
                dp: DataParallel, device: torch.device) -> BatchSource:  # fmt: skip
    if is_stream(data):
        return StreamedBatches(data, batch_size=batch_size, num_workers=num_workers, dp=dp)
    return IndexedBatches(data, batch_size=batch_size, drop_last=drop_last, seed=seed,
                          num_workers=num_workers, dp=dp, device=device)  # fmt: skip


class IndexedBatches:
    def __init__(self, data: Any, *, batch_size: int, drop_last: bool, seed: int, num_workers: int,
                 dp: DataParallel, device: torch.device) -> None:  # fmt: skip
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.num_workers, self.dp, self.device = num_workers, dp, device
        self.num_samples = len(data)
        n = self.num_samples
        self.steps_per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)

    def epoch_order(self, epoch: int) -> list[list[int]]:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
        order = torch.randperm(self.num_samples, generator=gen).tolist()
        bs = self.batch_size
        return [order[i * bs : (i + 1) * bs] for i in range(self.steps_per_epoch)]

    def batches(self, epoch: int, pos: int) -> Iterator[tuple[int, Fetch]]:
        batches = self.epoch_order(epoch)[pos:]
        local = [self.dp.shard(b) for b in batches]  # this rank's slices (the batches themselves alone)
        loader = seeded_loader(self.data, seed=self.seed, tag=epoch, batches=[b for b in local if b],
                               num_workers=self.num_workers, device=self.device)  # fmt: skip
        live = {"loader": iter(loader)}
        try:
            for global_batch, mine in zip(batches, local, strict=True):
                yield len(global_batch), functools.partial(_next_batch, live, bool(mine))
        finally:
            live.clear()  # drops the iterator: shuts DataLoader workers down, also on cancellation

    def state(self) -> dict[str, Any] | None:
        return None

    def load_state(self, data_state: dict[str, Any] | None) -> None:
        return None

    def prepare_data(self) -> Any:
        return self.data

    def close(self) -> None:
        return None


def _next_batch(live: dict[str, Any], mine: bool) -> dict[str, Any] | None:
    return next(live["loader"]) if mine else None


class StreamedBatches:
    def __init__(self, stream: Any, *, batch_size: int, num_workers: int, dp: DataParallel) -> None:
        self.stream, self.batch_size, self.num_workers, self.dp = stream, batch_size, num_workers, dp
        self.num_samples = int(stream.num_samples)
        self.steps_per_epoch = self.num_samples // batch_size
        if self.steps_per_epoch < 1:
            raise DataError(
                f"the stream's {self.num_samples} samples are fewer than one batch of {batch_size}"
            )
        self.local_size = len(dp.shard(list(range(batch_size))))
        self._samples: Iterator[dict[str, Any]] | None = None

    def batches(self, epoch: int, pos: int) -> Iterator[tuple[int, Fetch]]:
        for _ in range(pos, self.steps_per_epoch):
            yield self.batch_size, self._take

    def _take(self) -> dict[str, Any] | None:
        if self.local_size == 0:
            return None
        if self._samples is None:
            self._samples = self._endless()
        return default_collate([next(self._samples) for _ in range(self.local_size)])

    def _endless(self) -> Iterator[dict[str, Any]]:
        """This rank's samples, on across shard epochs; each recorded as consumed when handed out."""
        empty_epochs = 0
        while True:
            workers = self.num_workers
            source = DataLoader(self.stream, batch_size=None, num_workers=workers) if workers else self.stream
            got = False
            for sample in source:
                if workers:  # a worker's copy of the stream records nothing: the consumer does
                    self.stream.observe(sample)
                got = True
                yield sample
            empty_epochs = 0 if got else empty_epochs + 1
            if empty_epochs > 1:
                raise DataError(
                    f"rank {self.dp.rank}'s shard stream yields no samples (fewer shards than ranks?)"
                )
            self.stream.set_epoch(self.stream.epoch + 1)

    def state(self) -> dict[str, Any] | None:
        """Every rank's stream position (a collective: call on every rank at the same step)."""
        return {"kind": "shards", "ranks": self.dp.gather_objects(self.stream.state_dict())}

    def load_state(self, data_state: dict[str, Any] | None) -> None:
        self.close()
        if data_state is None:  # a fresh run (or a state written before streaming): from the start
            self.stream.set_epoch(0)
            return
        ranks = list(data_state["ranks"])
        if len(ranks) == self.dp.world_size:
            self.stream.load_state_dict(ranks[self.dp.rank])
            return
        oldest = min(int(s["epoch"]) for s in ranks)
        merged = self.stream.merge_states([s for s in ranks if int(s["epoch"]) == oldest])
        log.warning(
            "resuming a streamed run written by %d ranks on %d: every stream restarts from shard epoch %d "
            "(samples some ranks had already taken from later epochs can repeat)",
            len(ranks), self.dp.world_size, oldest,
        )  # fmt: skip
        self.stream.load_state_dict(merged)

    def prepare_data(self) -> Any:
        return StreamHead(self.stream, PREPARE_SAMPLES)

    def close(self) -> None:
        if self._samples is not None:
            self._samples.close()  # type: ignore[attr-defined]
            self._samples = None


class StreamHead(torch.utils.data.Dataset):
    """The first ``limit`` samples of a stream's first shard epoch as a map-style dataset, read on first
    use (only the rank that runs ``prepare`` reads it) from a copy, so the training stream is untouched."""

    def __init__(self, stream: Any, limit: int) -> None:
        self.stream, self.limit = stream, limit
        self.class_names = list(stream.class_names)
        self._items: list[dict[str, Any]] | None = None

    def _load(self) -> list[dict[str, Any]]:
        if self._items is None:
            head = copy.copy(self.stream)
            head.set_epoch(0)
            self._items = []
            for sample in head:
                self._items.append({k: sample[k] for k in ("image", "label", "index")})
                if len(self._items) >= self.limit:
                    break
        return self._items

    def __len__(self) -> int:
        return len(self._load())

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._load()[i]
