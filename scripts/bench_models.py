"""Benchmarks of the prompt-learning library on this machine (prints figures; not a test).

    python scripts/bench_models.py all            # everything below, ViT-B/16 size
    python scripts/bench_models.py qkv            # RPP qkv vs shared prompt step time (open_clip ViT-B-16)
    python scripts/bench_models.py step           # SPT prompt-tuning step vs one no-grad forward (timm ViT-B/16)
    python scripts/bench_models.py init           # SPT init time vs one no-grad forward over the same images
    python scripts/bench_models.py init-memory    # SPT init peak RSS at 1k vs 10k images (one subprocess each)

Weights are random (no downloads here): speed does not depend on the values. Timings are medians of
``--repeats`` runs after one warm-up, with ``torch.set_num_threads(--threads)``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from models import BackboneSpec, build_method, load_backbone  # noqa: E402


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class RandomImages(torch.utils.data.Dataset[dict[str, Any]]):
    """Images generated per index (nothing held), so memory measures the algorithm, not the data."""

    def __init__(self, count: int, size: int, num_classes: int = 10) -> None:
        self.count, self.size, self.class_names = count, size, [f"c{i}" for i in range(num_classes)]

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, Any]:
        gen = torch.Generator().manual_seed(index)
        image = torch.rand(3, self.size, self.size, generator=gen)
        return {"image": image, "label": index % len(self.class_names), "index": index}


def bench_qkv(args: argparse.Namespace) -> dict[str, Any]:
    backbone = load_backbone(BackboneSpec(family="open_clip", arch="ViT-B-16", weights="random", kind="clip"))
    classes = [f"class number {i}" for i in range(args.classes)]
    images = torch.rand(args.clip_batch, 3, 224, 224)
    batch = {
        "image": images,
        "label": torch.arange(args.clip_batch) % len(classes),
        "index": torch.arange(args.clip_batch),
    }
    result: dict[str, Any] = {"batch": args.clip_batch, "classes": args.classes}
    for design in ("shared", "qkv"):
        cfg = {
            "text_design": design,
            "vision_design": design,
            "text_length": 4,
            "vision_length": 4,
            "kd_weight": 0.0,
            "num_sampled_classes": args.classes,
        }
        method = build_method("rpp", backbone, cfg, classes)
        opt = torch.optim.SGD(list(method.learned_parameters().values()), lr=1e-3, momentum=0.9)

        def step(method: Any = method, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad(set_to_none=True)
            loss, _ = method.training_loss(batch, torch.Generator().manual_seed(0))
            loss.backward()
            opt.step()

        result[f"{design}_step_s"] = median_seconds(step, args.repeats)
        result[f"{design}_trainable"] = sum(p.numel() for p in method.learned_parameters().values())
    result["qkv_over_shared"] = result["qkv_step_s"] / result["shared_step_s"]
    return result


def bench_step(args: argparse.Namespace) -> dict[str, Any]:
    backbone = load_backbone(BackboneSpec(family="timm", arch="vit_base_patch16_224", weights="random"))
    images = torch.rand(args.batch, 3, 224, 224)
    batch = {"image": images, "label": torch.arange(args.batch) % 10, "index": torch.arange(args.batch)}
    method = build_method(
        "spt",
        backbone,
        {"mode": "deep", "num_prompts": args.prompts, "init": "xavier"},
        [f"c{i}" for i in range(10)],
    )
    method.train()
    opt = torch.optim.AdamW(list(method.learned_parameters().values()), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss, _ = method.training_loss(batch, torch.Generator().manual_seed(0))
        loss.backward()
        opt.step()

    def plain_forward() -> None:
        with torch.inference_mode():
            backbone.model(images)

    def prompted_forward() -> None:
        with torch.inference_mode():
            method(images)

    result = {
        "batch": args.batch,
        "prompts_per_layer": args.prompts,
        "plain_forward_s": median_seconds(plain_forward, args.repeats),
        "prompted_forward_s": median_seconds(prompted_forward, args.repeats),
        "step_s": median_seconds(step, args.repeats),
    }
    result["step_over_plain_forward"] = result["step_s"] / result["plain_forward_s"]
    result["step_over_prompted_forward"] = result["step_s"] / result["prompted_forward_s"]
    return result


def bench_init(args: argparse.Namespace) -> dict[str, Any]:
    backbone = load_backbone(BackboneSpec(family="timm", arch="vit_base_patch16_224", weights="random"))
    data = RandomImages(args.init_images, 224)
    images = torch.stack([data[i]["image"] for i in range(len(data))])

    def forward_all() -> None:
        with torch.inference_mode():
            for start in range(0, len(images), args.batch):
                backbone.model(images[start : start + args.batch])

    result: dict[str, Any] = {
        "images": args.init_images,
        "forward_s": median_seconds(forward_all, args.repeats),
    }
    for init in ("random", "mean-pool", "max-pool", "kmeans"):
        method = build_method(
            "spt",
            backbone,
            {
                "mode": "deep",
                "init": init,
                "init_batch_size": args.batch,
                "init_max_images": args.init_images,
            },
            data.class_names,
        )
        result[f"{init}_s"] = median_seconds(partial(method.prepare, data, seed=0), args.repeats)
        result[f"{init}_over_forward"] = result[f"{init}_s"] / result["forward_s"]
    return result


def init_memory_child(images: int) -> dict[str, Any]:
    """Runs in a subprocess: SPT deep random init over ``images`` images of a small ViT; peak RSS."""
    spec = BackboneSpec(
        family="timm",
        arch="vit_small_patch16_224",
        weights="random",
        model_kwargs={"img_size": 64, "patch_size": 8},
    )
    backbone = load_backbone(spec)
    data = RandomImages(images, 64)
    method = build_method(
        "spt",
        backbone,
        {"mode": "deep", "init": "random", "init_max_images": images, "init_batch_size": 128},
        data.class_names,
    )
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    method.prepare(data, seed=0)
    stats = getattr(method, "prototype_stats", {})
    return {
        "images": images,
        "seconds": time.perf_counter() - start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_init_mb": base_rss / 1024,
        "peak_held_rows": stats.get("peak_held_rows"),
        "peak_held_bytes": stats.get("peak_held_bytes"),
    }


def bench_init_memory(args: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for count in (1000, 10000):
        proc = subprocess.run(
            [sys.executable, __file__, "_init-memory-child", str(count), "--threads", str(args.threads)],
            capture_output=True,
            text=True,
            check=True,
        )
        out[str(count)] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"model": "vit_small_patch16_224 @64px patch 8 (64 tokens, width 384, 12 blocks)", **out}


BENCHES = {"qkv": bench_qkv, "step": bench_step, "init": bench_init, "init-memory": bench_init_memory}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=[*BENCHES, "all", "_init-memory-child"])
    parser.add_argument("count", nargs="?", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--clip-batch", type=int, default=8)
    parser.add_argument("--classes", type=int, default=32)
    parser.add_argument("--init-images", type=int, default=64)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.what == "_init-memory-child":
        print(json.dumps(init_memory_child(args.count)))
        return
    names = list(BENCHES) if args.what == "all" else [args.what]
    results = {"torch": torch.__version__, "threads": args.threads, "cpu": os.cpu_count()}
    for name in names:
        results[name] = BENCHES[name](args)
        print(json.dumps({name: results[name]}, indent=2), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
