"""RPP's method on a tiny CLIP: method-level validation, learned tensors, KD, the text / image feature
caches, another teacher, metadata and a tiny training run (config and losses: test_rpp.py)."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from models.backbones import load_backbone, save_clip_local_dir
from models.backbones.spec import Backbone
from models.errors import ConfigError, DataError
from models.inference import ZeroShotClassifier
from models.rpp import RPPConfig, RPPModel
from tests.tiny import TINY_CLIP_CONFIG, tiny_clip_spec

COLOURS = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
}
NAMES = list(COLOURS)


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    torch.manual_seed(0)
    return load_backbone(tiny_clip_spec())


def _colour_images(n: int, gen: torch.Generator, backbone: Backbone) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(n) % len(NAMES)
    rgb = torch.tensor([COLOURS[NAMES[i]] for i in labels])
    images = rgb.view(n, 3, 1, 1) * 0.8 + 0.1 + 0.1 * torch.randn(n, 3, 32, 32, generator=gen)
    mean = torch.tensor(backbone.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.preprocessing.std).view(1, 3, 1, 1)
    return (images - mean) / std, labels


def _batch(backbone: Backbone, n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    images, labels = _colour_images(n, torch.Generator().manual_seed(seed), backbone)
    return {"image": images, "label": labels, "index": torch.arange(n)}


# ---- the method -------------------------------------------------------------------------------------------
def test_method_level_validation(tiny: Backbone) -> None:
    with pytest.raises(ConfigError) as info:
        RPPModel(tiny, RPPConfig(ctx_init="a photo of a dog", text_length=4), NAMES)
    assert info.value.field == "ctx_init"
    with pytest.raises(ConfigError) as info:
        RPPModel(tiny, RPPConfig(vision_depth=3), NAMES)  # the tiny towers have 2 blocks
    assert info.value.field == "vision_depth"
    with pytest.raises(DataError):
        RPPModel(tiny, RPPConfig(), [])


def test_trainable_parameters_are_the_prompts(tiny: Backbone) -> None:
    method = RPPModel(tiny, RPPConfig(text_length=3, vision_length=2), NAMES)
    shapes = method.learned_shapes()
    assert shapes == {
        **{f"prompted.text_prompts.prompts_{v}": (1, 3, 64) for v in "qkv"},
        **{f"prompted.vision_prompts.prompts_{v}": (1, 2, 64) for v in "qkv"},
    }
    coop = RPPModel(tiny, RPPConfig(text_design="coop", vision_design="none"), NAMES)
    assert coop.learned_shapes() == {"prompted.text_prompts.ctx": (4, 64)}
    groups = method.param_groups(0.01, 0.0)
    assert [g["name"] for g in groups] == ["prompt"]


def test_kd_is_zero_when_the_student_is_the_teacher(tiny: Backbone) -> None:
    cfg = RPPConfig(text_design="none", vision_design="none", num_sampled_classes=4)
    method = RPPModel(tiny, cfg, NAMES)
    assert method.learned_parameters() == {}
    loss, logs = method.training_loss(_batch(tiny), torch.Generator().manual_seed(0))
    assert logs["kd"] == pytest.approx(0.0, abs=1e-6)
    assert logs["loss"] == pytest.approx(logs["ce"], abs=1e-6)
    # and without prompts the method is zero-shot CLIP with the same templates
    images = _batch(tiny)["image"]
    with torch.no_grad():
        ours = method(images)
    reference = ZeroShotClassifier(tiny, NAMES, cfg.templates).logits(images)
    assert torch.allclose(ours, reference, atol=1e-4)


def test_training_loss_encodes_only_the_candidate_classes(
    tiny: Backbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [f"class {i}" for i in range(50)]
    method = RPPModel(tiny, RPPConfig(num_sampled_classes=5, kd_weight=0.0), names)
    seen: list[int] = []
    original = method.prompted.encode_text

    def spy(tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        seen.append(tokens.shape[0])
        return original(tokens, normalize)

    monkeypatch.setattr(method.prompted, "encode_text", spy)
    images = torch.randn(4, 3, 32, 32)
    batch = {"image": images, "label": torch.tensor([0, 1, 1, 7]), "index": torch.arange(4)}
    loss, logs = method.training_loss(batch, torch.Generator().manual_seed(0))
    assert sum(seen) <= 3 + 4  # unique batch labels + K-1 sampled
    assert set(logs) == {"ce", "acc", "loss"}  # kd_weight 0: no teacher involved
    assert method._teacher_backbone is None and method._teacher_text is None
    loss.backward()
    assert all(p.grad is not None for p in method.learned_parameters().values())


def test_training_loss_is_reproducible_from_the_generator(tiny: Backbone) -> None:
    method = RPPModel(tiny, RPPConfig(num_sampled_classes=3), NAMES)
    batch = _batch(tiny)
    first, _ = method.training_loss(batch, torch.Generator().manual_seed(7))
    second, _ = method.training_loss(batch, torch.Generator().manual_seed(7))
    assert torch.equal(first, second)
    with pytest.raises(DataError):
        method.training_loss({**batch, "label": torch.tensor([0, 1, 2, 6])}, torch.Generator())


def test_text_feature_cache_follows_prompt_updates(tiny: Backbone) -> None:
    method = RPPModel(tiny, RPPConfig(), NAMES)
    method.eval()
    with torch.no_grad():
        first = method.encode_text_features()
        assert method.encode_text_features() is first  # cached
    optimizer = torch.optim.SGD(list(method.learned_parameters().values()), lr=1.0)
    method.train()
    loss, _ = method.training_loss(_batch(tiny), torch.Generator().manual_seed(0))
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        after = method.encode_text_features()
    assert after is not first and not torch.allclose(after, first)
    # with grad enabled (training forward) features are fresh and differentiable
    assert method.encode_text_features().requires_grad


def test_set_class_names_retargets_and_clears_caches(tiny: Backbone) -> None:
    method = RPPModel(tiny, RPPConfig(), NAMES)
    images = _batch(tiny)["image"]
    with torch.no_grad():
        assert method(images).shape == (4, 6)
        method.set_class_names(["dog", "cat"])
        logits = method(images)
    assert logits.shape == (4, 2) and method.class_names == ["dog", "cat"]
    with torch.no_grad():
        direct = method.encode_text_features(["dog", "cat"])
    assert torch.allclose(direct, method.encode_text_features())
    with pytest.raises(DataError):
        method.set_class_names([])


def test_image_feature_caches(tiny: Backbone, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = RPPConfig(vision_design="none", cache_image_features=True, num_sampled_classes=3)
    method = RPPModel(tiny, cfg, NAMES)
    calls: list[int] = []
    original = method.encode_image_features

    def spy(images: torch.Tensor) -> torch.Tensor:
        calls.append(images.shape[0])
        return original(images)

    monkeypatch.setattr(method, "encode_image_features", spy)
    batch = _batch(tiny)
    first, _ = method.training_loss(batch, torch.Generator().manual_seed(0))
    second, _ = method.training_loss(batch, torch.Generator().manual_seed(0))
    assert calls == [4] and len(method._student_images) == 4
    assert torch.equal(first, second)


def test_another_teacher_with_other_preprocessing(tiny: Backbone, tmp_path: Path) -> None:
    torch.manual_seed(3)
    vision: dict[str, Any] = {**TINY_CLIP_CONFIG["vision_cfg"], "image_size": 48}  # type: ignore[dict-item]
    config = {**TINY_CLIP_CONFIG, "vision_cfg": vision}
    teacher = load_backbone(tiny_clip_spec(arch="promptune-test-tiny-clip-48", model_config=config))
    save_clip_local_dir(teacher.model, config, tmp_path / "teacher")
    spec = {
        "family": "open_clip",
        "arch": "promptune-test-tiny-clip-48",
        "weights": f"local-dir:{tmp_path / 'teacher'}",
        "kind": "clip",
    }
    method = RPPModel(tiny, RPPConfig(teacher=spec, num_sampled_classes=4, cache_image_features=True), NAMES)
    assert method._teacher_backbone is None  # loaded lazily
    method.prepare(type("Data", (), {"class_names": NAMES})(), seed=0)
    assert method._teacher_backbone is not None and method._teacher_backbone.preprocessing.image_size == 48
    loss, logs = method.training_loss(_batch(tiny), torch.Generator().manual_seed(0))
    assert math.isfinite(logs["kd"]) and logs["kd"] > 0 and len(method._teacher_images) == 4
    loss.backward()
    with pytest.raises(DataError):
        method.prepare(type("Data", (), {"class_names": ["other"]})(), seed=0)


def test_metadata(tiny: Backbone) -> None:
    meta = RPPModel(tiny, RPPConfig(text_design="coop", ctx_init="a photo of a"), NAMES).metadata()
    assert meta["text_design"] == "coop" and meta["text_prompt_format"] == "X X X X {}."
    assert meta["text_depth"] == 1 and meta["vision_depth"] == 1 and meta["carry"] == "add"
    assert meta["templates"] == ["a photo of a {}."] and meta["ctx_init"] == "a photo of a"


@pytest.mark.parametrize(
    "design",
    [
        {},  # RPP defaults: unshared q/k/v prompts in both towers
        {"text_design": "coop", "vision_design": "none", "lr": 0.03, "steps": 60},  # CoOp / POMP context
    ],
    ids=["rpp", "coop"],
)
def test_tiny_training_learns_colours(design: dict[str, Any]) -> None:
    """A few AdamW steps on the prompts alone lift a frozen random CLIP far above chance (1/6)."""
    design = dict(design)
    lr, steps = design.pop("lr", 0.01), design.pop("steps", 40)
    torch.manual_seed(100)
    config: dict[str, Any] = copy.deepcopy(TINY_CLIP_CONFIG)
    config["vision_cfg"]["layers"] = config["text_cfg"]["layers"] = 4  # default depth 3 of 4 blocks
    backbone = load_backbone(tiny_clip_spec(arch="promptune-test-tiny-clip-4l", model_config=config))
    torch.manual_seed(0)
    method = RPPModel(backbone, RPPConfig(num_sampled_classes=len(NAMES), **design), NAMES)
    gen = torch.Generator().manual_seed(0)
    train_x, train_y = _colour_images(64, gen, backbone)
    test_x, test_y = _colour_images(64, gen, backbone)
    frozen = {k: v.clone() for k, v in backbone.model.state_dict().items()}

    def accuracy() -> float:
        method.eval()
        with torch.no_grad():
            value = float((method(test_x).argmax(1) == test_y).float().mean())
        method.train()
        return value

    before = accuracy()
    optimizer = torch.optim.AdamW(list(method.learned_parameters().values()), lr=lr, weight_decay=0.0)
    for step in range(steps):
        idx = torch.randperm(64, generator=gen)[:16]
        batch = {"image": train_x[idx], "label": train_y[idx], "index": idx}
        loss, _ = method.training_loss(batch, torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = accuracy()
    assert after >= 0.7 and after >= before + 0.3, (before, after)
    assert all(torch.equal(frozen[k], v) for k, v in backbone.model.state_dict().items())
