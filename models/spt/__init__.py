"""SPT (self-prompt tuning) and VPT on frozen timm ViTs: method ``spt`` (VPT = ``init="xavier"``)."""

from __future__ import annotations

from ..registry import register_method
from .config import TRAIN_DEFAULTS, SPTConfig
from .model import SPTModel
from .prototypes import PrototypeStats, compute_prototypes

register_method(
    "spt",
    config_cls=SPTConfig,
    model_cls=SPTModel,
    family="timm",
    train_defaults=TRAIN_DEFAULTS,
    description="self-prompt tuning of a frozen ViT (VPT with init=xavier)",
)

__all__ = ["SPTConfig", "SPTModel", "PrototypeStats", "compute_prototypes"]
