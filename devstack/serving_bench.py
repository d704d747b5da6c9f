"""The serving benchmark: HTTP predictions through the real API against in-process forwards, in one run.

    python scripts/bench_serving.py --size tiny            # the zoo's architectures
    python scripts/bench_serving.py --size vit-b           # ViT-B/16-sized random weights
    python scripts/bench_serving.py --size both --json var/bench-serving.json

Figures (ratios are taken within one run, so machine drift cancels):
- ``http_vs_inprocess``: images/s of N concurrent single-image clients over HTTP / the same checkpoint's
  in-process batch-32 forward;
- ``overhead_ms``: single-image request p50 over HTTP minus the in-process single-image forward p50;
- ``interleaved_vs_one``: images/s with the clients cycling over 16 tuned models / all on one model;
- ``zero_shot_vs_forward``: a repeated 1,000-class zero-shot request's p50 / one image's plain forward p50;
- ``classifier_create_s``: creating a 1,000-class classifier (text features computed, persisted).
The load generator and the server share this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from devstack.serving_stack import CLASSES, SPT_CONFIG, Served, image_bytes, median_seconds, served

ZERO_SHOT_CLASSES = [f"object number {i}" for i in range(1000)]


def _in_process(served_: Served, size: str, image_size: int) -> tuple[dict[str, float], Any]:
    """Batch-32 images/s and single-image p50 of one tuned model, the CLIP image forward p50, and a
    callable timing one CLIP image forward (for the interleaved zero-shot comparison)."""
    from models import BackboneSpec, build_method, load_backbone

    vit = load_backbone(BackboneSpec.from_dict(served_.backbones[f"{size}-vit"]))
    method = build_method("spt", vit, SPT_CONFIG, CLASSES).eval()
    clip = load_backbone(BackboneSpec.from_dict(served_.backbones[f"{size}-clip"]))
    clip_model: Any = clip.model
    batch = torch.randn(32, 3, image_size, image_size)
    size_ = _clip_image_size(clip_model)
    one_clip = torch.randn(1, 3, size_, size_)
    with torch.inference_mode():
        batch_s = median_seconds(lambda: method(batch), repeats=5)
        single_s = median_seconds(lambda: method(batch[:1]), repeats=20)
        clip_s = median_seconds(lambda: clip_model.encode_image(one_clip), repeats=20)

    def forward() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            clip_model.encode_image(one_clip)
        return time.perf_counter() - start

    figures = {
        "batch32_img_s": 32 / batch_s,
        "single_forward_ms": single_s * 1000,
        "clip_forward_ms": clip_s * 1000,
    }
    return figures, forward


def _clip_image_size(clip_model: Any) -> int:
    size = clip_model.visual.image_size
    return int(size[0] if isinstance(size, tuple | list) else size)


def precision_figures(served_: Served, size: str, image_size: int) -> dict[str, float]:
    """bf16 / fp16 autocast against fp32 on 64 random images: the largest probability difference and the
    top-1 agreement, for a tuned SPT model and a 1,000-class zero-shot classifier (random weights: a
    numerical comparison, not an accuracy on a task)."""
    from app.serving.device import precision
    from models import BackboneSpec, ZeroShotClassifier, batched_logits, build_method, load_backbone

    vit = load_backbone(BackboneSpec.from_dict(served_.backbones[f"{size}-vit"]))
    clip = load_backbone(BackboneSpec.from_dict(served_.backbones[f"{size}-clip"]))
    torch.manual_seed(0)
    method = build_method("spt", vit, SPT_CONFIG, CLASSES).eval()
    classifier = ZeroShotClassifier(clip, ZERO_SHOT_CLASSES[:1000])
    clip_size = _clip_image_size(clip.model)
    items = [
        (method, torch.randn(64, 3, image_size, image_size)),
        (classifier, torch.randn(64, 3, clip_size, clip_size)),
    ]
    out: dict[str, float] = {}
    with torch.inference_mode():
        classifier.text_features()
        reference = [logits.float().softmax(-1) for logits in batched_logits(items)]
        for dtype in ("bfloat16", "float16"):
            try:
                with precision(torch.device("cpu"), dtype):
                    low = [logits.float().softmax(-1) for logits in batched_logits(items)]
            except RuntimeError as exc:  # an op without a CPU kernel in this precision
                out[f"{dtype}_error"] = str(exc)[:80]  # type: ignore[assignment]
                continue
            for name, ref, got in zip(("spt", "zero_shot"), reference, low, strict=True):
                out[f"{dtype}_{name}_max_prob_diff"] = float((ref - got).abs().max())
                out[f"{dtype}_{name}_top1_agree"] = float((ref.argmax(-1) == got.argmax(-1)).float().mean())
    return out


async def _closed_loop(
    client: httpx.AsyncClient, urls: list[str], image: bytes, clients: int, total: int
) -> float:
    """Images/s of ``clients`` closed-loop clients sending ``total`` single-image requests over ``urls``."""
    tickets = iter(range(total))

    async def one_client() -> None:
        for ticket in tickets:
            response = await client.post(
                urls[ticket % len(urls)], files={"images": ("a.png", image, "image/png")}
            )
            if response.status_code != 200:
                raise RuntimeError(f"{response.status_code}: {response.text[:300]}")

    for url in urls[: min(len(urls), 16)]:  # warm-up: every model loaded once
        response = await client.post(url, files={"images": ("a.png", image, "image/png")})
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
    start = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    return total / (time.perf_counter() - start)


async def _p50(client: httpx.AsyncClient, send: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        (await send()).raise_for_status()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


async def _http(
    served_: Served, size: str, image: bytes, clients: int, total: int, forward: Any
) -> dict[str, float]:
    urls = [f"/v1/models/{m}/predict" for m in served_.models[f"{size}-vit"]]
    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(
        base_url=served_.base_url, headers=served_.headers, timeout=600, limits=limits
    ) as c:
        one = await _closed_loop(c, urls[:1], image, clients, total)
        mixed = await _closed_loop(c, urls, image, clients, total)
        single = await _p50(c, lambda: c.post(urls[0], files={"images": ("a.png", image, "image/png")}), 20)
        out = {"http_img_s": one, "http_16_models_img_s": mixed, "http_single_ms": single * 1000}
        out.update(await _zero_shot(c, image, forward))
    return out


async def _zero_shot(client: httpx.AsyncClient, image: bytes, forward: Any) -> dict[str, float]:
    data = {"classes": json.dumps(ZERO_SHOT_CLASSES)}

    def send() -> Any:
        return client.post(
            "/v1/predict/zero-shot", files={"images": ("a.png", image, "image/png")}, data=data
        )

    start = time.perf_counter()
    (await send()).raise_for_status()
    out = {"zero_shot_first_s": time.perf_counter() - start}
    # Interleaved with the in-process image forward (the server idles meanwhile), so drift cancels.
    http, local = [], []
    for _ in range(12):
        start = time.perf_counter()
        (await send()).raise_for_status()
        http.append(time.perf_counter() - start)
        local.append(forward())
    out["zero_shot_ms"] = statistics.median(http[2:]) * 1000
    out["clip_forward_interleaved_ms"] = statistics.median(local[2:]) * 1000
    start = time.perf_counter()
    created = await client.post("/v1/classifiers", json={"classes": [f"kind {i}" for i in range(1000)]})
    if created.status_code in (200, 201):
        out["classifier_create_s"] = time.perf_counter() - start
    return out


def run(size: str, *, clients: int, total: int) -> dict[str, Any]:
    image_size = 32 if size == "tiny" else 224
    image = image_bytes(image_size)
    with tempfile.TemporaryDirectory(prefix="promptune-bench-serving-") as tmp:
        with served(Path(tmp), size, models_per_backbone=16) as served_:
            reference, forward = _in_process(served_, size, image_size)
            http = asyncio.run(_http(served_, size, image, clients, total, forward))
            numerics = precision_figures(served_, size, image_size)
    figures = {**reference, **http, **numerics, "size": size, "clients": clients, "requests": total}
    figures["http_vs_inprocess"] = http["http_img_s"] / reference["batch32_img_s"]
    figures["overhead_ms"] = http["http_single_ms"] - reference["single_forward_ms"]
    figures["interleaved_vs_one"] = http["http_16_models_img_s"] / http["http_img_s"]
    figures["zero_shot_vs_forward"] = http["zero_shot_ms"] / http["clip_forward_interleaved_ms"]
    return figures


def report(figures: dict[str, Any]) -> str:
    rows = [f"{k:>22}  {v:.3f}" if isinstance(v, float) else f"{k:>22}  {v}" for k, v in figures.items()]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=("tiny", "vit-b", "both"), default="tiny")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=0, help="per phase (default: 400 tiny, 64 ViT-B)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())
    results = []
    for size in ("tiny", "vit-b") if args.size == "both" else (args.size,):
        total = args.requests or (400 if size == "tiny" else 64)
        figures = run(size, clients=args.clients, total=total)
        print(f"== {size}\n{report(figures)}", flush=True)
        results.append(figures)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0
