"""Training straight from tar shards in a storage folder (models/engine/sources.py + models/data/shards.py).

Shards of uneven size (45 samples in shards of 6: the last holds 3) are streamed through fsspec; a run
stopped mid-epoch and resumed from its state equals the uninterrupted run tensor for tensor and sees the
same samples in the same order; ranks never read the same sample within a shard epoch; DataLoader workers
(which record nothing themselves) resume as exactly.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from safetensors.torch import load_file, save_file

from models.data.shards import ShardStream, list_shards, write_shards
from models.engine import TrainConfig, Trainer
from models.errors import DataError
from tests.models.engine_toy import COLOURS, _to_tensor, build_toy

pytestmark = pytest.mark.timeout(180)

NAMES = ["c0", "c1", "c2", "c3"]
SAMPLES = 45


def _write(folder: Path) -> str:
    gen = torch.Generator().manual_seed(7)
    samples = []
    for i in range(SAMPLES):
        label = (i * 7) % 4
        base = torch.tensor(COLOURS[label], dtype=torch.float32) + 40 * torch.rand(3, generator=gen)
        pixel = tuple(int(v) for v in base.clamp(0, 255))
        samples.append((Image.new("RGB", (16, 16), pixel), NAMES[label]))
    write_shards(folder, samples, shard_size=6)
    return str(folder / "shard-*.tar")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _write(tmp_path_factory.mktemp("shards"))


def _stream(pattern: str, rank: int = 0, world: int = 1) -> ShardStream:
    return ShardStream(list_shards(pattern), NAMES, _to_tensor, seed=5, rank=rank, world_size=world,
                       num_samples=SAMPLES)  # fmt: skip


def _config(**kw: Any) -> TrainConfig:
    values = {"epochs": 3, "batch_size": 4, "lr": 0.05, "warmup_epochs": 0.5, "seed": 3}
    return TrainConfig.from_dict({**values, "checkpoint_every_steps": 3, **kw})


def _recording(method: Any, seen: list[list[int]]) -> Any:
    original = method.training_loss

    def training_loss(batch: Any, generator: torch.Generator) -> Any:
        seen.append([int(i) for i in batch["index"]])
        return original(batch, generator)

    method.training_loss = training_loss
    return method


def _fit(pattern: str, work: Path | None, seen: list[list[int]], *, max_steps: int | None = None,
         num_workers: int = 0, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]:  # fmt: skip
    method = _recording(build_toy(num_classes=4, seed=0), seen)
    config = _config(max_steps=max_steps, num_workers=num_workers)
    Trainer(method, config, _stream(pattern, rank, world), work_dir=work).fit()
    return method.learned_state_dict()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stopped_mid_epoch_and_resumed_equals_uninterrupted(
    shards: str, tmp_path: Path, num_workers: int
) -> None:
    want_seen: list[list[int]] = []
    want = _fit(shards, tmp_path / "whole", want_seen, num_workers=num_workers)
    assert len(want_seen) == 3 * (SAMPLES // 4)  # nominal epochs of 11 steps

    got_seen: list[list[int]] = []
    _fit(shards, tmp_path / "parts", got_seen, max_steps=7, num_workers=num_workers)  # mid-epoch 1
    _fit(shards, tmp_path / "parts", got_seen, max_steps=19, num_workers=num_workers)  # mid-epoch 2
    got = _fit(shards, tmp_path / "parts", got_seen, num_workers=num_workers)
    flat, want_flat = ([i for step in seen for i in step] for seen in (got_seen, want_seen))
    for run in (flat, want_flat):
        assert len(set(run[:SAMPLES])) == SAMPLES  # one shard epoch: every sample exactly once
        assert set(run[:SAMPLES]) == set(run[SAMPLES : 2 * SAMPLES])  # the next shard epoch: all again
        assert len(set(run[2 * SAMPLES :])) == len(run) - 2 * SAMPLES  # the third, partly: no repeat
    if num_workers == 0:  # the same samples in the same order, so the same tensors
        assert got_seen == want_seen
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    else:  # workers interleave in turn and a resume restarts the turn: same samples, order may differ
        assert len(flat) == len(want_flat)


def test_stream_without_a_sample_count_is_refused(shards: str) -> None:
    stream = ShardStream(list_shards(shards), NAMES, _to_tensor)
    with pytest.raises(DataError, match="num_samples"):
        Trainer(build_toy(num_classes=4), _config(), stream)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank(rank: int, world: int, port: int, job: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))  # fmt: skip
    try:
        out, seen = Path(job["out"]), []
        work = out / f"work-{rank}"
        for max_steps in job["stops"]:
            learned = _fit(job["shards"], work, seen, max_steps=max_steps, rank=rank, world=world)
            if rank == 0 and max_steps is not None:  # another rank resumes from rank 0's state, as a job does
                for other in range(1, world):
                    _copy_state(work, out / f"work-{other}")
            with contextlib.suppress(Exception):
                dist.barrier()
        (out / f"seen{rank}.json").write_text(json.dumps(seen))
        save_file({k: v.contiguous() for k, v in learned.items()}, out / f"rank{rank}.st")
    finally:
        with contextlib.suppress(Exception):
            dist.barrier()
        dist.destroy_process_group()


def _copy_state(src: Path, dst: Path) -> None:
    import shutil

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)


def _two_ranks(tmp_path: Path, shards: str, stops: list[int | None]) -> tuple[list[Any], dict[str, Any]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    job = {"out": str(tmp_path), "shards": shards, "stops": stops}
    mp.spawn(_rank, args=(2, _free_port(), job), nprocs=2, join=True)
    seen = [json.loads((tmp_path / f"seen{r}.json").read_text()) for r in range(2)]
    return seen, load_file(tmp_path / "rank0.st")


def test_two_ranks_split_the_shards_and_resume_mid_epoch_exactly(shards: str, tmp_path: Path) -> None:
    want_seen, want = _two_ranks(tmp_path / "whole", shards, [None])
    got_seen, got = _two_ranks(tmp_path / "parts", shards, [5, 13, None])
    assert got_seen == want_seen
    assert all(torch.equal(got[k], want[k]) for k in want)
    # Each step every rank takes 2 of the global 4, first the whole of its own shards of the first shard
    # epoch (in the stream's order), and the two ranks' shards are disjoint and cover the set.
    assert all(len(step) == 2 for seen in want_seen for step in seen)
    per_rank = [[i for step in seen for i in step] for seen in want_seen]
    first_epoch = [[int(s["index"]) for s in _stream(shards, r, 2)] for r in range(2)]
    for samples, expected in zip(per_rank, first_epoch, strict=True):
        assert samples[: len(expected)] == expected
    assert not set(first_epoch[0]) & set(first_epoch[1])
    assert len(first_epoch[0]) + len(first_epoch[1]) == SAMPLES
