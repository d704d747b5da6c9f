"""timm backbone loading: random / file / tag sources, checkpoint layouts, integrity, preprocessing."""

from __future__ import annotations

import time

import pytest
import torch
from PIL import Image

from models.backbones.spec import Backbone
from models.backbones.timm_loader import load_timm_backbone, save_timm_weights
from models.errors import CheckpointError, ConfigError, WeightsIntegrityError, WeightsNotFoundError
from tests.tiny import tiny_vit_spec


def _features(backbone: Backbone, x: torch.Tensor) -> torch.Tensor:
    model = backbone.model
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_random_backbone_is_frozen_headless_and_has_a_transform() -> None:
    backbone = load_timm_backbone(tiny_vit_spec())
    model = backbone.model
    assert backbone.family == "timm" and backbone.weights_sha256 is None and backbone.tokenizer is None
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert isinstance(model.head, torch.nn.Identity) and model.num_classes == 0
    assert model.global_pool == "token"
    pre = backbone.preprocessing
    assert pre.image_size == 32 and len(pre.mean) == 3 and len(pre.std) == 3
    assert pre.interpolation == "bicubic"
    out = backbone.transform(Image.new("RGB", (50, 40), (120, 30, 200)))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert _features(backbone, out[None]).shape == (1, 64)


def test_mae_kind_mean_pools_with_the_final_norm_after_the_pool() -> None:
    model = load_timm_backbone(tiny_vit_spec(kind="mae")).model
    assert model.global_pool == "avg"
    assert isinstance(model.norm, torch.nn.Identity)
    assert isinstance(model.fc_norm, torch.nn.LayerNorm)


def test_save_and_reload_by_path_gives_identical_outputs(tmp_path, images) -> None:
    src = load_timm_backbone(tiny_vit_spec())
    path = tmp_path / "tiny.safetensors"
    sha = save_timm_weights(src, path)
    assert len(sha) == 64 and not list(tmp_path.glob(".*tmp*"))
    loaded = load_timm_backbone(tiny_vit_spec(weights=str(path), sha256=sha))
    assert loaded.weights_sha256 == sha
    assert all(not p.requires_grad for p in loaded.model.parameters()) and not loaded.model.training
    for name, tensor in src.model.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name]), name
    assert torch.equal(_features(src, images), _features(loaded, images))
    # mean-pooled (MAE kind) weights round-trip too
    mae = load_timm_backbone(tiny_vit_spec(kind="mae"))
    save_timm_weights(mae.model, tmp_path / "mae.safetensors")
    again = load_timm_backbone(tiny_vit_spec(kind="mae", weights=str(tmp_path / "mae.safetensors")))
    assert torch.equal(_features(mae, images), _features(again, images))


def test_sha256_mismatch_and_missing_file(tmp_path) -> None:
    path = tmp_path / "w.safetensors"
    save_timm_weights(load_timm_backbone(tiny_vit_spec()), path)
    with pytest.raises(WeightsIntegrityError):
        load_timm_backbone(tiny_vit_spec(weights=str(path), sha256="0" * 64))
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(WeightsNotFoundError, match="nope.safetensors"):
        load_timm_backbone(tiny_vit_spec(weights=str(missing)))


def test_missing_pretrained_tag_fails_fast_offline(monkeypatch, tmp_path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 (tests/conftest.py) sets
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache, whatever this machine has
    started = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as info:
        load_timm_backbone(tiny_vit_spec(weights="augreg_in21k"))
    assert time.perf_counter() - started < 10
    message = str(info.value)
    assert "vit_tiny_patch16_224" in message and "augreg_in21k" in message
    assert "timm/vit_tiny_patch16_224.augreg_in21k" in message and "model.safetensors" in message
    assert str(tmp_path) in message and "HF_HUB_OFFLINE=1" in message
    assert info.value.code == "weights_not_found"


def test_unknown_tag_names_the_known_ones() -> None:
    with pytest.raises(WeightsNotFoundError, match="augreg_in21k_ft_in1k"):
        load_timm_backbone(tiny_vit_spec(weights="no_such_tag"))


def _encoder_state(kind: str = "supervised") -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_timm_backbone(tiny_vit_spec(kind=kind)).model.state_dict().items()}


def test_mae_checkpoint_layout(tmp_path, images) -> None:
    """MAE pretraining checkpoint: {"model": encoder + decoder}; encoder `norm` -> `fc_norm` under mean pooling."""
    enc = _encoder_state("supervised")  # token-pool layout: the encoder ends in `norm`, like MAE's
    full = dict(enc)
    full["mask_token"] = torch.zeros(1, 1, 32)
    full["decoder_embed.weight"] = torch.randn(32, 64)
    full["decoder_blocks.0.norm1.weight"] = torch.ones(32)
    full["decoder_pred.weight"] = torch.randn(192, 32)
    full["decoder_pos_embed"] = torch.randn(1, 17, 32)
    path = tmp_path / "mae_pretrain.pth"
    torch.save({"model": full, "epoch": torch.tensor(799)}, path)
    backbone = load_timm_backbone(tiny_vit_spec(kind="mae", weights=str(path)))
    state = backbone.model.state_dict()
    assert torch.equal(state["fc_norm.weight"], enc["norm.weight"])
    assert torch.equal(state["fc_norm.bias"], enc["norm.bias"])
    for name in ("pos_embed", "cls_token", "blocks.1.mlp.fc2.weight", "patch_embed.proj.weight"):
        assert torch.equal(state[name], enc[name])
    # SPT's MAE readout: norm(mean(x[:, 1:])) with the encoder's own norm
    ref = load_timm_backbone(tiny_vit_spec())
    ref.model.load_state_dict(enc)
    with torch.no_grad():
        tokens = ref.model.blocks(ref.model._pos_embed(ref.model.patch_embed(images)))
        expected = ref.model.norm(tokens[:, 1:].mean(dim=1))
    assert torch.allclose(_features(backbone, images), expected, atol=1e-6)
    # MAE checkpoints are trained on ImageNet-normalised inputs
    assert backbone.preprocessing.mean == pytest.approx((0.485, 0.456, 0.406))


def test_moco_v3_checkpoint_layout(tmp_path, images) -> None:
    """MoCo v3 pretraining checkpoint: module.base_encoder.* (+ momentum encoder, predictor, projector head)."""
    enc = _encoder_state()
    state = {}
    for k, v in enc.items():
        state[f"module.base_encoder.{k}"] = v
        state[f"module.momentum_encoder.{k}"] = v + 1.0
    state["module.base_encoder.head.0.weight"] = torch.randn(128, 64)
    state["module.momentum_encoder.head.0.weight"] = torch.randn(128, 64)
    state["module.predictor.0.weight"] = torch.randn(64, 128)
    path = tmp_path / "vit-b-300ep.pth.tar.pth"
    torch.save({"state_dict": state, "epoch": torch.tensor(300)}, path)
    backbone = load_timm_backbone(tiny_vit_spec(kind="moco", weights=str(path)))
    for k, v in backbone.model.state_dict().items():
        assert torch.equal(v, enc[k]), k
    # MoCo v3 linear-probe layout: module.* with a classifier head
    linear = {f"module.{k}": v for k, v in enc.items()}
    linear["module.head.weight"] = torch.randn(1000, 64)
    linear["module.head.bias"] = torch.zeros(1000)
    path2 = tmp_path / "linear.pth"
    torch.save({"state_dict": linear}, path2)
    probe = load_timm_backbone(tiny_vit_spec(kind="moco", weights=str(path2)))
    assert torch.equal(_features(probe, images), _features(backbone, images))


def test_missing_and_unexpected_keys_are_named(tmp_path) -> None:
    from safetensors.torch import save_file

    enc = _encoder_state()
    partial = {k: v for k, v in enc.items() if not k.startswith("blocks.1.")}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing keys \[.*blocks\.1\.attn"):
        load_timm_backbone(tiny_vit_spec(weights=str(tmp_path / "partial.safetensors")))
    extra = dict(enc, **{"adapter.weight": torch.zeros(3)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected keys \['adapter.weight'\]"):
        load_timm_backbone(tiny_vit_spec(weights=str(tmp_path / "extra.safetensors")))
    wrong = dict(enc, **{"blocks.0.mlp.fc1.bias": torch.zeros(7)})
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(CheckpointError, match="blocks.0.mlp.fc1.bias"):
        load_timm_backbone(tiny_vit_spec(weights=str(tmp_path / "wrong.safetensors")))


class _Payload:
    """Unpickling this would create ``marker`` (a stand-in for arbitrary code execution)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_objects_are_refused_without_running_them(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"cls_token": torch.zeros(1)}, "x": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError):
        load_timm_backbone(tiny_vit_spec(weights=str(path)))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"arch": "no_such_model"}, "arch"),
        ({"arch": "vit_tiny_patch16_224.augreg_in21k"}, "arch"),
        ({"model_kwargs": {"num_classes": 10}}, "model_kwargs"),
        ({"model_kwargs": {"pretrained": True}}, "model_kwargs"),
        ({"model_kwargs": {"img_size": 32, "no_such_kwarg": 1}}, "model_kwargs"),
        ({"sha256": "a" * 64}, "sha256"),
        ({"weights": "local-dir:/tmp/x"}, "weights"),
        ({"weights": "not a tag!"}, "weights"),
    ],
)
def test_bad_specs_raise_config_errors(overrides, field) -> None:
    with pytest.raises(ConfigError) as info:
        load_timm_backbone(tiny_vit_spec(**overrides))
    assert info.value.field == field


def test_model_kwargs_reach_timm() -> None:
    model = load_timm_backbone(
        tiny_vit_spec(
            model_kwargs={
                "img_size": 32,
                "patch_size": 4,
                "embed_dim": 48,
                "depth": 3,
                "num_heads": 3,
                "reg_tokens": 2,
            }
        )
    ).model
    assert model.patch_embed.num_patches == 64 and model.embed_dim == 48 and len(model.blocks) == 3
    assert model.num_prefix_tokens == 3
