"""The zoo: the procedural world, its tasks, the pretraining recipes and the cached build (all fast)."""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from typing import Any, cast

import numpy as np
import pytest
import torch

from models.backbones.loader import load_backbone
from models.backbones.spec import BackboneSpec
from models.errors import ConfigError, WeightsIntegrityError
from models.zoo import world as W
from models.zoo.build import (
    EVAL_TASK_SEED,
    RECIPES,
    build_zoo,
    cached,
    evaluate_clip_zero_shot,
    verify_with_loader,
)
from models.zoo.pretrain_clip import (
    normalise,
    preprocess_stats,
    pretrain_clip,
    save_clip,
    zero_shot_accuracy,
)
from models.zoo.pretrain_vit import VIT_MEAN, VIT_STD, VitPretrainConfig, pretrain_vit, save_vit
from models.zoo.tasks import (
    VTAB_TASKS,
    base_to_new_task,
    build_task,
    digits_task,
    rpp_source_task,
    rpp_targets,
    write_imagefolder_zip,
)

TINY_CLIP = {
    "arch": "zoo-test-clip",
    "image_size": 32,
    "patch_size": 8,
    "vision_width": 64,
    "vision_layers": 2,
    "vision_head_width": 32,
    "text_width": 64,
    "text_layers": 2,
    "text_heads": 2,
    "embed_dim": 64,
    "context_length": 24,
    "batch_size": 24,
    "lr": 2e-3,
    "warmup_steps": 2,
    "supersample": 1,
    "log_every": 1,
    "device": "cpu",
}
TINY_VIT = {
    "image_size": 32,
    "patch_size": 8,
    "embed_dim": 64,
    "depth": 2,
    "num_heads": 2,
    "batch_size": 32,
    "lr": 2e-3,
    "warmup_steps": 2,
    "supersample": 1,
    "log_every": 1,
    "device": "cpu",
    "decoder_width": 32,
    "decoder_depth": 1,
    "decoder_heads": 2,
}
SMALL = {"train": 30, "val": 15, "test": 15}


@pytest.fixture(autouse=True)
def _one_thread():
    """Toy models: intra-op threads cost more than they save (and thrash on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _digest(images: torch.Tensor) -> list[str]:
    return [hashlib.sha256(img.numpy().tobytes()).hexdigest() for img in images]


# ---- world ----------------------------------------------------------------------------------------


def test_world_is_deterministic_from_the_seed() -> None:
    a, b = W.sample_scenes(64, seed=7), W.sample_scenes(64, seed=7)
    assert a.records() == b.records()
    pixels_a, pixels_b = W.render_scenes(a), W.render_scenes(b)
    assert pixels_a.dtype == np.uint8 and pixels_a.shape == (64, 32, 32, 3)
    assert np.array_equal(pixels_a, pixels_b)
    assert W.make_captions(a, 7) == W.make_captions(b, 7)
    assert not np.array_equal(pixels_a, W.render_scenes(W.sample_scenes(64, seed=8)))
    # Each scene's pixels depend on its own record only: any subset or chunking renders the same.
    pick = np.asarray([3, 10, 11, 40])
    assert np.array_equal(W.render_scenes(a.subset(pick)), pixels_a[pick])
    assert np.array_equal(W.render_scenes(a, chunk=7), pixels_a)
    world = W.World(image_size=48, seed=3)
    (x1, c1, _), (x2, c2, _) = world.batch(5, 16), world.batch(5, 16)
    assert x1.shape == (16, 48, 48, 3) and np.array_equal(x1, x2) and c1 == c2
    assert not np.array_equal(x1, world.batch(6, 16)[0])


def test_constraints_are_honoured() -> None:
    batch = W.sample_scenes(50, seed=1, shape="star", count=3, background="striped", colour=("red", "blue"))
    for rec in batch.records():
        assert rec["shape"] == "star" and rec["count"] == 3 and rec["background"] == "striped"
        assert rec["colour"] in ("red", "blue") and rec["orientation"] is None  # stars are symmetric
    oriented = W.sample_scenes(50, seed=2, orientation="left")
    assert {r["shape"] for r in oriented.records()} <= set(W.ASYMMETRIC_SHAPES)
    assert {r["orientation"] for r in oriented.records()} == {"left"}
    pairs = W.sample_scenes(60, seed=3, distance="far")
    gaps = np.linalg.norm(pairs.centres[:, 0] - pairs.centres[:, 1], axis=-1)
    assert (pairs.count == 2).all() and (gaps >= 0.66 - 1e-9).all()
    single = W.sample_scenes(40, seed=4, position="left", count=1)
    assert (single.centres[:, 0, 0] <= 0.30 + 1e-9).all()
    with pytest.raises(ConfigError):
        W.sample_scenes(4, seed=0, shape="hexagon")
    with pytest.raises(ConfigError):
        W.sample_scenes(4, seed=0, shape="circle", orientation="up")


def test_captions_match_the_attributes() -> None:
    batch = W.sample_scenes(300, seed=11)
    captions = W.make_captions(batch, seed=11)
    templates = set()
    for rec, text in zip(batch.records(), captions, strict=True):
        words = re.findall(r"[a-z]+", text)
        assert rec["colour"] in words
        assert not (set(W.COLOUR_NAMES) - {rec["colour"]}) & set(words), text
        noun = rec["shape"] if rec["count"] == 1 else W.PLURALS[rec["shape"]]
        assert noun in words, text
        if rec["count"] == 1:
            assert {"a", "an", "one"} & set(words), text
        else:
            assert W.COUNT_WORDS[rec["count"] - 1] in words, text
        if "background" in words:
            assert f"{rec['background']} background" in text, text
        for position, phrase in W.POSITION_PHRASES.items():
            if phrase in text:
                assert rec["position"] == position, text
        if "pointing" in words:
            assert f"pointing {rec['orientation']}" in text, text
        for size in W.SIZES:
            if size in words:
                assert rec["size"] == size, text
        templates.add(" ".join(words[:2]))
    assert len(templates) > 5  # several templates in use


# ---- tasks ----------------------------------------------------------------------------------------


def test_vtab_tasks_have_disjoint_balanced_splits() -> None:
    tasks = [build_task(name, seed=0, sizes=SMALL) for name in VTAB_TASKS]
    assert len(tasks) >= 8
    assert {t.group for t in tasks} == {"natural", "specialised", "structured"}
    for task in tasks:
        seen: set[str] = set()
        for split, part in task.splits.items():
            assert part.images.dtype == torch.uint8 and part.images.shape[1:] == (3, 32, 32)
            assert part.labels.min() >= 0 and part.labels.max() < task.num_classes
            if task.name != "digits":
                counts = torch.bincount(part.labels, minlength=task.num_classes)
                assert counts.max() - counts.min() <= 1, (task.name, split, counts)
            digests = set(_digest(part.images))
            assert not digests & seen, f"{task.name}: {split} shares images with another split"
            seen |= digests
    digits = digits_task()
    assert {k: len(v) for k, v in digits.splits.items()} == {"train": 1000, "val": 200, "test": 597}
    idx = digits.meta["indices"]
    assert not set(idx["train"]) & set(idx["test"]) and not set(idx["train"]) & set(idx["val"])
    # Fixed whatever the seed: the zoo ViTs pretrain on this train split.
    assert digits_task(seed=5).meta["indices"] == idx
    position = build_task("position", sizes={"train": 1000})
    assert len(position.splits["train"]) == 1000 and position.num_classes == 5


def test_rpp_suite_source_and_held_out_targets() -> None:
    source = rpp_source_task(per_class={"train": 1, "val": 1})
    assert source.num_classes >= 200 and len(set(source.class_names)) == source.num_classes
    assert "small red striped circle" in source.class_names
    targets = rpp_targets(per_class=1, subset_classes=12)
    assert len(targets) >= 4
    by_name = {t.name: t for t in targets}
    assert not set(by_name["rpp-new-colours"].class_names) & set(source.class_names)
    assert not set(by_name["rpp-count-shape"].class_names) & set(source.class_names)
    for name in ("rpp-domain-background", "rpp-domain-corruption", "rpp-domain-outline"):
        assert set(by_name[name].class_names) <= set(source.class_names)
    b2n = base_to_new_task(per_class={"train": 1, "val": 1, "test": 1})
    base, new = set(b2n.meta["base"]), set(b2n.meta["new"])
    assert base and new and not base & new and base | new == set(range(b2n.num_classes))
    assert set(b2n.splits["train"].labels.tolist()) <= base
    assert set(b2n.splits["test_new"].labels.tolist()) == new


def test_imagefolder_zip_is_deterministic_and_ingestible(tmp_path) -> None:
    task = build_task("shapes", sizes={"train": 16, "val": 8, "test": 8})
    first = write_imagefolder_zip(task, tmp_path / "a.zip")
    second = write_imagefolder_zip(task, tmp_path / "b.zip")
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as zf:
        names = zf.namelist()
    assert {n.split("/")[0] for n in names} == {"train", "val", "test"}
    assert len(names) == 32
    from models.data import read_image_folder

    samples, class_names, report = read_image_folder(first)
    assert len(samples) == 32 and set(class_names) <= set(task.class_names)
    assert {s.split for s in samples} == {"train", "val", "test"}


# ---- pretraining and reloading through the real loaders ------------------------------------------------


def _first_last(history: list[dict[str, float]], k: int = 3) -> tuple[float, float]:
    losses = [h["loss"] for h in history]
    return float(np.mean(losses[:k])), float(np.mean(losses[-k:]))


def test_clip_pretraining_lowers_the_loss_and_reloads_identically(tmp_path) -> None:
    result = pretrain_clip({**TINY_CLIP, "max_steps": 12}, log=None)
    first, last = _first_last(result.history)
    assert result.steps == 12 and last < first - 0.05, result.history
    weights, sha = save_clip(result.model, result.model_config, tmp_path / "clip")
    spec = BackboneSpec(family="open_clip", arch="zoo-test-clip", weights=f"local-dir:{tmp_path / 'clip'}",
                        kind="clip", sha256=sha, model_config=result.model_config)  # fmt: skip
    backbone = load_backbone(spec)
    assert backbone.weights_sha256 == sha
    colour = build_task("colour", sizes={"test": 8})
    images = colour.split("test")[0]
    mean, std = preprocess_stats(result.model)
    assert tuple(backbone.preprocessing.mean) == pytest.approx(mean)
    x = normalise(images, mean, std)
    via_transform = torch.stack([backbone.transform(img) for img in colour.pil_images("test")])
    assert torch.allclose(via_transform, x, atol=1e-6)
    assert backbone.tokenizer is not None
    tokens = backbone.tokenizer(["two small red circles", "a blue star on a striped background"])
    loaded, trained = cast(Any, backbone.model), cast(Any, result.model)
    trained.requires_grad_(False)  # as loaded backbones are (same attention kernels)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(x), trained.encode_image(x))
        assert torch.equal(loaded.encode_text(tokens), trained.encode_text(tokens))
    with pytest.raises(WeightsIntegrityError):
        load_backbone(spec.to_dict() | {"sha256": "0" * 64})


def test_step_budgeted_pretraining_is_reproducible(tmp_path) -> None:
    runs = [pretrain_clip({**TINY_CLIP, "max_steps": 3}, log=None) for _ in range(2)]
    shas = [save_clip(r.model, r.model_config, tmp_path / f"clip{i}")[1] for i, r in enumerate(runs)]
    assert shas[0] == shas[1]
    other = pretrain_clip({**TINY_CLIP, "max_steps": 3, "seed": 1}, log=None)
    assert save_clip(other.model, other.model_config, tmp_path / "clip-other")[1] != shas[0]


@pytest.mark.parametrize("mode", ["supervised", "mae"])
def test_vit_pretraining_lowers_the_loss_and_reloads(tmp_path, mode: str) -> None:
    cfg = VitPretrainConfig.from_dict({**TINY_VIT, "mode": mode, "max_steps": 16})
    result = pretrain_vit(cfg, log=None)
    first, last = _first_last(result.history)
    assert last < first - 0.02, result.history
    path, sha = save_vit(result.model, tmp_path / "vit.safetensors")
    spec = BackboneSpec(family="timm", arch=cfg.arch, weights=str(path), kind=cfg.kind, sha256=sha,
                        model_kwargs=cfg.model_kwargs())  # fmt: skip
    report = verify_with_loader(spec, result.model, cfg.image_size)
    assert report["sha256_match"] and report["max_abs_diff"] == 0.0
    backbone = load_backbone(spec)
    assert tuple(backbone.preprocessing.mean) == pytest.approx(VIT_MEAN)
    assert tuple(backbone.preprocessing.std) == pytest.approx(VIT_STD)
    assert backbone.preprocessing.image_size == 32
    task = build_task("shapes", sizes={"test": 4})
    x = normalise(task.split("test")[0], VIT_MEAN, VIT_STD)
    via_transform = torch.stack([backbone.transform(img) for img in task.pil_images("test")])
    assert torch.allclose(via_transform, x, atol=1e-6)  # the loader's eval transform is the training input
    vit = cast(Any, result.model)
    with torch.no_grad():
        if mode == "supervised":  # token readout: the very features the heads were trained on
            assert torch.equal(backbone.model(x), vit(x))
        else:  # MAE readout: the encoder's final norm over the mean of the patch tokens
            tokens = vit.blocks(vit.norm_pre(vit._pos_embed(vit.patch_embed(x))))
            expected = vit.norm(tokens[:, 1:].mean(1))
            assert torch.allclose(backbone.model(x), expected, atol=1e-5)


# ---- build + registry + zero-shot evaluation --------------------------------------------------------------


def test_build_zoo_caches_and_writes_the_registry(tmp_path) -> None:
    tiny = {
        "zoo-vit-sup-tiny": {k: v for k, v in TINY_VIT.items() if not k.startswith("decoder")}
        | {"max_steps": 2}
    }
    first = build_zoo(tmp_path, "quick", only=["zoo-vit-sup-tiny"], overrides=tiny, log=None)
    assert first["built"] == ["zoo-vit-sup-tiny"] and first["cached"] == []
    registry = json.loads((tmp_path / "backbones.json").read_text())
    assert set(registry) == {"zoo-vit-sup-tiny"} and registry == first["registry"]
    spec = BackboneSpec.from_dict(registry["zoo-vit-sup-tiny"])
    assert spec.kind == "supervised" and spec.sha256 == first["manifests"]["zoo-vit-sup-tiny"]["sha256"]
    assert load_backbone(spec).weights_sha256 == spec.sha256
    manifest = first["manifests"]["zoo-vit-sup-tiny"]
    assert manifest["verified"]["sha256_match"] and manifest["steps"] == 2

    second = build_zoo(tmp_path, "quick", only=["zoo-vit-sup-tiny"], overrides=tiny, log=None)
    assert second["built"] == [] and second["cached"] == ["zoo-vit-sup-tiny"]
    # Another recipe (a changed budget) is a different hash: rebuilt.
    changed = {"zoo-vit-sup-tiny": tiny["zoo-vit-sup-tiny"] | {"max_steps": 3}}
    recipe = RECIPES["zoo-vit-sup-tiny"]
    assert cached(tmp_path, recipe, recipe.recipe_hash("quick", changed["zoo-vit-sup-tiny"])) is None
    # Tampered weights are not reused.
    weights = tmp_path / "zoo-vit-sup-tiny" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    third = build_zoo(tmp_path, "quick", only=["zoo-vit-sup-tiny"], overrides=tiny, log=None)
    assert third["built"] == ["zoo-vit-sup-tiny"]
    with pytest.raises(ConfigError):
        build_zoo(tmp_path, "quick", only=["no-such-backbone"], log=None)


def test_zero_shot_evaluation_reports_pretrained_random_and_chance() -> None:
    result = pretrain_clip({**TINY_CLIP, "max_steps": 2}, log=None)
    report = evaluate_clip_zero_shot(
        result.model, result.tokenizer, result.model_config, arch="zoo-test-clip", image_size=32, test_size=10,
        task_names=("colour", "count"),
    )  # fmt: skip
    assert set(report) == {"colour", "count", "mean"}
    assert report["colour"]["chance"] == pytest.approx(1 / 8)
    for row in report.values():
        assert set(row) == {"pretrained", "random_init", "chance"}
        assert 0.0 <= row["pretrained"] <= 1.0 and 0.0 <= row["random_init"] <= 1.0
    task = build_task("colour", seed=EVAL_TASK_SEED, sizes={"test": 10})
    assert zero_shot_accuracy(result.model, result.tokenizer, task) == report["colour"]["pretrained"]
