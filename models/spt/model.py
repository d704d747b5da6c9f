"""Prompted ViT: VPT-shallow/deep and SPT (self-prompt tuning) on a frozen timm VisionTransformer.

Sequence (docs/methods.md B.3, C): the prompt tokens go right after the prefix tokens (CLS and registers), after the
positional embedding: ``[CLS, P_0, patches]``. Deep: before block ``i >= 1`` the previous layer's prompt outputs
are replaced, ``x = cat(x[:, :prefix], P_i, x[:, prefix + M:])``. Readout ``token`` = ``norm(x)[:, 0]``, ``mean`` =
the mean over prompts and patches with the backbone's final norm (see :func:`stages.pool`), then
``head = Linear(D, C)``. Only ``prompts``, ``head.weight`` and ``head.bias`` learn.

VPT is this model with ``init="xavier"``; SPT initialises the prompts from token prototypes in :meth:`prepare`.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.spec import Backbone
from ..base import MethodConfig, PromptMethod
from ..errors import ConfigError
from . import stages
from .config import SPTConfig
from .prototypes import compute_prototypes


def subseed(seed: int, purpose: str) -> int:
    """A stable per-purpose seed, so the head draw does not depend on how the prompts are initialised."""
    return (int(seed) * 1_000_003 + zlib.crc32(purpose.encode())) % (2**63 - 1)


class SPTModel(PromptMethod):
    """Frozen timm ViT + prompts (shallow ``(1, M, D)`` or deep ``(L, M, D)``) + a linear head."""

    config_cls = SPTConfig
    config: SPTConfig

    def __init__(
        self, backbone: Backbone, config: SPTConfig | Mapping[str, Any], class_names: Sequence[str]
    ) -> None:
        if not isinstance(config, SPTConfig):
            if isinstance(config, MethodConfig):
                raise ConfigError("config", f"SPT needs an SPTConfig, got {type(config).__name__}")
            config = SPTConfig.from_dict(config)
        super().__init__(backbone, config, class_names)
        vit: Any = backbone.model
        stages.check_vit(vit)
        self.vit = vit  # a registered (frozen) submodule, so .to(device) moves the backbone too
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        self.embed_dim = int(vit.embed_dim)
        self.num_blocks = len(vit.blocks)
        self.num_prompts = int(config.num_prompts or 0)
        self.prompt_layers = self.num_blocks if config.mode == "deep" else 1

        kind = backbone.spec.kind
        self.readout = config.readout if config.readout != "auto" else ("mean" if kind == "mae" else "token")
        if self.readout == "token" and not getattr(vit, "has_class_token", True):
            raise ConfigError("readout", "token readout needs a class token; this ViT has none (use 'mean')")
        self.head_init_std = (
            config.head_init_std if config.head_init_std is not None else (0.01 if kind == "moco" else 0.02)
        )
        patch = vit.patch_embed.patch_size
        patch_area = int(patch[0] * patch[1]) if isinstance(patch, tuple | list) else int(patch) ** 2
        # VPT's xavier-uniform bound (KMnP/vpt): sqrt(6 / (3 * patch * patch + D)).
        self.xavier_bound = math.sqrt(6.0 / (3 * patch_area + self.embed_dim))

        param = next(vit.parameters())
        device, dtype = param.device, param.dtype
        self.prompts: nn.Parameter | None
        if self.num_prompts > 0:
            self.prompts = nn.Parameter(
                torch.empty(self.prompt_layers, self.num_prompts, self.embed_dim, device=device, dtype=dtype)
            )
        else:
            self.register_parameter("prompts", None)
        self.head = nn.Linear(self.embed_dim, len(self.class_names), device=device, dtype=dtype)
        self.prototype_stats: dict[str, Any] | None = None
        # timm's plain Blocks can skip work whose result is discarded (see ``blocks``)
        self._plain_blocks = all(stages.is_plain_block(b) for b in vit.blocks)
        vit.requires_grad_(False)
        self.reset_parameters(seed=0)
        self.train(self.training)

    # ---- initialisation -----------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """Head: trunc-normal(std) with bias 0; prompts: VPT's xavier-uniform. Both drawn from ``seed``."""
        head_gen = torch.Generator().manual_seed(subseed(seed, "head"))
        weight = torch.empty(self.head.weight.shape, dtype=torch.float32)
        nn.init.trunc_normal_(weight, std=self.head_init_std, generator=head_gen)
        self.head.weight.copy_(weight)
        self.head.bias.zero_()
        if self.prompts is not None:
            prompt_gen = torch.Generator().manual_seed(subseed(seed, "prompts"))
            values = torch.empty(self.prompts.shape, dtype=torch.float32)
            nn.init.uniform_(values, -self.xavier_bound, self.xavier_bound, generator=prompt_gen)
            self.prompts.copy_(values)

    def prepare(self, train_data: Any, *, seed: int) -> None:
        """Seeded head/prompt init; for SPT inits, prompts from token prototypes of ``train_data``."""
        self.reset_parameters(seed)
        if self.prompts is None or self.config.init == "xavier":
            return
        cfg = self.config
        protos, stats = compute_prototypes(
            self.vit,
            train_data,
            num_prompts=self.num_prompts,
            num_layers=self.prompt_layers,
            strategy=cfg.init,
            seed=subseed(seed, "prototypes"),
            max_images=cfg.init_max_images,
            batch_size=cfg.init_batch_size,
            kmeans_iters=cfg.kmeans_iters,
            kmeans_max_tokens=cfg.kmeans_max_tokens,
        )
        with torch.no_grad():
            self.prompts.copy_(protos)
        self.prototype_stats = stats.to_dict()

    # ---- staged forward -----------------------------------------------------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``patch_embed -> _pos_embed -> patch_drop -> norm_pre`` -> (B, prefix + N, D)."""
        param = self.head.weight
        return stages.embed(self.vit, images.to(device=param.device, dtype=param.dtype))

    def insert_prompts(self, x: torch.Tensor, prompt: torch.Tensor, *, replace: bool) -> torch.Tensor:
        """``[prefix, prompt, rest]``; with ``replace`` the ``M`` tokens after the prefix are dropped first.

        ``prompt`` is one prompt (M, D) for every sample, or one per sample (B, M, D).
        """
        npt = self.num_prefix_tokens
        if prompt.ndim == 2:
            prompt = prompt.unsqueeze(0).expand(x.shape[0], -1, -1)
        rest = x[:, npt + self.num_prompts :] if replace else x[:, npt:]
        return torch.cat([x[:, :npt], prompt, rest], dim=1)

    def blocks(
        self, x: torch.Tensor, *, class_token_only: bool = False, prompts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The transformer blocks; prompts go in before block 0 and, for deep, are replaced before each block.

        With timm's plain ``Block``s two results that are thrown away are never computed: under deep prompts
        the MLP of the prompt tokens in blocks ``0 .. L-2`` (their outputs are replaced), and with
        ``class_token_only`` (token readout) the MLP of every token but the class token in the last block,
        which then returns (B, 1, D). The kept tokens are exactly those of the plain forward.

        ``prompts`` (B, L, M, D), optional, replaces the model's own prompts with one set per sample (the
        prompts of other models of this structure, so that they share one forward); no prompt dropout.
        """
        per_sample = prompts is not None
        if prompts is not None:
            self.check_sample_prompts(prompts, x.shape[0])
        else:
            prompts = self.prompts
            if prompts is not None and self.training and self.config.prompt_dropout > 0:
                prompts = F.dropout(prompts, self.config.prompt_dropout, training=True)
        deep = prompts is not None and self.prompt_layers > 1
        fast = self._plain_blocks
        npt, stop = self.num_prefix_tokens, self.num_prefix_tokens + self.num_prompts
        blocks: Any = self.vit.blocks
        last = len(blocks) - 1
        for i, block in enumerate(blocks):
            if prompts is not None and (i == 0 or deep):
                # the fast path has already dropped the previous prompt outputs
                layer = prompts[:, i] if per_sample else prompts[i]
                x = self.insert_prompts(x, layer, replace=i > 0 and not fast)
            if i == last and class_token_only and fast:
                return stages.class_token_block(block, x)
            x = stages.block_dropping_rows(block, x, npt, stop) if deep and fast and i < last else block(x)
        return x

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return stages.pool(self.vit, x, self.readout, self.num_prefix_tokens)

    def check_sample_prompts(self, prompts: torch.Tensor, batch: int) -> None:
        """Raise ``ValueError`` unless ``prompts`` is one (L, M, D) prompt set of this structure per sample."""
        expected = (batch, self.prompt_layers, self.num_prompts, self.embed_dim)
        if self.num_prompts == 0 or tuple(prompts.shape) != expected:
            raise ValueError(f"per-sample prompts of shape {tuple(prompts.shape)}, expected {expected}")

    def features(self, images: torch.Tensor, prompts: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled pre-logits (B, D); ``prompts``: optional per-sample prompts (B, L, M, D), see ``blocks``."""
        x = self.embed(images)
        return self.pool(self.blocks(x, class_token_only=self.readout == "token", prompts=prompts))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    # ---- training -----------------------------------------------------------------------------------
    def training_loss(
        self, batch: Mapping[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self(batch["image"])
        labels = batch["label"].to(logits.device)
        loss = F.cross_entropy(logits, labels)
        with torch.no_grad():
            acc = (logits.argmax(dim=-1) == labels).float().mean()
        return loss, {"loss": float(loss.detach()), "acc": float(acc)}

    def metadata(self) -> dict[str, Any]:
        return {
            "mode": self.config.mode,
            "num_prompts": self.num_prompts,
            "prompt_layers": self.prompt_layers,
            "init": self.config.init,
            "readout": self.readout,
            "head_init_std": self.head_init_std,
            "num_prefix_tokens": self.num_prefix_tokens,
            "prototype_stats": self.prototype_stats,
        }
