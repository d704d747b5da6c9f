"""``load_backbone(spec)``: the one entry point that turns a :class:`BackboneSpec` into a frozen Backbone.

Dispatches on ``spec.family``; the family loaders are imported lazily so that importing ``models`` does not
pull in open_clip or timm (the API process only needs them once a model is actually loaded).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ConfigError
from .spec import Backbone, BackboneSpec


def load_backbone(spec: BackboneSpec | Mapping[str, Any]) -> Backbone:
    """Load a frozen backbone (eval mode, no parameter requires grad).

    Args:
        spec: a :class:`BackboneSpec` or a plain dict (validated with ``BackboneSpec.from_dict``).

    Raises:
        ConfigError, WeightsNotFoundError, WeightsIntegrityError, CheckpointError.
    """
    if not isinstance(spec, BackboneSpec):
        spec = BackboneSpec.from_dict(spec)
    if spec.family == "open_clip":
        from .clip_loader import load_clip_backbone

        return load_clip_backbone(spec)
    if spec.family == "timm":
        from .timm_loader import load_timm_backbone

        return load_timm_backbone(spec)
    raise ConfigError("family", f"unknown backbone family {spec.family!r}")


def save_clip_local_dir(model: nn.Module, model_config: Mapping[str, Any], path: str | Path) -> str:
    """Write an open_clip model in open_clip's local-dir layout (see ``clip_loader.save_clip_local_dir``)."""
    from .clip_loader import save_clip_local_dir as _save

    return _save(model, model_config, path)


def save_timm_weights(model: nn.Module, path: str | Path) -> Any:
    """Write a timm model's weights as safetensors (see ``timm_loader.save_timm_weights``)."""
    from .timm_loader import save_timm_weights as _save

    return _save(model, path)
