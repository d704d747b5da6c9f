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

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# What the library exports, and the module each name lives in. Names load on first use (PEP 562), so that
# importing a light part of the library (errors, configs, the atomic write) does not import torch, open_clip
# and timm; the registry imports the built-in methods when it is first consulted.
_EXPORTS = {
    "atomic_path": ".fileio",
    "atomic_write_bytes": ".fileio",
    "Backbone": ".backbones",
    "BackboneSpec": ".backbones",
    "batched_logits": ".batching",
    "build_method": ".registry",
    "CAPABILITIES": ".registry",
    "CheckpointError": ".errors",
    "classification_metrics": ".evaluation",
    "config_schema": ".schema",
    "ConfigError": ".errors",
    "confusion_matrix": ".evaluation",
    "data": ".data",
    "DataError": ".errors",
    "forward_groups": ".batching",
    "get_method": ".registry",
    "list_methods": ".registry",
    "load_backbone": ".backbones",
    "load_checkpoint": ".checkpoint",
    "method_config": ".registry",
    "method_entries": ".registry",
    "MethodConfig": ".base",
    "MethodEntry": ".registry",
    "option": ".config",
    "predict_dataset": ".evaluation",
    "predict_topk": ".inference",
    "Preprocessing": ".backbones",
    "PromptMethod": ".base",
    "PromptuneError": ".errors",
    "read_checkpoint_metadata": ".checkpoint",
    "read_state": ".engine",
    "register_method": ".registry",
    "save_checkpoint": ".checkpoint",
    "save_clip_local_dir": ".backbones",
    "save_timm_weights": ".backbones",
    "sha256_file": ".backbones.weights",
    "shared_forward_key": ".batching",
    "state_files": ".engine",
    "TrainConfig": ".engine",
    "Trainer": ".engine",
    "TrainingCancelled": ".errors",
    "TrainingPaused": ".errors",
    "TrainResult": ".engine",
    "search_lr": ".engine.lr_search",
    "LrSearchResult": ".engine.lr_search",
    "LrTrial": ".engine.lr_search",
    "TunedPredictor": ".inference",
    "verify_sha256": ".backbones.weights",
    "WeightsIntegrityError": ".errors",
    "WeightsNotFoundError": ".errors",
    "ZeroShotClassifier": ".inference",
}
__all__ = [
    "Backbone",
    "BackboneSpec",
    "CAPABILITIES",
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
    "LrSearchResult",
    "LrTrial",
    "search_lr",
    "TrainingCancelled",
    "TrainingPaused",
    "TunedPredictor",
    "WeightsIntegrityError",
    "WeightsNotFoundError",
    "ZeroShotClassifier",
    "__version__",
    "atomic_path",
    "atomic_write_bytes",
    "batched_logits",
    "build_method",
    "classification_metrics",
    "config_schema",
    "confusion_matrix",
    "data",
    "forward_groups",
    "get_method",
    "list_methods",
    "load_backbone",
    "load_checkpoint",
    "method_config",
    "method_entries",
    "option",
    "predict_dataset",
    "predict_topk",
    "read_checkpoint_metadata",
    "read_state",
    "register_method",
    "save_checkpoint",
    "save_clip_local_dir",
    "save_timm_weights",
    "sha256_file",
    "shared_forward_key",
    "state_files",
    "verify_sha256",
]

if TYPE_CHECKING:
    from . import data
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
    from .batching import batched_logits, forward_groups, shared_forward_key
    from .checkpoint import load_checkpoint, read_checkpoint_metadata, save_checkpoint
    from .config import option
    from .engine import TrainConfig, Trainer, TrainResult, read_state, state_files
    from .engine.lr_search import LrSearchResult, LrTrial, search_lr
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
    from .evaluation import classification_metrics, confusion_matrix, predict_dataset
    from .fileio import atomic_path, atomic_write_bytes
    from .inference import TunedPredictor, ZeroShotClassifier, predict_topk
    from .registry import (
        CAPABILITIES,
        MethodEntry,
        build_method,
        get_method,
        list_methods,
        method_config,
        method_entries,
        register_method,
    )
    from .schema import config_schema


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    loaded = importlib.import_module(module, __name__)
    value = loaded if name == "data" else getattr(loaded, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
