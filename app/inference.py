"""Prediction for the API, with bounded LRU caches so that no request reloads a backbone.

Three caches (each ``settings.inference_cache_size`` entries): loaded backbones (by registry name and
spec), tuned methods loaded from checkpoints (by model id and checkpoint sha256, sharing the cached
backbone), and zero-shot classifiers (by tenant, backbone, class names, templates and optional RPP model;
their text features persisted per tenant by app/text_features.py), all placed on the serving device. The
forwards themselves run in the serving engine's lanes (app/serving), batched across requests and models.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

import torch
from PIL import Image

from app.text_features import TextFeatureEntry, TextFeatureStore
from models import BackboneSpec

V = TypeVar("V")


class LRUCache(Generic[V]):
    """A small thread-safe LRU whose loads happen at most once per key at a time."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[Hashable, threading.Lock] = {}
        self.hits = 0
        self.misses = 0

    def get_or_load(self, key: Hashable, load: Callable[[], V]) -> V:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # concurrent requests for the same key wait for one load
            with self._lock:
                if key in self._items:
                    self.hits += 1
                    return self._items[key]
            value = load()
            with self._lock:
                self.misses += 1
                self._items[key] = value
                self._items.move_to_end(key)
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
                self._key_locks.pop(key, None)
            return value

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def _spec_key(spec: BackboneSpec) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True)


class InferenceCache:
    """Loaded backbones, tuned methods and zero-shot classifiers, placed on ``device``."""

    def __init__(self, size: int, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.backbones: LRUCache[Any] = LRUCache(size)
        self.methods: LRUCache[Any] = LRUCache(size)
        self.classifiers: LRUCache[Any] = LRUCache(size)

    def backbone(self, spec: BackboneSpec) -> Any:
        from models import load_backbone

        def load() -> Any:
            backbone = load_backbone(spec)
            backbone.model.to(self.device)
            return backbone

        return self.backbones.get_or_load(("backbone", _spec_key(spec)), load)

    def tuned_method(self, *, model_id: str, sha256: str, checkpoint_path: str, spec: BackboneSpec) -> Any:
        """A tuned method from its checkpoint, on the cached backbone.

        The checkpoint is verified first (sha256, then its header and metadata), both cheap, and only then
        is the backbone loaded: a tampered or torn file never costs a backbone load.
        """
        from models import load_checkpoint, read_checkpoint_metadata, verify_sha256

        def load() -> Any:
            verify_sha256(checkpoint_path, sha256)
            read_checkpoint_metadata(checkpoint_path)
            backbone = self.backbone(spec)
            # load_checkpoint hashes the file again: it may have changed since the check above.
            method = load_checkpoint(checkpoint_path, backbone=backbone, expected_sha256=sha256)
            method.to(self.device)
            method.eval()
            return method

        return self.methods.get_or_load(("method", model_id, sha256), load)

    def zero_shot_features(
        self,
        *,
        tenant_id: str,
        store: TextFeatureStore,
        spec: BackboneSpec,
        classes: Sequence[str],
        templates: Sequence[str] | None,
        method: Any = None,
        prompts_sha256: str | None = None,
    ) -> tuple[Any, TextFeatureEntry]:
        """A zero-shot classifier with its text features in place, and where they came from.

        Cached per tenant (like the store: a cache hit never reveals another tenant's class names). On a
        miss the tenant's stored text features are read from ``store``, else computed and stored.
        ``prompts_sha256`` (the checkpoint's sha256) names the prompts of ``method``; it is required with one.
        """
        from models import ZeroShotClassifier

        if method is not None and not prompts_sha256:
            raise ValueError("a method's prompts are named by prompts_sha256")
        names, ensemble = tuple(classes), tuple(templates or ())
        key = ("zero-shot", tenant_id, _spec_key(spec), names, ensemble, prompts_sha256)
        loaded = False

        def load() -> tuple[Any, TextFeatureEntry]:
            nonlocal loaded
            loaded = True
            backbone = self.backbone(spec)
            classifier = ZeroShotClassifier(
                backbone, list(names), templates=list(ensemble) or None, method=method
            )
            return classifier, store.attach(classifier, tenant_id=tenant_id, prompts_sha256=prompts_sha256)

        started = time.perf_counter()
        classifier, entry = self.classifiers.get_or_load(key, load)
        if not loaded:  # this process had them already
            entry = dataclasses.replace(entry, cached=True, seconds=time.perf_counter() - started)
        return classifier, entry


def images_to_batch(images: Sequence[Image.Image], backbone: Any) -> torch.Tensor:
    return torch.stack([backbone.transform(image) for image in images])
