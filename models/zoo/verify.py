"""Checks on a freshly built zoo backbone: it loads back unchanged, and (CLIP) it beats a random init.

``verify_with_loader`` reloads the saved weights through the library's own backbone loader and compares
them with the in-memory model; ``evaluate_clip_zero_shot`` measures zero-shot accuracy on held-out world
tasks next to a random-init CLIP of the same architecture and chance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..backbones.spec import BackboneSpec
from ..errors import ConfigError
from .pretrain_clip import zero_shot_report
from .tasks import ZERO_SHOT_TASKS, build_task

# Task seed for evaluation: not a seed any pretraining stream uses.
EVAL_TASK_SEED = 2024


def evaluate_clip_zero_shot(
    model: torch.nn.Module,
    tokenizer: Callable[..., torch.Tensor],
    model_config: dict[str, Any],
    *,
    arch: str,
    image_size: int,
    test_size: int = 500,
    task_names: Sequence[str] = ZERO_SHOT_TASKS,
    seed: int = EVAL_TASK_SEED,
) -> dict[str, dict[str, float]]:
    """Zero-shot accuracy on held-out world tasks (fresh task seed) vs a random-init CLIP, plus chance."""
    tasks = [build_task(n, seed=seed, image_size=image_size, sizes={"test": test_size}) for n in task_names]
    report = zero_shot_report(model, tokenizer, tasks, model_config=model_config, arch=arch)
    keys = ("pretrained", "random_init", "chance")
    mean = {k: sum(r[k] for r in report.values()) / max(1, len(report)) for k in keys}
    return {**report, "mean": mean}


def verify_with_loader(spec: BackboneSpec, reference: Any, image_size: int) -> dict[str, Any]:
    """Load ``spec`` through the real backbone loader and compare with the in-memory model."""
    from ..backbones.loader import load_backbone

    backbone = load_backbone(spec)
    x = torch.randn(4, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    # Compare frozen with frozen: PyTorch picks other attention kernels when no parameter needs a grad.
    flags = {n: p.requires_grad for n, p in reference.named_parameters()}
    reference.requires_grad_(False)
    try:
        diff = _max_diff(spec, backbone.model, reference, x)
    finally:
        for n, p in reference.named_parameters():
            p.requires_grad_(flags[n])
    return {
        "sha256_match": backbone.weights_sha256 == spec.sha256,
        "max_abs_diff": diff,
        "preprocessing": dataclasses.asdict(backbone.preprocessing),
    }


@torch.no_grad()
def _max_diff(spec: BackboneSpec, loaded: Any, reference: Any, x: torch.Tensor) -> float:
    if spec.family == "open_clip":
        tokens = open_clip_tokenize(["two small red circles on a striped background"], spec)
        image = (loaded.encode_image(x) - reference.encode_image(x)).abs().max().item()
        text = (loaded.encode_text(tokens) - reference.encode_text(tokens)).abs().max().item()
        return max(image, text)
    # Every saved tensor must come back unchanged (an MAE encoder's final `norm` is loaded as `fc_norm`,
    # its mean-pool readout); with the same (token) readout the outputs must match too.
    got = loaded.state_dict()
    diff = 0.0
    for key, value in reference.state_dict().items():
        other = got.get(key)
        if other is None and key.startswith("norm."):
            other = got.get("fc_" + key)
        if other is None:
            raise ConfigError("weights", f"the loaded model lacks {key}")
        diff = max(diff, (other - value).abs().max().item())
    if spec.kind == "supervised":
        diff = max(diff, (loaded(x) - reference(x)).abs().max().item())
    return diff


def open_clip_tokenize(texts: list[str], spec: BackboneSpec) -> torch.Tensor:
    import open_clip

    context = int((spec.model_config or {}).get("text_cfg", {}).get("context_length", 77))
    return open_clip.tokenize(texts, context_length=context)
