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
  (``mask_ratio`` 0.75) plus the CLS token; a small decoder written here (timm ``Block`` s) predicts the
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


# ---- MAE ----------------------------------------------------------------------------------------


class MaskedAutoencoder(nn.Module):
    """MAE around a timm ``VisionTransformer`` encoder (class token, learned absolute positions)."""

    def __init__(self, encoder: Any, *, decoder_width: int, decoder_depth: int, decoder_heads: int,
                 mask_ratio: float, norm_pix_loss: bool) -> None:  # fmt: skip
        super().__init__()
        from timm.models.vision_transformer import Block

        if getattr(encoder, "cls_token", None) is None or getattr(encoder, "no_embed_class", False):
            raise ConfigError(
                "arch", "the MAE wrapper expects a ViT with a class token and pos_embed over it"
            )
        if getattr(encoder, "reg_token", None) is not None:
            raise ConfigError("arch", "register tokens are not supported by the MAE wrapper")
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        dim = encoder.embed_dim
        self.patch = int(encoder.patch_embed.patch_size[0])
        self.num_patches = int(encoder.patch_embed.num_patches)
        self.decoder_embed = nn.Linear(dim, decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_width))
        self.decoder_pos = nn.Parameter(torch.zeros(1, self.num_patches + 1, decoder_width))
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_width, decoder_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_width)
        self.decoder_pred = nn.Linear(decoder_width, self.patch * self.patch * 3)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        b, c, h, w = images.shape
        p = self.patch
        x = images.reshape(b, c, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)

    def encode_visible(
        self, images: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, ...]:
        enc: Any = self.encoder
        x = enc.patch_embed(images)  # (B, N, D)
        b, n, _ = x.shape
        x = x + enc.pos_embed[:, 1:]
        keep = max(1, int(round(n * (1 - self.mask_ratio))))
        noise = torch.rand(b, n, generator=generator, device="cpu").to(x.device)
        shuffle = noise.argsort(dim=1)
        restore = shuffle.argsort(dim=1)
        kept = shuffle[:, :keep]
        x = torch.gather(x, 1, kept[..., None].expand(-1, -1, x.shape[-1]))
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = enc.norm_pre(x)
        x = enc.blocks(x)
        x = enc.norm(x)
        mask = torch.ones(b, n, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, restore)  # 1 = masked, in patch order
        return x, restore, mask

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean squared error on the masked patches (per-patch normalised pixels by default)."""
        latent, restore, mask = self.encode_visible(images, generator)
        x = self.decoder_embed(latent)
        b, n = mask.shape
        tokens = x[:, 1:]
        fill = self.mask_token.expand(b, n - tokens.shape[1], -1)
        tokens = torch.cat([tokens, fill], dim=1)
        tokens = torch.gather(tokens, 1, restore[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos
        for block in self.decoder_blocks:
            x = block(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        target = self.patchify(images)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum().clamp_min(1)


# ---- the loop -----------------------------------------------------------------------------------


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
    digits_x, digits_y = _digits_train_images(cfg.image_size)
    n_digits = int(round(cfg.batch_size * cfg.digits_fraction)) if cfg.mode == "supervised" else 0
    n_world = cfg.batch_size - n_digits

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1)
        if cfg.mode == "supervised":
            extra: nn.Module = AttributeHeads(cfg.embed_dim)
        else:
            extra = MaskedAutoencoder(
                encoder, decoder_width=cfg.decoder_width, decoder_depth=cfg.decoder_depth,
                decoder_heads=cfg.decoder_heads, mask_ratio=cfg.mask_ratio, norm_pix_loss=cfg.norm_pix_loss,
            )  # fmt: skip
    trainable = nn.ModuleDict({"encoder": encoder, "extra": extra}) if cfg.mode == "supervised" else extra
    trainable.to(device).train()
    optimizer = torch.optim.AdamW(decay_groups(trainable, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    budget = cfg.budget()

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

    progress = ProgressLog(f"vit-{cfg.mode} {cfg.arch}", cfg.log_every, log)
    if log is not None:
        params = sum(p.numel() for p in encoder.parameters())
        log(f"[vit-{cfg.mode}] encoder {params / 1e6:.2f} M parameters on {device}; budget {budget}")
    step, seen, lr = 0, 0, cfg.lr
    batches = prefetch(make, workers=cfg.data_workers)
    try:
        for item in batches:
            frac = budget.progress(step, progress.elapsed())
            if step > 0 and frac >= 1.0:
                break
            lr = cosine_lr(cfg.lr, frac, step, cfg.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            logs: dict[str, float] = {}
            if cfg.mode == "supervised":
                loss, logs = _supervised_loss(encoder, extra, item, device)  # type: ignore[arg-type]
            else:
                g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
                loss = extra(normalise(item["world"], VIT_MEAN, VIT_STD).to(device), g)
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
