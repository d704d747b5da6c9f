"""Pretrain tiny timm ViTs on the world: supervised attribute classification, or MAE reconstruction.

Both produce an ordinary timm ``VisionTransformer`` (``timm.create_model(arch, num_classes=0,
**model_kwargs)``) whose state dict is saved as safetensors, so the backbone loader reads it like any
timm checkpoint:

- ``supervised``: the CLS token (timm's token pooling, the readout the loader uses for ``kind
  supervised``) feeds one linear head per world attribute (shape, colour, size, count, position,
  orientation, texture, background, style, corruption) and, on a share of each batch, a digit head on the
  scikit-learn digits *train* split only (the mini VTAB-1k ``digits`` val/test images are never seen).
  Heads are dropped when saving.
- ``mae``: He et al.'s masked autoencoder. The timm encoder sees only the unmasked patches
  (``mask_ratio`` 0.75) plus the CLS token; a small decoder (:mod:`.mae`, timm ``Block`` s) predicts the
  per-patch normalised pixels of the masked patches. The encoder keeps its final ``norm``, which the loader
  maps to ``fc_norm`` for the MAE mean-pool readout.

No augmentation (flips would change position / orientation labels). Inputs are normalised with the
mean/std written into ``model_kwargs["pretrained_cfg_overlay"]`` (with ``crop_pct`` 1.0), so the
loader's eval transform reproduces exactly the training input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.weights import sha256_file
from ..config import BaseConfig, check_choice, check_float, check_int
from ..errors import ConfigError
from . import world as W
from .mae import MaskedAutoencoder
from .pretrain_clip import normalise, world_images_to_tensor
from .training import Budget, ProgressLog, cosine_lr, decay_groups, prefetch, resolve_device

VIT_MEAN = (0.5, 0.5, 0.5)
VIT_STD = (0.5, 0.5, 0.5)

# Attribute heads of the supervised ViT: name -> number of classes (position and orientation have an
# extra "none" class: objects anywhere, symmetric shape).
ATTRIBUTE_HEADS = {
    "shape": len(W.SHAPES),
    "colour": len(W.COLOUR_NAMES),
    "size": len(W.SIZES),
    "count": len(W.COUNTS),
    "position": len(W.POSITIONS) + 1,
    "orientation": len(W.ORIENTATIONS) + 1,
    "texture": len(W.TEXTURES),
    "background": len(W.BACKGROUNDS),
    "style": len(W.STYLES),
    "corruption": len(W.CORRUPTIONS),
}


@dataclasses.dataclass
class VitPretrainConfig(BaseConfig):
    """A tiny timm ViT (default: 32 px, patch 4, width 192, depth 4, 3 heads) and its pretraining."""

    mode: str = "supervised"  # supervised | mae
    arch: str = "vit_tiny_patch16_224"
    image_size: int = 32
    patch_size: int = 4
    embed_dim: int = 192
    depth: int = 4
    num_heads: int = 3
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    max_steps: int | None = 1000
    max_seconds: float | None = None
    seed: int = 0
    supersample: int = 2
    # Supervised: share of each batch drawn from the digits train split; MAE: any value > 0 makes one batch
    # in eight a digits batch.
    digits_fraction: float = 0.125
    mask_ratio: float = 0.75
    decoder_width: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True
    log_every: int = 25
    device: str = "auto"
    data_workers: int = 0  # processes rendering batches (0 = one background thread); never changes results

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, ("supervised", "mae"))
        check_int("image_size", self.image_size, minimum=16)
        check_int("patch_size", self.patch_size, minimum=1)
        if self.image_size % self.patch_size:
            raise ConfigError("patch_size", "must divide image_size")
        if self.embed_dim % self.num_heads:
            raise ConfigError("num_heads", "must divide embed_dim")
        check_int("batch_size", self.batch_size, minimum=2)
        check_float("digits_fraction", self.digits_fraction, minimum=0.0, maximum=0.9)
        check_float("mask_ratio", self.mask_ratio, minimum=0.0, maximum=0.95)
        if self.decoder_width % self.decoder_heads:
            raise ConfigError("decoder_heads", "must divide decoder_width")
        self.budget()

    def budget(self) -> Budget:
        return Budget(self.max_steps, self.max_seconds)

    @property
    def kind(self) -> str:
        return "mae" if self.mode == "mae" else "supervised"

    def model_kwargs(self) -> dict[str, Any]:
        """The ``timm.create_model`` kwargs stored in the backbone spec (the loader adds num_classes=0)."""
        return {
            "img_size": self.image_size,
            "patch_size": self.patch_size,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "num_heads": self.num_heads,
            "pretrained_cfg_overlay": {
                "mean": list(VIT_MEAN),
                "std": list(VIT_STD),
                "crop_pct": 1.0,
                "interpolation": "bicubic",
            },
        }


@dataclasses.dataclass
class VitPretrainResult:
    model: nn.Module  # the timm encoder (num_classes=0), eval mode, on CPU
    config: VitPretrainConfig
    model_kwargs: dict[str, Any]
    history: list[dict[str, float]]
    steps: int
    seconds: float
    images_seen: int


def build_vit(config: VitPretrainConfig) -> nn.Module:
    """``timm.create_model(arch, num_classes=0, **model_kwargs)``, initialised from ``config.seed``."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return timm.create_model(config.arch, pretrained=False, num_classes=0, **config.model_kwargs())


# ---- supervised ---------------------------------------------------------------------------------


class AttributeHeads(nn.Module):
    """One linear classifier per world attribute, plus one for digits, on the pooled features."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({name: nn.Linear(dim, k) for name, k in ATTRIBUTE_HEADS.items()})
        self.digits = nn.Linear(dim, 10)


def attribute_targets(batch: W.SceneBatch) -> dict[str, torch.Tensor]:
    """Class index per head (``-1`` position / orientation -> the extra last class)."""
    out = {}
    for name in ATTRIBUTE_HEADS:
        values = getattr(batch, name).copy()
        if name == "count":
            values = values - 1
        if name in ("position", "orientation"):
            values = np.where(values < 0, ATTRIBUTE_HEADS[name] - 1, values)
        out[name] = torch.from_numpy(values.astype(np.int64))
    return out


def _digits_train_images(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from .tasks import digits_task

    return digits_task(image_size=image_size).split("train")


# ---- the loop -----------------------------------------------------------------------------------


def _objective_module(cfg: VitPretrainConfig, encoder: nn.Module) -> nn.Module:
    """The attribute heads (supervised) or the MAE around ``encoder``, initialised from ``seed + 1``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        if cfg.mode == "supervised":
            return AttributeHeads(cfg.embed_dim)
        return MaskedAutoencoder(
            encoder, decoder_width=cfg.decoder_width, decoder_depth=cfg.decoder_depth,
            decoder_heads=cfg.decoder_heads, mask_ratio=cfg.mask_ratio, norm_pix_loss=cfg.norm_pix_loss,
        )  # fmt: skip


def _batch_maker(
    cfg: VitPretrainConfig,
    world: W.World,
    digits: tuple[torch.Tensor, torch.Tensor],
    n_world: int,
    n_digits: int,
) -> Callable[[int], dict[str, torch.Tensor]]:
    """Batch ``step`` as a function of ``step`` alone (so prefetching never changes results)."""
    digits_x, digits_y = digits

    def make(step: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(cfg.seed * 7_919 + step)
        if cfg.mode == "mae" and cfg.digits_fraction > 0 and step % 8 == 7:
            # MAE also reconstructs digits (train split only): one batch in eight.
            return {"world": digits_x[torch.randint(0, len(digits_y), (n_world,), generator=g)]}
        images, _, scenes = world.batch(step, n_world)
        item = {"world": world_images_to_tensor(images)}
        if cfg.mode == "supervised":
            item.update({f"y_{k}": v for k, v in attribute_targets(scenes).items()})
        if n_digits:
            idx = torch.randint(0, len(digits_y), (n_digits,), generator=g)
            item["digits"], item["y_digits"] = digits_x[idx], digits_y[idx]
        return item

    return make


def _objective_loss(
    cfg: VitPretrainConfig,
    encoder: nn.Module,
    objective: nn.Module,
    item: dict[str, torch.Tensor],
    device: torch.device,
    step: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Step ``step``'s loss (and logged accuracies) under the config's mode."""
    if cfg.mode == "supervised":
        return _supervised_loss(encoder, objective, item, device)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # the MAE's masks
    return objective(normalise(item["world"], VIT_MEAN, VIT_STD).to(device), g), {}


def pretrain_vit(
    config: VitPretrainConfig | dict[str, Any] | None = None,
    *,
    log: Callable[[str], None] | None = print,
) -> VitPretrainResult:
    """Supervised or MAE pretraining on the world stream (and digits), within the config's budget."""
    cfg = config if isinstance(config, VitPretrainConfig) else VitPretrainConfig.from_dict(config or {})
    device = resolve_device(cfg.device)
    encoder = build_vit(cfg)
    world = W.World(image_size=cfg.image_size, seed=cfg.seed, supersample=cfg.supersample)
    digits = _digits_train_images(cfg.image_size)
    n_digits = int(round(cfg.batch_size * cfg.digits_fraction)) if cfg.mode == "supervised" else 0
    n_world = cfg.batch_size - n_digits
    extra = _objective_module(cfg, encoder)
    trainable = nn.ModuleDict({"encoder": encoder, "extra": extra}) if cfg.mode == "supervised" else extra
    trainable.to(device).train()
    optimizer = torch.optim.AdamW(decay_groups(trainable, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    budget = cfg.budget()
    make = _batch_maker(cfg, world, digits, n_world, n_digits)

    progress = ProgressLog(f"vit-{cfg.mode} {cfg.arch}", cfg.log_every, log)
    if log is not None:
        params = sum(p.numel() for p in encoder.parameters())
        log(f"[vit-{cfg.mode}] encoder {params / 1e6:.2f} M parameters on {device}; budget {budget}")
    step, seen = 0, 0
    batches = prefetch(make, workers=cfg.data_workers)
    try:
        for item in batches:
            frac = budget.progress(step, progress.elapsed())
            if step > 0 and frac >= 1.0:
                break
            lr = cosine_lr(cfg.lr, frac, step, cfg.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, logs = _objective_loss(cfg, encoder, extra, item, device, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable.parameters(), 1.0)
            optimizer.step()
            seen += sum(int(v.shape[0]) for k, v in item.items() if k in ("world", "digits"))
            step += 1
            progress.step(step - 1, float(loss.detach()), lr, seen, logs)
    finally:
        batches.close()
    progress.finish()
    encoder.eval()
    return VitPretrainResult(
        model=encoder.cpu(), config=cfg, model_kwargs=cfg.model_kwargs(), history=progress.history,
        steps=step, seconds=progress.elapsed(), images_seen=seen,
    )  # fmt: skip


def _supervised_loss(
    encoder: nn.Module, heads: AttributeHeads, item: dict[str, torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, dict[str, float]]:
    x = normalise(item["world"], VIT_MEAN, VIT_STD).to(device)
    n_world = x.shape[0]
    if "digits" in item:
        x = torch.cat([x, normalise(item["digits"], VIT_MEAN, VIT_STD).to(device)])
    feats = encoder(x)  # (B, D): timm token pooling (norm(x)[:, 0]) with num_classes=0
    losses, logs = [], {}
    for name, head in heads.heads.items():
        logits = head(feats[:n_world])
        target = item[f"y_{name}"].to(device)
        losses.append(F.cross_entropy(logits, target))
        logs[f"acc_{name}"] = float((logits.argmax(-1) == target).float().mean())
    if "digits" in item:
        logits = heads.digits(feats[n_world:])
        target = item["y_digits"].to(device)
        losses.append(F.cross_entropy(logits, target))
        logs["acc_digits"] = float((logits.argmax(-1) == target).float().mean())
    loss = torch.stack(losses).mean()
    return loss, {k: logs[k] for k in ("acc_shape", "acc_count") if k in logs}


# ---- saving -------------------------------------------------------------------------------------


def save_vit(model: nn.Module, path: str | Path) -> tuple[Path, str]:
    """Save the encoder's state dict as safetensors; returns (path, sha256).

    Written by the backbone loader's own writer (``save_timm_weights``), so the file is exactly what
    ``load_backbone`` reads back.
    """
    from ..backbones.timm_loader import save_timm_weights

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_timm_weights(model, path)
    return path, sha256_file(path)
