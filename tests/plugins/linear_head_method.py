"""``linear_head``: a linear classifier on a frozen timm ViT's pooled features, written outside ``models/``.

The proof that a research team can add a method without forking: this module imports only the public
``models`` package (never its submodules) and registers itself at import. Name it in the setting
``PROMPTUNE_METHOD_MODULES=tests.plugins.linear_head_method`` and the API and every worker serve it; the
stock trainer, checkpoints (safetensors) and predictor run it unchanged.

Only ``head.weight`` and ``head.bias`` learn; the ViT is frozen (``requires_grad`` off, always in eval mode).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models import Backbone, ConfigError, MethodConfig, PromptMethod, option, register_method

METHOD_NAME = "linear_head"
POOLS = ("token", "mean")


@dataclasses.dataclass
class LinearHeadConfig(MethodConfig):
    """Args:
    pool: ``token`` (the class token of ``forward_features``) or ``mean`` (the mean of the patch tokens).
    head_init_std: normal std of the head's initial weights (the bias starts at 0).
    """

    pool: str = option("token", choices=POOLS)
    head_init_std: float = option(0.02, minimum=0.0, maximum=1.0, exclusive_minimum=True)


class LinearHeadModel(PromptMethod):
    """Frozen timm ViT -> pooled features (B, D) -> ``head = Linear(D, C)``."""

    config_cls = LinearHeadConfig
    config: LinearHeadConfig

    def __init__(
        self, backbone: Backbone, config: LinearHeadConfig | Mapping[str, Any], class_names: Sequence[str]
    ) -> None:
        if not isinstance(config, LinearHeadConfig):
            if isinstance(config, MethodConfig):
                raise ConfigError(
                    "config", f"{METHOD_NAME} needs a LinearHeadConfig, got {type(config).__name__}"
                )
            config = LinearHeadConfig.from_dict(config)
        super().__init__(backbone, config, class_names)
        vit: Any = backbone.model
        for attr in ("forward_features", "embed_dim", "num_prefix_tokens"):
            if not hasattr(vit, attr):
                raise ConfigError("backbone", f"{METHOD_NAME} needs a timm ViT (the model has no {attr})")
        if config.pool == "token" and not getattr(vit, "has_class_token", True):
            raise ConfigError("pool", "token pooling needs a class token; this ViT has none (use 'mean')")
        self.vit = vit  # a registered submodule, so .to(device) moves the frozen backbone too
        self.num_prefix_tokens = int(vit.num_prefix_tokens)
        param = next(vit.parameters())
        self.head = nn.Linear(
            int(vit.embed_dim), len(self.class_names), device=param.device, dtype=param.dtype
        )
        vit.requires_grad_(False)
        self.reset_parameters(seed=0)
        self.train(self.training)

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(int(seed))
        weight = torch.randn(self.head.weight.shape, generator=generator) * self.config.head_init_std
        self.head.weight.copy_(weight)
        self.head.bias.zero_()

    def prepare(self, train_data: Any, *, seed: int) -> None:
        """A fresh run draws the head from the job's seed; the features need no data-dependent set-up."""
        self.reset_parameters(seed)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logits (B, D) from the frozen ViT's ``forward_features`` (already normed)."""
        param = self.head.weight
        tokens = self.vit.forward_features(images.to(device=param.device, dtype=param.dtype))
        if self.config.pool == "token":
            pooled = tokens[:, 0]
        else:
            pooled = tokens[:, self.num_prefix_tokens :].mean(dim=1)
        return self.vit.fc_norm(pooled) if hasattr(self.vit, "fc_norm") else pooled

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

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
        return {"pool": self.config.pool, "embed_dim": int(self.head.in_features)}


register_method(
    METHOD_NAME,
    config_cls=LinearHeadConfig,
    model_cls=LinearHeadModel,
    family="timm",
    description="a linear head on a frozen ViT's pooled features (a plug-in from outside models/)",
)
