"""Data-parallel training speed: steps/s and images/s at world size 1 vs 2 (gloo on CPU; prints figures).

    python scripts/bench_distributed.py                    # tiny ViT (batch 64) and ViT-B/16 (batch 8), CPU
    python scripts/bench_distributed.py --steps 12 --json out.json

Both run the engine's own ``Trainer.fit`` (SPT deep, AdamW, fp32, no validation, no resume state) on the
same random images with the same GLOBAL batch: world size 1 is one process with all ``--threads``; world
size 2 is two processes (``torch.multiprocessing`` + a gloo group on 127.0.0.1) with ``--threads // 2``
each, so both use the same cores. The time is measured from the end of the first step to the end of the
last (``on_progress`` callbacks on rank 0), so start-up, the first step and the group's set-up are out.
On a GPU machine the same split would put each rank on its own device; here the two ranks share the
cores one process already had, so what this shows is the overhead of the split and the all-reduce.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from models import BackboneSpec, build_method, load_backbone  # noqa: E402
from models.engine import TrainConfig, Trainer  # noqa: E402

TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}
MODELS: dict[str, tuple[str, dict[str, Any], int, int]] = {  # arch, kwargs, image size, global batch
    "tiny-vit": ("vit_tiny_patch16_224", TINY_VIT, 32, 64),
    "vit-b/16": ("vit_base_patch16_224", {}, 224, 8),
}
NAMES = [f"c{i}" for i in range(10)]


class RandomImages(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int) -> None:
        self.images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))

    class_names = NAMES

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "label": i % len(NAMES), "index": i}


class StepClock:
    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_progress(self, step: int, total: int, logs: dict[str, float]) -> None:
        self.marks.append(time.perf_counter())


def train(model: str, steps: int) -> dict[str, float]:
    arch, kwargs, size, batch = MODELS[model]
    backbone = load_backbone(BackboneSpec(family="timm", arch=arch, weights="random", model_kwargs=kwargs))
    torch.manual_seed(0)
    method = build_method("spt", backbone, {"mode": "deep", "num_prompts": 8, "init": "xavier"}, NAMES)
    config = TrainConfig(epochs=1, batch_size=batch, lr=1e-3, max_steps=steps + 1, checkpoint_every_steps=0)
    clock = StepClock()
    trainer = Trainer(method, config, RandomImages(batch * (steps + 1), size), callbacks=[clock])
    trainer.fit()
    if not clock.marks:  # ranks other than 0 get no callbacks
        return {}
    seconds = clock.marks[-1] - clock.marks[0]  # steps 2 .. steps + 1
    return {"steps_per_s": steps / seconds, "images_per_s": steps * batch / seconds, "global_batch": batch}


def _rank(rank: int, world: int, port: int, job: dict[str, Any]) -> None:
    torch.set_num_threads(job["threads"])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=600))  # fmt: skip
    try:
        result = train(job["model"], job["steps"])
        if rank == 0:
            Path(job["out"]).write_text(json.dumps(result))
    finally:
        dist.barrier()
        dist.destroy_process_group()


def two_ranks(model: str, steps: int, threads: int) -> dict[str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with tempfile.TemporaryDirectory() as tmp:
        job = {"model": model, "steps": steps, "threads": max(1, threads // 2), "out": f"{tmp}/r.json"}
        mp.spawn(_rank, args=(2, port, job), nprocs=2, join=True)
        return dict(json.loads(Path(job["out"]).read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results: dict[str, Any] = {"cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__}
    for model in args.models.split(","):
        torch.set_num_threads(args.threads)
        steps = args.steps if model == "vit-b/16" else args.steps * 5
        one = train(model, steps)
        two = two_ranks(model, steps, args.threads)
        results[model] = {"world_1": one, "world_2": two, "speedup": two["steps_per_s"] / one["steps_per_s"]}
        print(json.dumps({model: results[model]}, indent=2), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
