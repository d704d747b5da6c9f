"""open_clip backbone loading: random / local-dir / file / tag sources, integrity, freezing, preprocessing."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from models.backbones import load_backbone, save_clip_local_dir
from models.backbones.clip_loader import load_clip_backbone, register_model_config
from models.backbones.spec import Backbone, BackboneSpec
from models.errors import CheckpointError, ConfigError, WeightsIntegrityError, WeightsNotFoundError
from tests.tiny import TINY_CLIP_CONFIG, tiny_clip_spec


def _m(backbone: Backbone) -> Any:
    """The open_clip model (untyped upstream)."""
    return backbone.model


def _outputs(backbone: Backbone) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert backbone.tokenizer is not None
    tokens = backbone.tokenizer(["a photo of a dog.", "a red car"])
    with torch.no_grad():
        return _m(backbone).encode_image(images), _m(backbone).encode_text(tokens)


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    return load_clip_backbone(tiny_clip_spec())


@pytest.fixture(scope="module")
def saved(tiny: Backbone, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    sha = save_clip_local_dir(tiny.model, TINY_CLIP_CONFIG, folder)
    return folder, sha


def test_random_backbone_is_frozen_in_eval_with_preprocessing(tiny: Backbone) -> None:
    assert tiny.family == "open_clip"
    assert tiny.weights_sha256 is None
    assert not tiny.model.training
    assert all(not p.requires_grad for p in tiny.model.parameters())
    pp = tiny.preprocessing
    assert pp.image_size == 32
    assert pp.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert pp.std == pytest.approx((0.26862954, 0.26130258, 0.27577711))
    assert (pp.resize_mode, pp.interpolation) == ("shortest", "bicubic")
    image = tiny.transform(Image.new("RGB", (40, 60), (255, 0, 0)))
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert tiny.tokenizer is not None
    assert tiny.tokenizer(["a dog"]).shape == (1, 16)  # the tiny config's context length


def test_local_dir_and_file_round_trip(tiny: Backbone, saved: tuple[Path, str]) -> None:
    folder, sha = saved
    assert sorted(p.name for p in folder.iterdir()) == [
        "open_clip_config.json",
        "open_clip_model.safetensors",
    ]
    reference = _outputs(tiny)
    from_dir = load_backbone(tiny_clip_spec(weights=f"local-dir:{folder}", sha256=sha))
    from_file = load_backbone(tiny_clip_spec(weights=str(folder / "open_clip_model.safetensors")))
    for loaded in (from_dir, from_file):
        assert loaded.weights_sha256 == sha
        assert all(not p.requires_grad for p in loaded.model.parameters()) and not loaded.model.training
        for ours, theirs in zip(_outputs(loaded), reference, strict=True):
            assert torch.equal(ours, theirs)
    assert from_dir.preprocessing == tiny.preprocessing


def test_weights_only_torch_file(tiny: Backbone, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(tiny.model.state_dict(), path)
    loaded = load_backbone(tiny_clip_spec(weights=str(path)))
    for ours, theirs in zip(_outputs(loaded), _outputs(tiny), strict=True):
        assert torch.equal(ours, theirs)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": Path("/tmp")}, path)  # not weights-only loadable
    with pytest.raises(CheckpointError):
        load_backbone(tiny_clip_spec(weights=str(path)))


def test_sha256_mismatch_is_rejected(saved: tuple[Path, str]) -> None:
    folder, _ = saved
    with pytest.raises(WeightsIntegrityError):
        load_backbone(tiny_clip_spec(weights=f"local-dir:{folder}", sha256="0" * 64))
    with pytest.raises(WeightsIntegrityError):
        load_backbone(tiny_clip_spec(weights=str(folder / "open_clip_model.safetensors"), sha256="f" * 64))


def test_weights_that_do_not_fit_are_rejected(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "wrong.safetensors"
    save_file({"not_a_clip_key": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="missing"):
        load_backbone(tiny_clip_spec(weights=str(path)))


def test_missing_sources_raise_weights_not_found(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError):
        load_backbone(tiny_clip_spec(weights=str(tmp_path / "nope.safetensors")))
    with pytest.raises(WeightsNotFoundError):
        load_backbone(tiny_clip_spec(weights=f"local-dir:{tmp_path / 'nope'}"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "open_clip_config.json").write_text(
        '{"model_cfg": {"embed_dim": 1, "vision_cfg": {}, "text_cfg": {}}}'
    )
    with pytest.raises(WeightsNotFoundError, match="no open_clip weights"):
        load_backbone(tiny_clip_spec(weights=f"local-dir:{tmp_path / 'empty'}"))


def test_uncached_tag_fails_fast_offline() -> None:
    spec = BackboneSpec(family="open_clip", arch="ViT-B-16", weights="laion2b_s34b_b88k", kind="clip")
    start = time.monotonic()
    with pytest.raises(WeightsNotFoundError) as info:
        load_backbone(spec)
    assert time.monotonic() - start < 5.0
    message = str(info.value)
    assert "ViT-B-16" in message and "laion2b_s34b_b88k" in message
    assert (
        "looked in" in message
        and "laion/CLIP-ViT-B-16-laion2B-s34B-b88K" in message
        and "HF cache" in message
    )


def test_unknown_tag_lists_the_known_ones() -> None:
    spec = BackboneSpec(family="open_clip", arch="ViT-B-16", weights="no_such_tag", kind="clip")
    with pytest.raises(WeightsNotFoundError, match="known tags: openai"):
        load_backbone(spec)


def test_uncached_hf_hub_repo_fails_fast_offline() -> None:
    spec = BackboneSpec(family="open_clip", arch="ViT-B-16", weights="hf-hub:promptune/missing", kind="clip")
    with pytest.raises(WeightsNotFoundError, match="promptune/missing"):
        load_backbone(spec)


def test_config_errors() -> None:
    with pytest.raises(ConfigError) as info:
        load_backbone({"family": "open_clip", "arch": "no-such-arch", "weights": "random", "kind": "clip"})
    assert info.value.field == "arch"
    with pytest.raises(ConfigError) as info:
        load_backbone(tiny_clip_spec(sha256="a" * 64))
    assert info.value.field == "sha256"
    with pytest.raises(ConfigError) as info:
        register_model_config("ViT-B-16", TINY_CLIP_CONFIG)  # would shadow a built-in architecture
    assert info.value.field == "model_config"
    register_model_config("promptune-test-tiny-clip", TINY_CLIP_CONFIG)  # idempotent re-registration


def test_load_backbone_accepts_a_plain_dict(tiny: Backbone) -> None:
    loaded = load_backbone(tiny_clip_spec().to_dict())
    assert isinstance(loaded, Backbone) and loaded.spec == tiny.spec


@pytest.mark.slow
def test_vit_b16_random_build_is_frozen() -> None:
    backbone = load_backbone(BackboneSpec(family="open_clip", arch="ViT-B-16", weights="random", kind="clip"))
    assert backbone.preprocessing.image_size == 224
    assert sum(p.requires_grad for p in backbone.model.parameters()) == 0
