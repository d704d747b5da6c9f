"""Mixed precision benchmark: seconds per SPT-deep training step in fp32 vs bf16 (prints figures; not a test).

    python scripts/bench_precision.py                       # tiny ViT, then ViT-B/16 size, batch 8, CPU
    python scripts/bench_precision.py --steps 10 --threads 2 --device cpu

Each step is the engine's own step path (``StepPrecision``: autocast around ``training_loss``, then
backward and AdamW). The fp32 and bf16 steps alternate (round-robin after warm-up) so load drift on the
machine hits both alike; the figure is the median of ``--steps`` timed steps (``time.perf_counter``).
Weights are random (no downloads): speed does not depend on the values.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from models import BackboneSpec, build_method, load_backbone  # noqa: E402
from models.engine.precision import StepPrecision  # noqa: E402

TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}
MODELS: dict[str, tuple[str, dict[str, Any], int]] = {
    "tiny-vit (2 blocks, d=64, 32 px)": ("vit_tiny_patch16_224", TINY_VIT, 32),
    "vit_base_patch16_224 (random)": ("vit_base_patch16_224", {}, 224),
}


def step_fn(
    arch: str, kwargs: dict[str, Any], size: int, precision: str, batch: int, device: str
) -> Callable:
    """One SPT-deep training step of a fresh method (its own optimizer) under ``precision``."""
    spec = BackboneSpec(family="timm", arch=arch, weights="random", model_kwargs=kwargs)
    backbone = load_backbone(spec)
    backbone.model.to(device)
    method = build_method("spt", backbone, {"mode": "deep", "init": "xavier"}, [f"c{i}" for i in range(10)])
    method.to(device).train()
    opt = torch.optim.AdamW(list(method.learned_parameters().values()), lr=1e-3)
    images = torch.rand(batch, 3, size, size, device=device)
    data = {"image": images, "label": torch.arange(batch, device=device) % 10}
    prec = StepPrecision(precision, torch.device(device))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with prec.autocast():
            loss, _ = method.training_loss(data, torch.Generator().manual_seed(0))
        prec.backward_and_step(loss.float(), opt, None)
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def interleaved_medians(fns: dict[str, Callable[[], None]], steps: int, warmup: int) -> dict[str, float]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=10, help="timed steps per precision (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, device {args.device}, {args.threads} threads, batch {args.batch}, "
        f"median of {args.steps} steps after {args.warmup} warm-up, SPT deep (20 prompts/layer), AdamW"
    )
    print(f"{'model':36s} {'fp32 s/step':>12s} {'bf16 s/step':>12s} {'bf16/fp32':>10s}")
    for label, (arch, kwargs, size) in MODELS.items():
        fns = {p: step_fn(arch, kwargs, size, p, args.batch, args.device) for p in ("fp32", "bf16")}
        med = interleaved_medians(fns, args.steps, args.warmup)
        print(
            f"{label:36s} {med['fp32']:12.4f} {med['bf16']:12.4f} {med['bf16'] / med['fp32']:10.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
