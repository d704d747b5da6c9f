"""Promptune's ML library: prompt learning on frozen open_clip and timm backbones.

A pure library (no web, database or queue imports), usable from a notebook::

    from models import BackboneSpec, load_backbone, build_method, TrainConfig, Trainer
    from models import save_checkpoint, load_checkpoint, TunedPredictor, data

    backbone = load_backbone(BackboneSpec(family="timm", arch="vit_base_patch16_224",
                                          weights="augreg_in21k", kind="supervised"))
    listing = data.read_image_folder("flowers.zip")
    splits = data.split_samples(listing.samples, val_fraction=0.2, seed=0)
    method = build_method("spt", backbone, {"mode": "deep", "init": "random"}, listing.class_names)
    train = listing.dataset(backbone.transform, samples=splits["train"])
    val = listing.dataset(backbone.transform, samples=splits["val"])
    result = Trainer(method, TrainConfig(epochs=10, lr=1e-3), train, val).fit()
    method.load_learned_state_dict(result.best_state)
    save_checkpoint(method, "flowers.safetensors", metrics=result.metrics)
    predictions = TunedPredictor(load_checkpoint("flowers.safetensors")).predict(images, k=5)

Methods register themselves by name (``rpp``, ``spt``); see :func:`list_methods`. A method from outside
this repository uses the same public contract::

    from models import ConfigError, MethodConfig, PromptMethod, option, register_method

    @dataclasses.dataclass
    class MyConfig(MethodConfig):
        scale: float = option(1.0, minimum=0.0)

    class MyMethod(PromptMethod):
        def forward(self, images): ...
        def training_loss(self, batch, generator): ...

    register_method("mine", config_cls=MyConfig, model_cls=MyMethod, family="timm")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from . import data
from . import rpp as _rpp  # noqa: F401  (registers "rpp")
from . import spt as _spt  # noqa: F401  (registers "spt")
from .backbones import (
    Backbone,
    BackboneSpec,
    Preprocessing,
    load_backbone,
    save_clip_local_dir,
    save_timm_weights,
)
from .backbones.weights import sha256_file, verify_sha256
from .base import MethodConfig, PromptMethod
from .checkpoint import load_checkpoint, read_checkpoint_metadata, save_checkpoint
from .config import option
from .engine import TrainConfig, Trainer, TrainResult, read_state, state_files
from .errors import (
    CheckpointError,
    ConfigError,
    DataError,
    PromptuneError,
    TrainingCancelled,
    TrainingPaused,
    WeightsIntegrityError,
    WeightsNotFoundError,
)
from .fileio import atomic_path, atomic_write_bytes
from .inference import TunedPredictor, ZeroShotClassifier, predict_topk
from .registry import (
    CAPABILITIES,
    MethodEntry,
    get_method,
    list_methods,
    method_config,
    method_entries,
    register_method,
)
from .schema import config_schema

__version__ = "0.1.0"


def build_method(
    name: str,
    backbone: Backbone,
    config: MethodConfig | Mapping[str, Any] | None,
    class_names: Sequence[str],
) -> PromptMethod:
    """Build a registered method on a loaded backbone.

    Args:
        name: a registered method name (``rpp``, ``spt``).
        backbone: from :func:`load_backbone`; its family must match the method's.
        config: the method's config dataclass, or a plain dict validated into it (unknown keys rejected).
        class_names: the label space the method predicts over.

    Returns:
        The method, with every backbone tensor frozen.
    """
    entry = get_method(name)
    if backbone.family != entry.family:
        raise ConfigError(
            "backbone", f"method {name!r} needs a {entry.family} backbone, got {backbone.family}"
        )
    if not isinstance(config, MethodConfig):
        config = entry.config_cls.from_dict(config)
    return entry.model_cls(backbone, config, class_names)


__all__ = [
    "atomic_write_bytes",
    "atomic_path",
    "state_files",
    "read_state",
    "verify_sha256",
    "sha256_file",
    "CAPABILITIES",
    "Backbone",
    "BackboneSpec",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "MethodConfig",
    "MethodEntry",
    "Preprocessing",
    "PromptMethod",
    "PromptuneError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingCancelled",
    "TrainingPaused",
    "TunedPredictor",
    "WeightsIntegrityError",
    "WeightsNotFoundError",
    "ZeroShotClassifier",
    "build_method",
    "config_schema",
    "data",
    "get_method",
    "list_methods",
    "load_backbone",
    "load_checkpoint",
    "method_config",
    "method_entries",
    "option",
    "predict_topk",
    "read_checkpoint_metadata",
    "register_method",
    "save_checkpoint",
    "save_clip_local_dir",
    "save_timm_weights",
    "__version__",
]
