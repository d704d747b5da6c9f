"""Prediction: zero-shot CLIP classifiers (template ensembles or learned RPP prompts) and tuned methods.

Text features are the expensive part of zero-shot classification (one text-tower pass per class and
template), so they are kept in a module-level LRU bounded by entries and bytes, keyed by
(backbone arch + weights sha256, classes, templates, prompts identity + version, device).

A caller that persists text features (the service does, per tenant) names them with
``ZeroShotClassifier.text_feature_key()``, computes them with ``compute_text_features()`` (which bypasses
that LRU) and seeds a classifier with ``set_text_features()``.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .backbones.spec import Backbone
from .clip_prompting.zeroshot import template_text_features
from .errors import ConfigError, DataError

DEFAULT_TEMPLATES = ("a photo of a {}.",)

_CACHE_MAX_ENTRIES = 64
_CACHE_MAX_BYTES = 512 * 1024 * 1024
_cache: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
_cache_lock = threading.Lock()
_cache_stats = {"hits": 0, "misses": 0}


def text_feature_cache_info() -> dict[str, int]:
    """Hits, misses, entries and bytes of the text-feature LRU."""
    with _cache_lock:
        size = sum(t.numel() * t.element_size() for t in _cache.values())
        return {**_cache_stats, "entries": len(_cache), "bytes": size, "max_entries": _CACHE_MAX_ENTRIES}


def clear_text_feature_cache() -> None:
    with _cache_lock:
        _cache.clear()
        _cache_stats.update(hits=0, misses=0)


def _cache_get(key: Hashable) -> torch.Tensor | None:
    with _cache_lock:
        value = _cache.get(key)
        if value is None:
            _cache_stats["misses"] += 1
            return None
        _cache.move_to_end(key)
        _cache_stats["hits"] += 1
        return value


def _cache_put(key: Hashable, value: torch.Tensor) -> None:
    with _cache_lock:
        _cache[key] = value
        _cache.move_to_end(key)
        total = sum(t.numel() * t.element_size() for t in _cache.values())
        while len(_cache) > 1 and (len(_cache) > _CACHE_MAX_ENTRIES or total > _CACHE_MAX_BYTES):
            _, evicted = _cache.popitem(last=False)
            total -= evicted.numel() * evicted.element_size()


def _identity(obj: Any) -> str:
    """A token naming this object for the process lifetime (``id()`` values are reused after GC)."""
    token = getattr(obj, "_promptune_cache_id", None)
    if token is None:
        token = uuid.uuid4().hex
        object.__setattr__(obj, "_promptune_cache_id", token)
    return str(token)


def _parameters_sha256(model: torch.nn.Module) -> str:
    """sha256 over a module's state (names, dtypes, shapes, bytes); memoised on the module (frozen)."""
    digest = getattr(model, "_promptune_parameters_sha256", None)
    if digest is None:
        h = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            data = tensor.detach().cpu().contiguous().reshape(-1)
            h.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}|".encode())
            h.update(data.view(torch.uint8).numpy().tobytes())
        digest = h.hexdigest()
        object.__setattr__(model, "_promptune_parameters_sha256", digest)
    return str(digest)


def backbone_identity(backbone: Backbone) -> dict[str, Any]:
    """JSON naming a backbone's weights across processes: the weights file's sha256; for random init
    (no file) the spec without its registry name and a digest of the parameters, so that two random
    initialisations never pass for each other."""
    if backbone.weights_sha256:
        return {"arch": backbone.spec.arch, "weights_sha256": backbone.weights_sha256}
    spec = {k: v for k, v in backbone.spec.to_dict().items() if k != "name"}
    return {"spec": spec, "parameters_sha256": _parameters_sha256(backbone.model)}


def predict_topk(logits: torch.Tensor, class_names: Sequence[str], k: int = 5) -> list[dict[str, Any]]:
    """Per row: ``{"label", "score", "top_k": [{"label", "score"}, ...]}`` with softmax probabilities."""
    if logits.ndim != 2 or logits.shape[1] != len(class_names):
        raise DataError(f"logits of shape {tuple(logits.shape)} do not match {len(class_names)} classes")
    if k < 1:
        raise ConfigError("k", "must be >= 1")
    probs = torch.softmax(logits.detach().float(), dim=-1).cpu()
    scores, ids = probs.topk(min(k, len(class_names)), dim=-1)
    results = []
    for row_scores, row_ids in zip(scores.tolist(), ids.tolist(), strict=True):
        top = [{"label": class_names[i], "score": float(s)} for s, i in zip(row_scores, row_ids, strict=True)]
        results.append({"label": top[0]["label"], "score": top[0]["score"], "top_k": top})
    return results


class ZeroShotClassifier:
    """CLIP zero-shot classification over ``class_names``.

    Without ``method``: the text classifier is the template ensemble (per class, the mean of the
    L2-normalised features of each template, renormalised) and logits = ``logit_scale * cos``. With an RPP
    ``method`` the learned prompts are used for both towers (its text prompts replace the templates;
    a method without text prompts falls back to the ensemble of ``templates``).
    """

    def __init__(
        self,
        backbone: Backbone,
        class_names: Sequence[str],
        templates: Sequence[str] | None = None,
        method: Any | None = None,
    ) -> None:
        if backbone.family != "open_clip":
            raise ConfigError("backbone", "zero-shot classification needs an open_clip backbone")
        names = list(class_names)
        if not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise DataError("class names must be a non-empty list of non-empty strings")
        if templates is None:
            templates = getattr(getattr(method, "config", None), "templates", None) or DEFAULT_TEMPLATES
        templates = list(templates)
        if not templates or any(not isinstance(t, str) or t.count("{}") != 1 for t in templates):
            raise ConfigError("templates", "each template must contain '{}' exactly once")
        if method is not None and not hasattr(method, "encode_text_features"):
            raise ConfigError(
                "method", "only prompt methods on open_clip (rpp) can drive a zero-shot classifier"
            )
        if method is not None and method.backbone.model is not backbone.model:
            raise ConfigError("method", "the method was built on another backbone")
        self.backbone = backbone
        self.class_names = names
        self.templates = templates
        self.method = method
        self._seeded: tuple[tuple[int, ...], torch.Tensor] | None = None  # (prompt versions, features)

    @property
    def model(self) -> Any:
        """The open_clip CLIP model (untyped upstream)."""
        return self.backbone.model

    @property
    def device(self) -> torch.device:
        device: torch.device = self.model.logit_scale.device
        return device

    def _cache_key(self) -> Hashable:
        spec = self.backbone.spec
        weights = self.backbone.weights_sha256 or f"model:{_identity(self.backbone.model)}"
        prompts: tuple[Any, ...] = ()
        if self.method is not None:
            method_id = getattr(self.method, "checkpoint_sha256", None) or f"method:{_identity(self.method)}"
            versions = tuple(p._version for p in self.method.learned_parameters().values())
            prompts = (method_id, versions)
        return (spec.arch, weights, tuple(self.class_names), tuple(self.templates), prompts, str(self.device))

    def _prompt_versions(self) -> tuple[int, ...]:
        if self.method is None:
            return ()
        return tuple(p._version for p in self.method.learned_parameters().values())

    def text_feature_key(self, prompts_sha256: str | None = None) -> dict[str, Any]:
        """JSON values that determine :meth:`text_features` in any process: the backbone's weights
        (:func:`backbone_identity`), the class names, the templates and, with a method, its prompts.

        Args:
            prompts_sha256: what names the method's learned prompts (its checkpoint's sha256); defaults to
                the method's ``checkpoint_sha256`` attribute. Required with a method, ignored without.
        """
        if self.method is not None:
            prompts_sha256 = prompts_sha256 or getattr(self.method, "checkpoint_sha256", None)
            if not prompts_sha256:
                raise ConfigError("prompts_sha256", "name the checkpoint of the method's prompts")
        return {
            "backbone": backbone_identity(self.backbone),
            "class_names": list(self.class_names),
            "templates": list(self.templates),
            "prompts_sha256": prompts_sha256 if self.method is not None else None,
        }

    def set_text_features(self, features: torch.Tensor) -> None:
        """Seed this classifier with precomputed (C, d) text features (e.g. read back from a store).

        :meth:`text_features` returns them (on this classifier's device) until a method's prompts change,
        without touching the process-wide cache. Raises DataError unless the shape fits the classes and the
        model's embedding width and every value is finite.
        """
        width = getattr(getattr(self.model, "visual", None), "output_dim", None)
        if (
            not isinstance(features, torch.Tensor)
            or not features.is_floating_point()
            or features.ndim != 2
            or features.shape[0] != len(self.class_names)
            or (isinstance(width, int) and features.shape[1] != width)
        ):
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise DataError(f"text features {shape} do not fit {len(self.class_names)} classes x {width}")
        if not bool(torch.isfinite(features).all()):
            raise DataError("text features hold non-finite values")
        self._seeded = (self._prompt_versions(), features.detach().to(self.device))

    @torch.no_grad()
    def compute_text_features(self) -> torch.Tensor:
        """(C, d) normalised class text features, computed now (the process-wide cache is neither read
        nor written)."""
        if self.method is not None:
            features = self.method.encode_text_features(self.class_names, self.templates)
        else:
            if self.backbone.tokenizer is None:
                raise ConfigError("backbone", "this backbone has no tokenizer")
            features = template_text_features(
                self.model.encode_text, self.backbone.tokenizer, self.class_names, self.templates, self.device
            )
        return features.detach()

    @torch.no_grad()
    def text_features(self) -> torch.Tensor:
        """(C, d) normalised class text features: the seeded ones, else cached per process."""
        if self._seeded is not None and self._seeded[0] == self._prompt_versions():
            return self._seeded[1]
        key = self._cache_key()
        cached = _cache_get(key)
        if cached is not None:
            return cached
        features = self.compute_text_features()
        _cache_put(key, features)
        return features

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device)
        if self.method is not None:
            return self.method.encode_image_features(images)
        return F.normalize(self.model.encode_image(images), dim=-1)

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        image = self.image_features(images).float()
        scale = self.model.logit_scale.exp().float()
        return scale * image @ self.text_features().float().t()

    __call__ = logits

    def predict(self, images: torch.Tensor, k: int = 5) -> list[dict[str, Any]]:
        return predict_topk(self.logits(images), self.class_names, k)


class TunedPredictor:
    """Predictions of a trained method (``method.forward`` logits over ``method.class_names``)."""

    def __init__(self, method: Any) -> None:
        self.method = method

    @property
    def class_names(self) -> list[str]:
        return list(self.method.class_names)

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        was_training = self.method.training
        self.method.eval()
        try:
            device = next(self.method.parameters()).device
            return self.method(images.to(device))
        finally:
            self.method.train(was_training)

    def predict(self, images: torch.Tensor, k: int = 5) -> list[dict[str, Any]]:
        return predict_topk(self.logits(images), self.class_names, k)
