"""Benchmarks of the prompt-learning library on this machine (prints figures; not a test).

    python scripts/bench_models.py all            # everything below, ViT-B/16 size
    python scripts/bench_models.py qkv            # RPP qkv vs shared prompt step time (open_clip ViT-B-16)
    python scripts/bench_models.py step           # SPT prompt-tuning step vs one no-grad forward (timm ViT-B/16)
    python scripts/bench_models.py step-variants  # the same ratio in bf16 and under torch.compile
    python scripts/bench_models.py init           # SPT init time vs one no-grad forward over the same images
    python scripts/bench_models.py init-memory    # SPT init peak RSS at 1k vs 10k images (one subprocess each)

Weights are random (no downloads here): speed does not depend on the values. Timings are medians of
``--repeats`` runs after one warm-up, with ``torch.set_num_threads(--threads)``.
"""

from __future__ import annotations

import argparse
import json
import os
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


def interleaved_medians(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds per callable, run round-robin after one warm-up each, so drift hits all alike."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def bench_qkv(args: argparse.Namespace) -> dict[str, Any]:
    """Both designs are built first and their steps interleaved, so load drift hits both alike."""
    backbone = load_backbone(BackboneSpec(family="open_clip", arch="ViT-B-16", weights="random", kind="clip"))
    classes = [f"class number {i}" for i in range(args.classes)]
    images = torch.rand(args.clip_batch, 3, 224, 224)
    batch = {
        "image": images,
        "label": torch.arange(args.clip_batch) % len(classes),
        "index": torch.arange(args.clip_batch),
    }
    steps: dict[str, Callable[[], None]] = {}
    result: dict[str, Any] = {"batch": args.clip_batch, "classes": args.classes, "prompt_tokens": 4}
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

        steps[design] = step
        result[f"{design}_trainable"] = sum(p.numel() for p in method.learned_parameters().values())
    for name, seconds in interleaved_medians(steps, args.repeats).items():
        result[f"{name}_step_s"] = seconds
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

    times = interleaved_medians(
        {"plain_forward_s": plain_forward, "prompted_forward_s": prompted_forward, "step_s": step},
        args.repeats,
    )
    result: dict[str, Any] = {"batch": args.batch, "prompts_per_layer": args.prompts, **times}
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

    runs: dict[str, Callable[[], Any]] = {"forward": forward_all}
    for init in ("random", "mean-pool", "max-pool", "kmeans"):
        config = {
            "mode": "deep",
            "init": init,
            "init_batch_size": args.batch,
            "init_max_images": args.init_images,
        }
        runs[init] = partial(build_method("spt", backbone, config, data.class_names).prepare, data, seed=0)
    times = interleaved_medians(runs, args.repeats)
    result: dict[str, Any] = {"images": args.init_images, "batch": args.batch, "forward_s": times["forward"]}
    for init in ("random", "mean-pool", "max-pool", "kmeans"):
        result[f"{init}_s"] = times[init]
        result[f"{init}_over_forward"] = times[init] / times["forward"]
    return result


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). ru_maxrss is useless here: Linux keeps it across execve."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


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
    with open("/proc/self/clear_refs", "w") as fh:  # reset VmHWM to the current RSS
        fh.write("5")
    before = _peak_rss_mb()
    start = time.perf_counter()
    method.prepare(data, seed=0)
    stats = getattr(method, "prototype_stats", {})
    return {
        "images": images,
        "seconds": time.perf_counter() - start,
        "rss_before_init_mb": before,
        "peak_rss_during_init_mb": _peak_rss_mb(),
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


def bench_step_variants(args: argparse.Namespace) -> dict[str, Any]:
    """The step/forward ratio under what could lower it: bf16 autocast (step and forward both in bf16),
    and torch.compile (inductor) of the step's loss and of the inference forward."""
    backbone = load_backbone(BackboneSpec(family="timm", arch="vit_base_patch16_224", weights="random"))
    images = torch.rand(args.batch, 3, 224, 224)
    batch = {"image": images, "label": torch.arange(args.batch) % 10, "index": torch.arange(args.batch)}
    config = {"mode": "deep", "num_prompts": args.prompts, "init": "xavier"}
    method = build_method("spt", backbone, config, [f"c{i}" for i in range(10)])
    method.train()
    opt = torch.optim.AdamW(list(method.learned_parameters().values()), lr=1e-3)
    loss_fn = method.training_loss
    compiled_loss = torch.compile(method.training_loss)
    compiled_forward = torch.compile(backbone.model)

    def step(fn: Callable[..., Any] = loss_fn, dtype: torch.dtype | None = None) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss, _ = fn(batch, torch.Generator().manual_seed(0))
        loss.float().backward()
        opt.step()

    def forward(fn: Callable[..., Any] = backbone.model, dtype: torch.dtype | None = None) -> None:
        with (
            torch.inference_mode(),
            torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None),
        ):
            fn(images)

    start = time.perf_counter()
    step(compiled_loss)
    forward(compiled_forward)
    compile_s = time.perf_counter() - start
    runs = {
        "fp32_forward_s": forward, "fp32_step_s": step,
        "bf16_forward_s": partial(forward, dtype=torch.bfloat16), "bf16_step_s": partial(step, dtype=torch.bfloat16),
        "compiled_forward_s": partial(forward, compiled_forward), "compiled_step_s": partial(step, compiled_loss),
    }  # fmt: skip
    times = interleaved_medians(runs, args.repeats)
    result: dict[str, Any] = {"batch": args.batch, "prompts_per_layer": args.prompts, **times}
    result["first_compiled_calls_s"] = compile_s
    for name in ("fp32", "bf16", "compiled"):
        result[f"{name}_step_over_{name}_forward"] = times[f"{name}_step_s"] / times[f"{name}_forward_s"]
    result["compiled_step_over_fp32_forward"] = times["compiled_step_s"] / times["fp32_forward_s"]
    return result


BENCHES = {
    "qkv": bench_qkv,
    "step": bench_step,
    "step-variants": bench_step_variants,
    "init": bench_init,
    "init-memory": bench_init_memory,
}


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
