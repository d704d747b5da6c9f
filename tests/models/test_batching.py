"""Shared backbone forwards across tuned models (models.batching): equal logits, fewer forwards."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from torch import nn

from models import batched_logits, forward_groups, shared_forward_key
from models.backbones import load_backbone
from models.backbones.spec import Backbone
from models.clip_prompting.prompts import StackedTowerPrompts
from models.clip_prompting.towers import encode_image
from models.inference import TunedPredictor, ZeroShotClassifier
from models.rpp import RPPConfig, RPPModel
from models.spt import SPTConfig, SPTModel
from tests.tiny import tiny_clip_spec, tiny_vit_spec

TOL = 1e-5
NAMES = ["dog", "cat", "red car", "golden_retriever"]


@pytest.fixture(scope="module")
def vit() -> Backbone:
    torch.manual_seed(0)
    return load_backbone(tiny_vit_spec())


@pytest.fixture(scope="module")
def clip() -> Backbone:
    torch.manual_seed(0)
    return load_backbone(tiny_clip_spec())


def _m(backbone: Backbone) -> Any:
    """The backbone's model (untyped upstream)."""
    return backbone.model


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _randomise(method: nn.Module, seed: int, scale: float = 0.5) -> nn.Module:
    """Learned tensors drawn from ``seed``, large enough that every model's logits differ."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in method.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    return method.eval()


def _spt(backbone: Backbone, seed: int, classes: int = 4, **config: Any) -> SPTModel:
    model = SPTModel(backbone, SPTConfig(**config), [f"c{i}" for i in range(classes)])
    _randomise(model, seed)
    return model


def _rpp(backbone: Backbone, seed: int, **config: Any) -> RPPModel:
    method = RPPModel(backbone, RPPConfig(**config), NAMES)
    _randomise(method, seed)
    return method


@contextmanager
def count_calls(module: Any) -> Iterator[list[int]]:
    """Counts ``module``'s forward calls (the patch embedding: one per backbone forward)."""
    calls: list[int] = []
    handle = module.register_forward_pre_hook(lambda _m, args: calls.append(int(args[0].shape[0])))
    try:
        yield calls
    finally:
        handle.remove()


@torch.no_grad()
def _own(target: Any, images: torch.Tensor) -> torch.Tensor:
    return target.logits(images) if isinstance(target, ZeroShotClassifier) else target(images)


def _check_equal(items: Sequence[tuple[Any, torch.Tensor]], results: Sequence[torch.Tensor]) -> None:
    assert len(results) == len(items)
    for (target, images), logits in zip(items, results, strict=True):
        expected = _own(target, images)
        assert logits.shape == expected.shape
        assert (logits - expected).abs().max().item() <= TOL


# ---- SPT / VPT on one ViT ------------------------------------------------------------------------------
def _spt_mix(vit: Backbone) -> tuple[list[tuple[Any, torch.Tensor]], int]:
    deep = [_spt(vit, seed=s, classes=3 + s, mode="deep", num_prompts=4) for s in range(4)]
    shallow = _spt(vit, seed=10, mode="shallow", num_prompts=4)
    other_m = _spt(vit, seed=11, mode="deep", num_prompts=2)
    probes = [_spt(vit, seed=12 + s, classes=2 + s, num_prompts=0) for s in range(2)]
    targets = [deep[0], shallow, deep[1], probes[0], deep[2], other_m, deep[3], probes[1], deep[0]]
    items = [(t, _images(1 + i % 3, seed=100 + i)) for i, t in enumerate(targets)]
    return items, 4  # deep M=4, shallow, deep M=2, the probes


def test_spt_models_of_one_structure_share_a_forward(vit: Backbone) -> None:
    items, structures = _spt_mix(vit)
    groups = forward_groups(items)
    assert groups == [[0, 2, 4, 6, 8], [1], [3, 7], [5]]
    with count_calls(_m(vit).patch_embed) as calls:
        results = batched_logits(items)
    assert len(calls) == structures == len(groups)
    assert calls[0] == sum(items[i][1].shape[0] for i in groups[0])
    _check_equal(items, results)
    assert [r.shape[1] for r in results[:3]] == [3, 4, 4]  # each item its own head


def test_item_order_does_not_change_results(vit: Backbone, clip: Backbone) -> None:
    items = _spt_mix(vit)[0] + _clip_mix(clip)[0]
    expected = batched_logits(items)
    order = list(range(len(items)))
    random.Random(0).shuffle(order)
    shuffled = batched_logits([items[i] for i in order])
    for position, index in enumerate(order):
        assert (shuffled[position] - expected[index]).abs().max().item() <= TOL
    alone = batched_logits(items[2:3])[0]  # no company at all
    assert (alone - expected[2]).abs().max().item() <= TOL


@pytest.mark.parametrize("mode", ["deep", "shallow"])
@pytest.mark.parametrize("fast", [True, False])
def test_per_sample_prompts_of_one_model_equal_its_forward(vit: Backbone, mode: str, fast: bool) -> None:
    model = _spt(vit, seed=3, mode=mode, num_prompts=3)
    model._plain_blocks = fast  # False: the generic path through the timm blocks
    images = _images(5, seed=7)
    assert model.prompts is not None
    stacked = model.prompts.detach().unsqueeze(0).expand(5, -1, -1, -1).clone()
    with torch.no_grad():
        own = model.features(images)
        shared = model.features(images, stacked)
    assert (shared - own).abs().max().item() <= 1e-6


def test_mean_readout_shares_too() -> None:
    torch.manual_seed(0)
    mae = load_backbone(tiny_vit_spec(kind="mae"))
    models = [_spt(mae, seed=s, mode="deep", num_prompts=2) for s in range(3)]
    assert {m.readout for m in models} == {"mean"}
    items = [(m, _images(2, seed=20 + i)) for i, m in enumerate(models)]
    assert forward_groups(items) == [[0, 1, 2]]
    _check_equal(items, batched_logits(items))


def test_per_sample_prompts_are_checked(vit: Backbone) -> None:
    model = _spt(vit, seed=0, mode="deep", num_prompts=3)
    with pytest.raises(ValueError, match="per-sample prompts"):
        model.features(_images(2, seed=0), torch.zeros(3, 2, 3, 64))
    probe = _spt(vit, seed=0, num_prompts=0)
    with pytest.raises(ValueError, match="per-sample prompts"):
        probe.features(_images(2, seed=0), torch.zeros(2, 2, 0, 64))


# ---- CLIP: zero-shot and RPP ---------------------------------------------------------------------------
def _clip_mix(clip: Backbone) -> tuple[list[tuple[Any, torch.Tensor]], int]:
    plain = ZeroShotClassifier(clip, NAMES[:3], ["a photo of a {}.", "art of the {}."])
    qkv = [_rpp(clip, seed=s, vision_depth=2) for s in (1, 2)]
    replace = _rpp(clip, seed=3, vision_depth=2, carry="replace")
    coop = ZeroShotClassifier(
        clip, ["car", "bird"], method=_rpp(clip, seed=4, text_design="coop", vision_design="none")
    )
    driven = ZeroShotClassifier(clip, ["tree", "house", "boat"], method=qkv[1])
    text_only = _rpp(clip, seed=5, vision_design="none")
    targets = [plain, qkv[0], replace, coop, qkv[1], driven, qkv[0], text_only]
    items = [(t, _images(1 + i % 3, seed=200 + i)) for i, t in enumerate(targets)]
    return items, 3  # plain images, qkv add, qkv replace


def test_clip_targets_share_forwards_per_vision_prompt_structure(clip: Backbone) -> None:
    items, structures = _clip_mix(clip)
    groups = forward_groups(items)
    assert groups == [[0, 3, 7], [1, 4, 5, 6], [2]]
    with count_calls(_m(clip).visual.conv1) as calls:
        results = batched_logits(items)
    assert len(calls) == structures == len(groups)
    _check_equal(items, results)
    assert [r.shape[1] for r in results] == [3, 4, 4, 2, 4, 3, 4, 4]
    led_by_a_method = [items[7], items[0]]  # the plain forward led by a method without vision prompts
    _check_equal(led_by_a_method, batched_logits(led_by_a_method))


def test_prompted_and_plain_clip_outputs_really_differ(clip: Backbone) -> None:
    items = _clip_mix(clip)[0]
    images = _images(2, seed=0)
    prompted = [_own(t, images) for t in (items[1][0], items[4][0], items[2][0])]
    plain = ZeroShotClassifier(clip, NAMES, method=_rpp(clip, seed=1, vision_design="none"))
    base = _own(plain, images)
    for logits in prompted:  # the per-sample prompts matter, so the equalities above test them
        assert (logits - base).abs().max().item() > 1e-3


@pytest.mark.parametrize(
    "config",
    [
        {"vision_design": "qkv", "vision_depth": 2},
        {"vision_design": "qkv", "vision_depth": 2, "carry": "replace"},
        {"vision_design": "shared", "vision_depth": 2},
        {"vision_design": "shared", "vision_depth": 1, "carry": "replace"},
    ],
)
def test_stacked_tower_prompts_of_one_model_equal_its_own(clip: Backbone, config: dict[str, Any]) -> None:
    method = _rpp(clip, seed=5, **config)
    prompts = method.prompted.vision_prompts
    assert prompts is not None
    images = _images(4, seed=9)
    with torch.no_grad():
        own = encode_image(clip.model, prompts, images)
        stacked = encode_image(clip.model, StackedTowerPrompts([(prompts, 1), (prompts, 3)]), images)
    assert (stacked - own).abs().max().item() <= 1e-6


def test_stacked_tower_prompts_check_structure_and_batch(clip: Backbone) -> None:
    add = _rpp(clip, seed=0, vision_depth=2).prompted.vision_prompts
    replace = _rpp(clip, seed=0, vision_depth=2, carry="replace").prompted.vision_prompts
    assert add is not None and replace is not None
    with pytest.raises(ValueError, match="structures differ"):
        StackedTowerPrompts([(add, 1), (replace, 1)])
    with pytest.raises(ValueError, match="at least one"):
        StackedTowerPrompts([(add, 0)])
    with pytest.raises(ValueError, match="per-sample prompt sets"), torch.no_grad():
        encode_image(clip.model, StackedTowerPrompts([(add, 2)]), _images(3, seed=0))


# ---- everything else runs its own forward ----------------------------------------------------------------
class Wrapped(nn.Module):
    """A classifier the batching knows nothing about."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner(images) * 2.0


class SubclassedSPT(SPTModel):
    """A subclass may change forward, so it never joins another model's forward."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return super().forward(images) + 1.0


def test_unknown_targets_run_their_own_forward(vit: Backbone) -> None:
    base = _spt(vit, seed=0, mode="deep", num_prompts=4)
    sub = SubclassedSPT(vit, SPTConfig(mode="deep", num_prompts=4), NAMES)
    _randomise(sub, seed=1)
    wrapped = Wrapped(base)
    predictor = TunedPredictor(_spt(vit, seed=2, mode="deep", num_prompts=4))
    items = [
        (base, _images(2, 1)),
        (sub, _images(1, 2)),
        (wrapped, _images(2, 3)),
        (predictor, _images(3, 4)),
    ]
    items.append((wrapped, _images(1, 5)))
    assert shared_forward_key(sub)[0] == shared_forward_key(wrapped)[0] == "own"
    assert forward_groups(items) == [[0], [1], [2, 4], [3]]
    with count_calls(_m(vit).patch_embed) as calls:
        results = batched_logits(items)
    assert len(calls) == 4
    for (target, images), logits in zip(items, results, strict=True):
        expected = target.logits(images) if isinstance(target, TunedPredictor) else _own(target, images)
        assert (logits - expected).abs().max().item() <= TOL


def test_training_mode_spt_with_prompt_dropout_runs_alone(vit: Backbone) -> None:
    dropping = _spt(vit, seed=0, mode="deep", num_prompts=4, prompt_dropout=0.5).train()
    steady = _spt(vit, seed=1, mode="deep", num_prompts=4).train()  # training, but a deterministic forward
    other = _spt(vit, seed=2, mode="deep", num_prompts=4)
    assert shared_forward_key(dropping)[0] == "own"
    assert shared_forward_key(steady) == shared_forward_key(other)
    dropping.eval()
    assert shared_forward_key(dropping) == shared_forward_key(other)


def test_results_carry_no_autograd_graph(vit: Backbone) -> None:
    model = _spt(vit, seed=0, mode="deep", num_prompts=4)
    (logits,) = batched_logits([(model, _images(2, 0))])
    assert not logits.requires_grad
