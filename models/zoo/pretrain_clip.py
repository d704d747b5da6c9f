"""Pretrain a tiny CLIP (a real open_clip architecture) contrastively on world images and captions.

The model is open_clip's own ``CLIP`` built from a JSON model config registered with
``open_clip.add_model_config``; the text side uses open_clip's BPE tokenizer, so the saved weights load
like any open_clip checkpoint (``local-dir:`` layout: ``open_clip_config.json`` +
``open_clip_model.safetensors``). Data is streamed: batch ``step`` is world batch ``step`` for the run's
seed (no augmentation: a flip would change "left"/"right" and orientations), so a step-budgeted run is
reproducible. The loss is open_clip's ``ClipLoss`` (symmetric InfoNCE with a learned temperature).

Example::

    result = pretrain_clip(ClipPretrainConfig(max_steps=200))
    weights, sha = save_clip(result.model, result.model_config, "zoo/zoo-clip-tiny")
    zero_shot_report(result.model, result.tokenizer, tasks)
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import threading
from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones.weights import sha256_file
from ..config import BaseConfig, check_int
from ..errors import ConfigError
from .tasks import Task
from .training import Budget, ProgressLog, cosine_lr, decay_groups, prefetch, resolve_device
from .world import World

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass
class ClipPretrainConfig(BaseConfig):
    """A tiny open_clip ViT CLIP and how long to train it.

    Defaults: vision 4 layers x 192 wide (3 heads), patch 4 on 32 px (64 patches); text 4 layers x 128
    wide (2 heads), 32-token context; 128-d joint embedding.
    """

    arch: str = "zoo-clip-tiny"
    image_size: int = 32
    patch_size: int = 4
    vision_width: int = 192
    vision_layers: int = 4
    vision_head_width: int = 64
    text_width: int = 128
    text_layers: int = 4
    text_heads: int = 2
    context_length: int = 32
    embed_dim: int = 128
    batch_size: int = 256
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 50
    max_steps: int | None = 1000
    max_seconds: float | None = None
    seed: int = 0
    supersample: int = 2
    log_every: int = 25
    device: str = "auto"
    data_workers: int = 0  # processes rendering batches (0 = one background thread); never changes results

    def __post_init__(self) -> None:
        check_int("image_size", self.image_size, minimum=16)
        check_int("patch_size", self.patch_size, minimum=1)
        if self.image_size % self.patch_size:
            raise ConfigError("patch_size", "must divide image_size")
        check_int("batch_size", self.batch_size, minimum=2)
        check_int("context_length", self.context_length, minimum=8)
        if self.vision_width % self.vision_head_width:
            raise ConfigError("vision_head_width", "must divide vision_width")
        if self.text_width % self.text_heads:
            raise ConfigError("text_heads", "must divide text_width")
        self.budget()  # validates max_steps / max_seconds

    def budget(self) -> Budget:
        return Budget(self.max_steps, self.max_seconds)

    def model_config(self) -> dict[str, Any]:
        """open_clip's model config (what ``open_clip_config.json`` stores under ``model_cfg``)."""
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {
                "image_size": self.image_size,
                "layers": self.vision_layers,
                "width": self.vision_width,
                "head_width": self.vision_head_width,
                "patch_size": self.patch_size,
            },
            "text_cfg": {
                "context_length": self.context_length,
                "vocab_size": 49408,
                "width": self.text_width,
                "heads": self.text_heads,
                "layers": self.text_layers,
            },
        }


@dataclasses.dataclass
class ClipPretrainResult:
    model: torch.nn.Module
    tokenizer: Callable[..., torch.Tensor]
    model_config: dict[str, Any]
    config: ClipPretrainConfig
    history: list[dict[str, float]]
    steps: int
    seconds: float
    images_seen: int


# ---- building ---------------------------------------------------------------------------------------

_REGISTER_LOCK = threading.Lock()
_CONFIG_DIR: Path | None = None


def register_clip_config(arch: str, model_config: dict[str, Any]) -> None:
    """Make ``arch`` a known open_clip model name with ``model_config`` (a JSON file in a temp folder)."""
    import open_clip

    global _CONFIG_DIR
    with _REGISTER_LOCK:
        if _CONFIG_DIR is None:
            _CONFIG_DIR = Path(tempfile.mkdtemp(prefix="promptune-zoo-clip-"))
        path = _CONFIG_DIR / f"{arch}.json"
        path.write_text(json.dumps(model_config, sort_keys=True))
        open_clip.add_model_config(path)


def build_clip(arch: str, model_config: dict[str, Any], *, seed: int) -> tuple[torch.nn.Module, Any]:
    """A randomly initialised open_clip CLIP (initialisation seeded) and its tokenizer."""
    import open_clip

    register_clip_config(arch, model_config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(arch, pretrained=None)
    return model, open_clip.get_tokenizer(arch)


def preprocess_stats(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) the model's preprocessing normalises with (what the backbone loader will use)."""
    import open_clip

    cfg = open_clip.get_model_preprocess_cfg(model)
    return tuple(cfg.get("mean", OPENAI_MEAN)), tuple(cfg.get("std", OPENAI_STD))


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` -> float normalised, exactly as ToTensor + Normalize would on the PIL image."""
    x = images.to(torch.float32) / 255.0
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def world_images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """World renders ``(B, H, W, 3)`` uint8 -> ``(B, 3, H, W)`` uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


# ---- training ---------------------------------------------------------------------------------------


def _clip_batches(
    world: World, tokenizer: Callable[..., torch.Tensor], batch_size: int, workers: int
) -> Generator[tuple[torch.Tensor, torch.Tensor], None, None]:
    """(uint8 images, caption tokens) of world batch 0, 1, ..., rendered ahead of the training loop."""

    def make(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, captions, _ = world.batch(step, batch_size)
        return world_images_to_tensor(images), tokenizer(captions)

    return prefetch(make, workers=workers)


def _contrastive_step(
    model: torch.nn.Module,
    loss_fn: Any,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    tokens: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on a batch; returns (loss, the logit scale the loss used)."""
    image_features, text_features, logit_scale = _clip_forward(model, images, tokens)
    loss = loss_fn(image_features, text_features, logit_scale)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():  # as in CLIP: clamp the temperature to at most 100
        _logit_scale_param(model).clamp_(0, 4.6052)
    return loss, logit_scale


def pretrain_clip(
    config: ClipPretrainConfig | dict[str, Any] | None = None,
    *,
    log: Callable[[str], None] | None = print,
    world: World | None = None,
) -> ClipPretrainResult:
    """Contrastive pretraining on the world's (image, caption) stream, within the config's budget."""
    from open_clip.loss import ClipLoss

    cfg = config if isinstance(config, ClipPretrainConfig) else ClipPretrainConfig.from_dict(config or {})
    device = resolve_device(cfg.device)
    model_config = cfg.model_config()
    model, tokenizer = build_clip(cfg.arch, model_config, seed=cfg.seed)
    model.to(device).train()
    mean, std = preprocess_stats(model)
    world = world or World(image_size=cfg.image_size, seed=cfg.seed, supersample=cfg.supersample)
    optimizer = torch.optim.AdamW(
        decay_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6
    )
    loss_fn = ClipLoss()
    budget = cfg.budget()

    progress = ProgressLog(f"clip {cfg.arch}", cfg.log_every, log)
    step, seen = 0, 0
    if log is not None:
        params = sum(p.numel() for p in model.parameters())
        log(f"[clip {cfg.arch}] {params / 1e6:.2f} M parameters on {device}; budget {budget}")
    batches = _clip_batches(world, tokenizer, cfg.batch_size, cfg.data_workers)
    try:
        for images, tokens in batches:
            frac = budget.progress(step, progress.elapsed())
            if step > 0 and frac >= 1.0:
                break
            lr = cosine_lr(cfg.lr, frac, step, cfg.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = normalise(images, mean, std).to(device, non_blocking=True)
            t = tokens.to(device, non_blocking=True)
            loss, logit_scale = _contrastive_step(model, loss_fn, optimizer, x, t)
            seen += images.shape[0]
            step += 1
            progress.step(step - 1, float(loss.detach()), lr, seen, {"scale": float(logit_scale.detach())})
    finally:
        batches.close()
    progress.finish()
    model.eval()
    return ClipPretrainResult(
        model=model.cpu(), tokenizer=tokenizer, model_config=model_config, config=cfg,
        history=progress.history, steps=step, seconds=progress.elapsed(), images_seen=seen,
    )  # fmt: skip


def _clip_forward(
    model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    out = model(images, tokens)
    if isinstance(out, dict):
        return out["image_features"], out["text_features"], out["logit_scale"]
    return out[0], out[1], out[2]


def _logit_scale_param(model: Any) -> torch.nn.Parameter:
    return model.logit_scale


# ---- zero-shot evaluation -----------------------------------------------------------------------


@torch.no_grad()
def class_text_features(
    model: Any, tokenizer: Callable[..., torch.Tensor], texts: Sequence[Sequence[str]]
) -> torch.Tensor:
    """``(C, D)`` unit text embeddings, each the normalised mean of its class's prompt ensemble."""
    device = next(model.parameters()).device
    flat = [t for group in texts for t in group]
    feats = []
    for i in range(0, len(flat), 512):
        feats.append(F.normalize(model.encode_text(tokenizer(flat[i : i + 512]).to(device)).float(), dim=-1))
    all_feats = torch.cat(feats)
    out, start = [], 0
    for group in texts:
        out.append(F.normalize(all_feats[start : start + len(group)].mean(0), dim=-1))
        start += len(group)
    return torch.stack(out)


@torch.no_grad()
def zero_shot_accuracy(
    model: Any,
    tokenizer: Callable[..., torch.Tensor],
    task: Task,
    *,
    split: str = "test",
    batch_size: int = 500,
) -> float:
    """Top-1 zero-shot accuracy of ``model`` on ``task[split]`` with the task's class texts."""
    model.eval()
    device = next(model.parameters()).device
    mean, std = preprocess_stats(model)
    text = class_text_features(model, tokenizer, task.texts())
    images, labels = task.split(split)
    correct = 0
    for i in range(0, len(labels), batch_size):
        x = normalise(images[i : i + batch_size], mean, std).to(device)
        feats = F.normalize(model.encode_image(x).float(), dim=-1)
        correct += int(((feats @ text.T).argmax(-1).cpu() == labels[i : i + batch_size]).sum())
    return correct / max(1, len(labels))


def zero_shot_report(
    model: torch.nn.Module,
    tokenizer: Callable[..., torch.Tensor],
    tasks: Sequence[Task],
    *,
    model_config: dict[str, Any] | None = None,
    arch: str = "zoo-clip-tiny",
    baseline_seed: int = 12345,
    split: str = "test",
) -> dict[str, dict[str, float]]:
    """Zero-shot accuracy per task for ``model`` and (given ``model_config``) a random-init CLIP of the
    same architecture, plus chance: ``{task: {"pretrained", "random_init", "chance"}}``."""
    baseline = None
    if model_config is not None:
        baseline, _ = build_clip(arch, model_config, seed=baseline_seed)
        baseline.eval()
    out: dict[str, dict[str, float]] = {}
    for task in tasks:
        if not task.zero_shot:
            continue
        row = {
            "pretrained": zero_shot_accuracy(model, tokenizer, task, split=split),
            "chance": 1 / task.num_classes,
        }
        if baseline is not None:
            row["random_init"] = zero_shot_accuracy(baseline, tokenizer, task, split=split)
        out[task.name] = row
    return out


# ---- saving -------------------------------------------------------------------------------------


def save_clip(model: torch.nn.Module, model_config: dict[str, Any], out_dir: str | Path) -> tuple[Path, str]:
    """Write open_clip's ``local-dir:`` layout; returns (weights file, its sha256).

    Written by the backbone loader's own writer (``save_clip_local_dir``), so the files are exactly what
    ``load_backbone`` reads back.
    """
    from ..backbones.clip_loader import save_clip_local_dir

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_clip_local_dir(model, model_config, out_dir)
    weights = out_dir / "open_clip_model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"the CLIP writer left no {weights.name} in {out_dir}")
    return weights, sha256_file(weights)
