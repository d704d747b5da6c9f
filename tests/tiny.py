"""Tiny backbone specs shared by the tests: real open_clip / timm architectures at toy size."""

from __future__ import annotations

from models.backbones.spec import BackboneSpec

TINY_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def tiny_clip_spec(**overrides: object) -> BackboneSpec:
    values: dict[str, object] = {
        "family": "open_clip",
        "arch": "promptune-test-tiny-clip",
        "weights": "random",
        "kind": "clip",
        "model_config": TINY_CLIP_CONFIG,
    }
    values.update(overrides)
    return BackboneSpec.from_dict(values)


def tiny_vit_spec(**overrides: object) -> BackboneSpec:
    values: dict[str, object] = {
        "family": "timm",
        "arch": "vit_tiny_patch16_224",
        "weights": "random",
        "kind": "supervised",
        "model_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2},
    }
    values.update(overrides)
    return BackboneSpec.from_dict(values)
