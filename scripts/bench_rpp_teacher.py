"""RPP's frozen teacher: seconds per training epoch with and without KD (prints figures; not a test).

    python scripts/bench_rpp_teacher.py                     # 320 images, 20 classes, batch 32, 3 epochs x 3 repeats
    python scripts/bench_rpp_teacher.py --threads 2 --images 320 --repeats 3 --profile

Three configurations, same seed and recipe (the engine's ``Trainer``, AdamW, fp32, CPU, no validation data,
no work_dir so no resume state is written):

    a  student only        kd_weight=0
    b  KD, cached teacher  kd_weight=1, cache_image_features=True
    c  KD, no cache        kd_weight=1, cache_image_features=False

An epoch's time is the wall time between ``on_epoch_end`` callbacks (epoch 1: from the call to ``fit``,
so it includes ``prepare`` - the teacher's template text features - and the optimizer set-up). No
validation runs, so none is timed. The three configurations run round-robin within each repeat so load
drift on the machine hits all alike (after one untimed
warm-up epoch each); the figures are medians over ``--repeats``.

Backbone: the built zoo's ``zoo-clip-tiny`` (var/zoo/backbones.json) when present, else the tests' tiny
random CLIP. Images are random tensors at the backbone's resolution (speed does not depend on the values);
the dataset gives ``{"image", "label", "index"}`` dicts, so the per-index feature cache applies.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from models import BackboneSpec, load_backbone  # noqa: E402
from models.backbones.spec import Backbone  # noqa: E402
from models.engine.trainer import Trainer  # noqa: E402
from models.rpp import RPPModel  # noqa: E402

ZOO_REGISTRY = ROOT / "var" / "zoo" / "backbones.json"
CONFIGS: dict[str, dict[str, Any]] = {
    "a student only": {"kd_weight": 0.0},
    "b KD + cache": {"kd_weight": 1.0, "cache_image_features": True},
    "c KD, no cache": {"kd_weight": 1.0, "cache_image_features": False},
}


class RandomImages(torch.utils.data.Dataset):
    """``n`` fixed random images (seeded) with labels cycling over ``class_names``."""

    def __init__(self, n: int, size: int, class_names: list[str], seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, size, size, generator=gen)
        self.labels = torch.arange(n) % len(class_names)
        self.class_names = class_names

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "label": int(self.labels[i]), "index": i}


def load_clip() -> tuple[str, Backbone]:
    if ZOO_REGISTRY.exists():
        entry = json.loads(ZOO_REGISTRY.read_text()).get("zoo-clip-tiny")
        if entry is not None:
            return "zoo-clip-tiny", load_backbone(BackboneSpec.from_dict(entry))
    from tests.tiny import tiny_clip_spec

    torch.manual_seed(0)
    return "tests' tiny random CLIP", load_backbone(tiny_clip_spec())


class EpochClock:
    """Marks the wall time of every ``on_epoch_end``."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> None:
        self.marks.append(time.perf_counter())


def run_once(
    backbone: Backbone, overrides: dict[str, Any], data: RandomImages, args: argparse.Namespace
) -> list[float]:
    """Seconds per epoch of one fresh RPP fit."""
    method = RPPModel(backbone, overrides, data.class_names)
    train = {
        "epochs": args.epochs,
        "batch_size": args.batch,
        "lr": 5e-3,
        "warmup_epochs": min(1.0, args.epochs / 2),
        "seed": 0,
    }
    clock = EpochClock()
    trainer = Trainer(method, train, data, callbacks=[clock])
    start = time.perf_counter()
    trainer.fit()
    edges = [start, *clock.marks]
    return [b - a for a, b in zip(edges, edges[1:], strict=False)]


def profile_epoch(
    backbone: Backbone, overrides: dict[str, Any], data: RandomImages, args: argparse.Namespace
) -> None:
    """cProfile of a 2-epoch fit, printed by cumulative time (epoch 2 is the cached one)."""
    method = RPPModel(backbone, overrides, data.class_names)
    train = {"epochs": 2, "batch_size": args.batch, "lr": 5e-3, "seed": 0}
    trainer = Trainer(method, train, data)
    prof = cProfile.Profile()
    prof.enable()
    trainer.fit()
    prof.disable()
    pstats.Stats(prof).sort_stats("cumulative").print_stats(r"rpp|loss|encode|forward|backward|step", 25)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also cProfile configuration b")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    name, backbone = load_clip()
    size = backbone.preprocessing.image_size
    class_names = [f"object {i}" for i in range(args.classes)]
    data = RandomImages(args.images, size, class_names)
    steps = -(-args.images // args.batch)
    print(
        f"torch {torch.__version__}, CPU, {args.threads} threads, backbone {name} ({size} px), "
        f"{args.images} images, {args.classes} classes, batch {args.batch} ({steps} steps/epoch), "
        f"{args.epochs} epochs, median of {args.repeats} repeats; RPP defaults (qkv text + vision prompts)"
    )
    for overrides in CONFIGS.values():  # warm-up (allocator, kernels, lazy imports): one untimed epoch each
        run_once(backbone, overrides, data, argparse.Namespace(**{**vars(args), "epochs": 1}))
    times: dict[str, list[list[float]]] = {label: [] for label in CONFIGS}
    for rep in range(args.repeats):
        for label, overrides in CONFIGS.items():
            times[label].append(run_once(backbone, overrides, data, args))
        print(
            f"  repeat {rep + 1}: "
            + ", ".join(f"{k[0]} {[round(t, 2) for t in v[-1]]}" for k, v in times.items()),
            flush=True,
        )

    def median_epoch(label: str, epoch: int) -> float:
        return statistics.median(run[epoch] for run in times[label])

    def median_later(label: str) -> float:  # per-repeat mean of epochs >= 2, then the median over repeats
        return statistics.median(statistics.mean(run[1:]) for run in times[label])

    header = " ".join(f"{'epoch ' + str(e + 1) + ' (s)':>13s}" for e in range(args.epochs))
    print(f"{'configuration':16s} {header} {'epochs>=2 (s)':>14s} {'/a ep1':>7s} {'/a ep>=2':>9s}")
    base1, base2 = median_epoch("a student only", 0), median_later("a student only")
    for label in CONFIGS:
        cols = " ".join(f"{median_epoch(label, e):13.3f}" for e in range(args.epochs))
        later = median_later(label)
        print(f"{label:16s} {cols} {later:14.3f} {median_epoch(label, 0) / base1:7.2f} {later / base2:9.2f}")
    if args.profile:
        profile_epoch(backbone, CONFIGS["b KD + cache"], data, args)


if __name__ == "__main__":
    main()
