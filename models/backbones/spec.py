"""What a backbone is: a declarative, JSON-serialisable description resolved by ``load_backbone``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from ..config import BaseConfig, check_choice
from ..errors import ConfigError

Family = Literal["open_clip", "timm"]
# Which pretraining produced the weights; decides the readout (docs/methods.md B.3):
# CLS token for supervised and MoCo-v3, mean over prompts+patches for MAE, CLIP's own pooling for CLIP.
WeightsKind = Literal["clip", "supervised", "mae", "moco"]


@dataclasses.dataclass
class BackboneSpec(BaseConfig):
    """A frozen backbone.

    Args:
        family: ``open_clip`` or ``timm``.
        arch: open_clip model name (``ViT-B-16``) or timm model name (``vit_base_patch16_224``).
        weights: where the weights come from. One of: an open_clip pretrained tag (``openai``) or a
            timm pretrained tag (``augreg_in21k``), resolved through the Hugging Face cache (works
            offline once cached); ``hf-hub:org/repo``; ``local-dir:/path`` (open_clip's folder layout:
            ``open_clip_config.json`` + ``open_clip_model.safetensors``); a path to a weights file
            (``.safetensors``, or ``.pt``/``.pth``/``.bin`` read with ``weights_only=True``); or
            ``random`` for an explicit random initialisation (tests only).
        kind: the pretraining of the weights (``clip``, ``supervised``, ``mae``, ``moco``).
        sha256: if set, the weights file's sha256 must match.
        name: a registry name for this backbone (optional, informational).
        model_config: open_clip only: an inline model config (``embed_dim``, ``vision_cfg``,
            ``text_cfg``) registered under ``arch`` before building.
        model_kwargs: timm only: keyword arguments for ``timm.create_model`` (``img_size`` ...).
    """

    family: str = "timm"
    arch: str = "vit_base_patch16_224"
    weights: str = "random"
    kind: str = "supervised"
    sha256: str | None = None
    name: str | None = None
    model_config: dict[str, Any] | None = None
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("family", self.family, ("open_clip", "timm"))
        check_choice("kind", self.kind, ("clip", "supervised", "mae", "moco"))
        if not self.arch or not isinstance(self.arch, str):
            raise ConfigError("arch", "must be a non-empty model name")
        if not self.weights or not isinstance(self.weights, str):
            raise ConfigError("weights", "must name a weights source, or 'random' for random init")
        if self.family == "open_clip" and self.kind != "clip":
            raise ConfigError("kind", "open_clip backbones are CLIP models: kind must be 'clip'")
        if self.family == "timm" and self.kind == "clip":
            raise ConfigError("kind", "timm backbones take kind supervised, mae or moco")
        if self.sha256 is not None:
            digest = self.sha256.lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ConfigError("sha256", "must be 64 hexadecimal characters")
            self.sha256 = digest
        if self.model_config is not None and self.family != "open_clip":
            raise ConfigError("model_config", "only open_clip backbones take an inline model_config")


@dataclasses.dataclass
class Preprocessing:
    """How images become tensors; stored in checkpoints so inference matches training."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_mode: str = "shortest"  # resize the shorter side then centre-crop
    interpolation: str = "bicubic"
    crop_pct: float = 1.0  # centre crop fraction (timm: resize to size / crop_pct, then crop size)


@dataclasses.dataclass
class Backbone:
    """A loaded, frozen backbone with everything needed to feed it."""

    spec: BackboneSpec
    model: nn.Module
    preprocessing: Preprocessing
    transform: Callable[[Any], torch.Tensor]  # PIL image -> (3, H, W) tensor, eval-time
    tokenizer: Callable[..., torch.Tensor] | None  # open_clip only
    weights_sha256: str | None  # sha256 of the weights file actually loaded (None for random init)

    @property
    def family(self) -> str:
        return self.spec.family
