"""What an RPP prompt pretraining on ImageNet-21K costs on 8 GPUs: counted FLOPs, a measured CPU rate, an estimate.

    python scripts/estimate_rpp_pretraining.py                 # open_clip ViT-B-16 (random weights), K=1000
    python scripts/estimate_rpp_pretraining.py --json out.json

1. FLOPs of one real RPP training step (forward + backward + the KD teacher, ``torch.utils.flop_counter``)
   at three small (images B, sampled classes K) points; a step's FLOPs are linear in both, so
   ``F(B, K) = a*B + b*K + c`` is solved exactly from them and checked on a fourth point.
   Counted twice: epoch 1 (the teacher encodes the images) and epochs >= 2 (teacher image features cached).
2. The measured wall time of one such step on this machine's CPU, for the achieved FLOP rate here.
3. The estimate for POMP's recipe: ImageNet-21K 16-shot (10,450 classes, 167,200 images), global batch
   8 x 32, K = 1000 sampled classes per step. Every rank recomputes the text tower for the same K classes
   (the draw is shared, distributed.py), so per GPU a step costs ``a*32 + b*1000 + c``. GPU time follows from
   an assumed sustained rate (``--gpu-tflops``, default 989 dense bf16 for an H100 SXM, at ``--mfu`` 0.35):
   an assumption, stated as such; no GPU ran this.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from models import BackboneSpec, load_backbone  # noqa: E402
from models.rpp import RPPConfig, RPPModel  # noqa: E402

IMAGENET21K_CLASSES = 10_450
SHOTS = 16
GLOBAL_BATCH, GPUS, SAMPLED_CLASSES = 256, 8, 1000


def _model(backbone: Any, classes: int, kd: bool) -> RPPModel:
    cfg = RPPConfig(num_sampled_classes=classes, kd_weight=1.0 if kd else 0.0, cache_image_features=True)
    model = RPPModel(backbone, cfg, [f"class {i}" for i in range(classes)])
    model.prepare(None, seed=0)  # the teacher's text features: once per job, not per step
    return model.train()


def _batch(images: int, classes: int, size: int) -> dict[str, torch.Tensor]:
    return {
        "image": torch.rand(images, 3, size, size, generator=torch.Generator().manual_seed(images)),
        "label": torch.arange(images) % classes,
        "index": torch.arange(images),
    }


def _step(model: RPPModel, batch: dict[str, torch.Tensor]) -> None:
    model.zero_grad(set_to_none=True)
    loss, _ = model.training_loss(batch, torch.Generator().manual_seed(0))
    loss.backward()


def step_flops(backbone: Any, images: int, classes: int, *, kd: bool, cached: bool) -> int:
    """FLOPs of one step with ``classes`` sampled (all of the model's ``classes``) on ``images`` images."""
    model = _model(backbone, classes, kd)
    batch = _batch(images, classes, backbone.preprocessing.image_size)
    if cached:
        _step(model, batch)  # fills the teacher's per-index image-feature cache
    with FlopCounterMode(display=False) as counter:
        _step(model, batch)
    return int(counter.get_total_flops())


def fit_linear(backbone: Any, *, kd: bool, cached: bool) -> dict[str, float]:
    """``F(B, K) = a*B + b*K + c`` from three points, and its error on a fourth."""
    f = {
        (b, k): step_flops(backbone, b, k, kd=kd, cached=cached) for b, k in [(2, 4), (4, 4), (2, 8), (4, 8)]
    }
    a = (f[4, 4] - f[2, 4]) / 2
    b = (f[2, 8] - f[2, 4]) / 4
    c = f[2, 4] - 2 * a - 4 * b
    predicted = a * 4 + b * 8 + c
    return {"per_image": a, "per_class": b, "fixed": c, "check_rel_error": abs(predicted - f[4, 8]) / f[4, 8]}


def cpu_rate(backbone: Any, images: int, classes: int, repeats: int) -> dict[str, float]:
    model = _model(backbone, classes, kd=True)
    batch = _batch(images, classes, backbone.preprocessing.image_size)
    _step(model, batch)  # warm-up, and the teacher cache
    with FlopCounterMode(display=False) as counter:
        _step(model, batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _step(model, batch)
        times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    return {
        "images": images,
        "classes": classes,
        "step_s": seconds,
        "tflops_per_s": counter.get_total_flops() / seconds / 1e12,
    }


def estimate(linear: dict[str, float], *, epochs: int, gpu_tflops: float, mfu: float) -> dict[str, float]:
    per_gpu_batch = GLOBAL_BATCH // GPUS
    step = linear["per_image"] * per_gpu_batch + linear["per_class"] * SAMPLED_CLASSES + linear["fixed"]
    steps = (IMAGENET21K_CLASSES * SHOTS) // GLOBAL_BATCH
    seconds = steps * step / (gpu_tflops * 1e12 * mfu)
    return {"tflop_per_gpu_step": step / 1e12, "steps_per_epoch": steps, "epoch_minutes": seconds / 60,
            "run_hours": seconds * epochs / 3600}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="ViT-B-16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu-tflops", type=float, default=989.0)
    parser.add_argument("--mfu", type=float, default=0.35)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = load_backbone(BackboneSpec(family="open_clip", arch=args.arch, weights="random", kind="clip"))
    first = fit_linear(backbone, kd=True, cached=False)
    later = fit_linear(backbone, kd=True, cached=True)
    out: dict[str, Any] = {
        "arch": args.arch,
        "flops_epoch1": first,
        "flops_epoch2_plus": later,
        "cpu": cpu_rate(backbone, 8, 64, args.repeats),
        "assumed": {
            "gpu_tflops": args.gpu_tflops,
            "mfu": args.mfu,
            "gpus": GPUS,
            "global_batch": GLOBAL_BATCH,
            "sampled_classes": SAMPLED_CLASSES,
            "epochs": args.epochs,
        },  # fmt: skip
        "estimate_epoch1": estimate(first, epochs=1, gpu_tflops=args.gpu_tflops, mfu=args.mfu),
        "estimate_epoch2_plus": estimate(
            later, epochs=args.epochs - 1, gpu_tflops=args.gpu_tflops, mfu=args.mfu
        ),
    }
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
