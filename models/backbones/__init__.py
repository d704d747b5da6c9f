"""Frozen backbones: declarative specs and the loaders that resolve them (open_clip, timm)."""

from .loader import load_backbone, save_clip_local_dir, save_timm_weights
from .spec import Backbone, BackboneSpec, Preprocessing

__all__ = [
    "Backbone",
    "BackboneSpec",
    "Preprocessing",
    "load_backbone",
    "save_clip_local_dir",
    "save_timm_weights",
]
