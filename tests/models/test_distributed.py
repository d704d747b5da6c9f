"""Data-parallel training on real processes (gloo on CPU): 2 ranks == 1 process with the same global batch.

Each test spawns two processes that join a gloo group over TCP on localhost, build the same tiny
backbone and method, and train; rank 0's learned tensors must match a single-process run of the same
config within 1e-4 (relative to the tensor's largest entry). SPT uses k-means prototypes (computed on
rank 0 and broadcast); RPP runs with class sampling (3 of 4 classes per step) and the KD teacher on.
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
from safetensors.torch import load_file, save_file

from models.engine import TrainConfig, Trainer
from models.engine.distributed import DataParallel
from models.errors import TrainingCancelled
from tests.models.engine_toy import ColourData, build_toy

pytestmark = pytest.mark.timeout(120)

NAMES = ["c0", "c1", "c2", "c3"]


def _spt() -> Any:
    from models.backbones.timm_loader import load_timm_backbone
    from models.spt import SPTConfig, SPTModel
    from tests.tiny import tiny_vit_spec

    torch.manual_seed(0)
    cfg = SPTConfig(
        mode="deep", num_prompts=2, init="kmeans", init_max_images=8, init_batch_size=4, kmeans_iters=5
    )
    return SPTModel(load_timm_backbone(tiny_vit_spec()), cfg, NAMES)


def _rpp() -> Any:
    from models.backbones.clip_loader import load_clip_backbone
    from models.rpp import RPPConfig, RPPModel
    from tests.tiny import tiny_clip_spec

    torch.manual_seed(0)
    cfg = RPPConfig(num_sampled_classes=3, kd_weight=1.0, kd_temperature=2.0)  # sampling + KD both on
    return RPPModel(load_clip_backbone(tiny_clip_spec()), cfg, NAMES)


def _toy() -> Any:
    return build_toy(num_classes=4, seed=0)


FACTORIES = {"spt": _spt, "rpp": _rpp, "toy": _toy}


def _config(batch_size: int, **kw: Any) -> TrainConfig:
    values = {"epochs": 2, "batch_size": batch_size, "lr": 0.05, "warmup_epochs": 0.5, "seed": 3}
    values.update({"weight_decay": 0.01, "grad_clip": 1.0, "checkpoint_every_steps": 2, **kw})
    return TrainConfig.from_dict(values)


def _data(n: int) -> tuple[ColourData, ColourData]:
    return ColourData(n, num_classes=4, seed=1, size=32), ColourData(6, num_classes=4, seed=2, size=32)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, job: dict[str, Any]) -> None:
    """One rank: join the group, train ``job``, write this rank's learned tensors and outcome."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),  # a rank that fails must not leave its peer waiting 30 min
    )
    try:
        out = Path(job["out"])
        method = FACTORIES[job["method"]]()
        train, val = _data(job["n"])
        calls = {"steps": 0, "progress": 0}
        original = method.training_loss

        def counting(batch: Any, generator: torch.Generator) -> Any:
            calls["steps"] += 1
            return original(batch, generator)

        method.training_loss = counting  # type: ignore[method-assign]

        class Progress:
            def on_progress(self, step: int, total: int, logs: dict[str, float]) -> None:
                calls["progress"] = step

        stop_at = job.get("stop_at")
        # Only rank 0's should_stop counts; rank 1's never fires, yet it must stop at the same step.
        should_stop = (lambda: stop_at is not None and calls["progress"] >= stop_at) if rank == 0 else None
        trainer = Trainer(
            method,
            _config(job["batch_size"]),
            train,
            val,
            work_dir=out / "work",
            callbacks=[Progress()],
            should_stop=should_stop,
        )
        outcome: dict[str, Any] = {"cancelled": False}
        try:
            result = trainer.fit()
            outcome["history"] = result.history
        except TrainingCancelled:
            outcome["cancelled"] = True
        outcome.update(calls=calls["steps"], progress=calls["progress"])
        (out / f"rank{rank}.json").write_text(json.dumps(outcome))
        save_file({k: v.contiguous() for k, v in method.learned_state_dict().items()}, out / f"rank{rank}.st")
    finally:
        # Leave together: a peer that tears its gloo sockets down while this rank's connection threads
        # still read them aborts this process ("terminate called without an active exception"), which
        # failed this test about one run in six.
        with contextlib.suppress(Exception):
            dist.barrier()
        dist.destroy_process_group()


def _run_two(tmp_path: Path, **job: Any) -> list[tuple[dict[str, Any], dict[str, torch.Tensor]]]:
    job["out"] = str(tmp_path)
    mp.spawn(_worker, args=(2, _free_port(), job), nprocs=2, join=True)
    return [
        (json.loads((tmp_path / f"rank{r}.json").read_text()), load_file(tmp_path / f"rank{r}.st"))
        for r in (0, 1)
    ]


def _run_one(method_name: str, n: int, batch_size: int) -> tuple[Any, Any]:
    method = FACTORIES[method_name]()
    train, val = _data(n)
    result = Trainer(method, _config(batch_size), train, val).fit()
    return method.learned_state_dict(), result


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _assert_equivalent(tmp_path: Path, method_name: str, n: int, batch_size: int) -> None:
    (info0, learned0), (info1, learned1) = _run_two(tmp_path, method=method_name, n=n, batch_size=batch_size)
    reference, result = _run_one(method_name, n, batch_size)
    assert learned0.keys() == reference.keys() == learned1.keys()
    for name, ref in reference.items():
        assert _max_rel(learned0[name], ref) <= 1e-4, f"{name} differs from the 1-process run"
        assert _max_rel(learned1[name], learned0[name]) <= 1e-6, f"{name} differs between ranks"
    # The epoch summaries are global-batch numbers on every rank (train loss reduced, val in full).
    for h0, h1, ref_h in zip(info0["history"], info1["history"], result.history, strict=True):
        assert h0 == h1
        assert h0.keys() == ref_h.keys()
        for key, value in ref_h.items():  # train_loss, train_acc, the method's logs, val_loss, val_acc
            assert h0[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    # Each rank ran its slice only: together exactly one forward per non-empty slice per step.
    steps = result.steps
    assert info0["calls"] == steps and info1["calls"] <= steps


def test_spt_two_ranks_equal_one_process(tmp_path: Path) -> None:
    _assert_equivalent(tmp_path, "spt", n=16, batch_size=8)


def test_spt_uneven_global_batch_and_an_empty_slice(tmp_path: Path) -> None:
    # 15 items, batch 7: slices 4/3, 4/3 and a last global batch of 1 that leaves rank 1 empty.
    _assert_equivalent(tmp_path, "spt", n=15, batch_size=7)


def test_rpp_with_class_sampling_and_kd_two_ranks_equal_one_process(tmp_path: Path) -> None:
    _assert_equivalent(tmp_path, "rpp", n=14, batch_size=7)


def test_cancel_on_rank_0_stops_every_rank_at_the_same_step(tmp_path: Path) -> None:
    (info0, _), (info1, _) = _run_two(tmp_path, method="toy", n=16, batch_size=4, stop_at=3)
    assert info0["cancelled"] and info1["cancelled"]
    assert info0["calls"] == info1["calls"] == 3  # both ran steps 0..2 and neither ran step 3
    assert info0["progress"] == 3 and info1["progress"] == 0  # callbacks run on rank 0 only
    assert (tmp_path / "work" / "state.json").exists()


def test_a_state_written_by_two_ranks_resumes_on_one_process(tmp_path: Path) -> None:
    """A job resumed on another world size: two ranks stop after step 3 (state at step 2), one process
    continues from that state and ends where an uninterrupted one-process run ends."""
    (info0, _), _ = _run_two(tmp_path, method="spt", n=16, batch_size=8, stop_at=3)
    assert info0["cancelled"] and (tmp_path / "work" / "state.json").exists()
    method = FACTORIES["spt"]()
    train, val = _data(16)
    calls, original = [], method.training_loss
    method.training_loss = lambda batch, gen: calls.append(1) or original(batch, gen)  # type: ignore[method-assign]
    resumed = Trainer(method, _config(8), train, val, work_dir=tmp_path / "work").fit()
    reference, result = _run_one("spt", 16, 8)
    assert resumed.steps == result.steps == 4 and len(calls) == 2  # steps 2 and 3 only: it resumed
    learned = method.learned_state_dict()
    for name, ref in reference.items():
        assert _max_rel(learned[name], ref) <= 1e-4, name


def test_shard_is_contiguous_and_balanced() -> None:
    dp = DataParallel()
    assert not dp.active and dp.shard([5, 6, 7]) == [5, 6, 7]
    slices = []
    for rank in range(3):
        dp.active, dp.rank, dp.world_size = True, rank, 3
        slices.append(dp.shard(list(range(7))))
    assert slices == [[0, 1, 2], [3, 4], [5, 6]]
