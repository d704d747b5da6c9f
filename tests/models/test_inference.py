"""Zero-shot classification (template ensembles, learned prompts), top-k output, text-feature cache."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from models import inference
from models.backbones import load_backbone
from models.backbones.spec import Backbone
from models.errors import ConfigError, DataError
from models.inference import (
    TunedPredictor,
    ZeroShotClassifier,
    clear_text_feature_cache,
    predict_topk,
    text_feature_cache_info,
)
from models.rpp import RPPConfig, RPPModel
from tests.tiny import tiny_clip_spec


def _m(backbone: Backbone) -> Any:
    """The open_clip model (untyped upstream)."""
    return backbone.model


NAMES = ["dog", "cat", "red car", "golden_retriever"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}.", "art of the {}."]


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    torch.manual_seed(0)
    return load_backbone(tiny_clip_spec())


@pytest.fixture()
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    clear_text_feature_cache()


def test_template_ensemble_math(tiny: Backbone, images: torch.Tensor) -> None:
    classifier = ZeroShotClassifier(tiny, NAMES, TEMPLATES)
    assert tiny.tokenizer is not None
    with torch.no_grad():
        per_template = [
            F.normalize(
                _m(tiny).encode_text(tiny.tokenizer([t.format(n.replace("_", " ")) for n in NAMES])), dim=-1
            )
            for t in TEMPLATES
        ]
        expected = F.normalize(torch.stack(per_template).mean(dim=0), dim=-1)
        assert torch.allclose(classifier.text_features(), expected, atol=1e-6)
        image = F.normalize(_m(tiny).encode_image(images), dim=-1)
        logits = _m(tiny).logit_scale.exp() * image @ expected.t()
    assert torch.allclose(classifier.logits(images), logits, atol=1e-4)
    assert torch.allclose(classifier(images), logits, atol=1e-4)


def test_single_template_equals_open_clip_logits(tiny: Backbone, images: torch.Tensor) -> None:
    classifier = ZeroShotClassifier(tiny, NAMES)
    assert classifier.templates == ["a photo of a {}."] and tiny.tokenizer is not None
    tokens = tiny.tokenizer([f"a photo of a {n.replace('_', ' ')}." for n in NAMES])
    with torch.no_grad():
        reference, _ = _m(tiny).get_logits(images, tokens)
    assert torch.allclose(classifier.logits(images), reference, atol=1e-4)


def test_predict_topk_shape_order_and_probabilities() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 5.0, 1.0]])
    out = predict_topk(logits, NAMES, k=3)
    assert len(out) == 2
    assert [e["label"] for e in out[0]["top_k"]] == ["cat", "red car", "dog"]
    assert out[1]["label"] == "red car" and out[1]["score"] == out[1]["top_k"][0]["score"]
    probs = torch.softmax(logits, dim=-1)
    for row, entry in enumerate(out):
        scores = [e["score"] for e in entry["top_k"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
        assert sum(scores) <= 1.0 + 1e-6
        assert scores[0] == pytest.approx(float(probs[row].max()))
    assert len(predict_topk(logits, NAMES, k=10)[0]["top_k"]) == 4  # k capped to the class count
    assert sum(e["score"] for e in predict_topk(logits, NAMES, k=10)[0]["top_k"]) == pytest.approx(1.0)
    with pytest.raises(DataError):
        predict_topk(logits, NAMES[:3], k=1)
    with pytest.raises(ConfigError):
        predict_topk(logits, NAMES, k=0)


def test_text_features_are_cached(tiny: Backbone, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = inference.template_text_features

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(inference, "template_text_features", spy)
    first = ZeroShotClassifier(tiny, NAMES, TEMPLATES).text_features()
    assert text_feature_cache_info()["misses"] == 1 and text_feature_cache_info()["hits"] == 0
    again = ZeroShotClassifier(tiny, NAMES, TEMPLATES).text_features()  # a new classifier shares the cache
    assert again is first and len(calls) == 1
    assert text_feature_cache_info()["hits"] == 1
    ZeroShotClassifier(tiny, NAMES, TEMPLATES[:1]).text_features()  # other templates: another entry
    ZeroShotClassifier(tiny, NAMES[:2], TEMPLATES).text_features()  # other classes: another entry
    assert len(calls) == 3 and text_feature_cache_info()["entries"] == 3


def test_cache_is_bounded(tiny: Backbone, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inference, "_CACHE_MAX_ENTRIES", 2)
    for i in range(4):
        ZeroShotClassifier(tiny, [f"class {i}"]).text_features()
    assert text_feature_cache_info()["entries"] == 2


def test_random_backbones_do_not_share_cache_entries(images: torch.Tensor) -> None:
    torch.manual_seed(1)
    first = load_backbone(tiny_clip_spec())
    torch.manual_seed(2)
    second = load_backbone(tiny_clip_spec())
    a = ZeroShotClassifier(first, NAMES).text_features()
    b = ZeroShotClassifier(second, NAMES).text_features()
    assert not torch.allclose(a, b)


def test_learned_prompts_drive_both_towers(tiny: Backbone, images: torch.Tensor) -> None:
    torch.manual_seed(0)
    method = RPPModel(tiny, RPPConfig(), ["train class a", "train class b"])
    classifier = ZeroShotClassifier(tiny, NAMES, method=method)
    logits = classifier.logits(images)
    method.set_class_names(NAMES)
    with torch.no_grad():
        assert torch.allclose(logits, method(images), atol=1e-5)
    plain = ZeroShotClassifier(tiny, NAMES).logits(images)
    assert not torch.allclose(logits, plain, atol=1e-3)
    # after the prompts change, the cached text features are not reused
    with torch.no_grad():
        method.prompted.text_prompts.prompts_k.add_(0.5)  # type: ignore[union-attr]
    misses = text_feature_cache_info()["misses"]
    classifier.text_features()
    assert text_feature_cache_info()["misses"] == misses + 1
    other = load_backbone(tiny_clip_spec())
    with pytest.raises(ConfigError):
        ZeroShotClassifier(other, NAMES, method=method)


def test_tuned_predictor(tiny: Backbone, images: torch.Tensor) -> None:
    method = RPPModel(tiny, RPPConfig(), NAMES)
    method.train()
    out = TunedPredictor(method).predict(images, k=2)
    assert method.training  # mode restored
    with torch.no_grad():
        probs = torch.softmax(method(images), dim=-1)
    assert len(out) == 3 and all(len(o["top_k"]) == 2 for o in out)
    assert out[0]["label"] == NAMES[int(probs[0].argmax())]
    assert out[0]["score"] == pytest.approx(float(probs[0].max()), abs=1e-6)


def test_classifier_validation(tiny: Backbone) -> None:
    with pytest.raises(DataError):
        ZeroShotClassifier(tiny, [])
    with pytest.raises(ConfigError):
        ZeroShotClassifier(tiny, NAMES, ["no placeholder"])
