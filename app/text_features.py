"""Zero-shot text features persisted in the service's storage: computed once, read back by every process.

A classifier's text features (one text-tower pass per class and template) are named by the sha256 of the
canonical JSON of ``ZeroShotClassifier.text_feature_key()``: the backbone's weights (the weights file's
sha256; for random init the spec and a digest of the parameters), the class names, the templates and, when
a tuned model's prompts drive the classifier, that model's checkpoint sha256. They are stored under
``text-features/<tenant_id>/<sha256>.safetensors``: one float32 tensor ``text_features`` (C, d) and the
metadata ``promptune_text_features`` = JSON ``{format_version, sha256, key}``.

The key is tenant-scoped on purpose: a tenant never reads another tenant's entry, so how fast a request
answers never tells whether someone else has asked for the same class names. Reading parses the safetensors
header first (never pickle) and checks the names, the dtype, the shape (C, d) and that the metadata names
the expected key; a file that fails is logged, recomputed and overwritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from app.core.storage import Storage, StorageError, check_key
from models import DataError

log = logging.getLogger("promptune.api")

FORMAT_VERSION = 1
TENSOR_NAME = "text_features"
METADATA_NAME = "promptune_text_features"
MAX_HEADER_BYTES = 16 * 1024 * 1024  # the header holds the class names: ~200 kB for 1,000 long ones


class TextFeaturesRejected(Exception):
    """A stored file that is not the text features it is named for."""


@dataclass(frozen=True)
class TextFeatureEntry:
    """Where a classifier's text features came from: ``sha256`` names them, ``storage_key`` is their file,
    ``cached`` is False when this call ran the text tower, ``seconds`` is what the call took."""

    sha256: str
    storage_key: str
    cached: bool
    seconds: float


def text_features_key(tenant_id: str, sha256: str) -> str:
    return check_key(f"text-features/{tenant_id}/{sha256}.safetensors")


def key_sha256(key: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces, ASCII) of a text-feature key."""
    canonical = json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def encode_entry(features: torch.Tensor, key: dict[str, Any], sha256: str) -> bytes:
    """The safetensors bytes of one entry (float32, contiguous, on the CPU)."""
    metadata = {"format_version": FORMAT_VERSION, "sha256": sha256, "key": key}
    tensor = features.detach().to("cpu", torch.float32).contiguous()
    return save_safetensors({TENSOR_NAME: tensor}, metadata={METADATA_NAME: json.dumps(metadata)})


def _header(data: bytes) -> dict[str, Any]:
    if len(data) < 8:
        raise TextFeaturesRejected("shorter than a safetensors header")
    size = int.from_bytes(data[:8], "little")
    if size > min(MAX_HEADER_BYTES, len(data) - 8):
        raise TextFeaturesRejected("header size out of bounds")
    header = json.loads(data[8 : 8 + size])
    if not isinstance(header, dict):
        raise TextFeaturesRejected("header is not an object")
    return header


def decode_entry(data: bytes, *, sha256: str, num_classes: int) -> torch.Tensor:
    """The (C, d) float32 tensor of an entry, after checking its header; raises TextFeaturesRejected."""
    try:
        header = _header(data)
        metadata = json.loads((header.get("__metadata__") or {}).get(METADATA_NAME, "null"))
    except (ValueError, AttributeError) as exc:  # JSONDecodeError is a ValueError
        raise TextFeaturesRejected(f"unreadable header: {exc}") from None
    if not isinstance(metadata, dict) or metadata.get("format_version") != FORMAT_VERSION:
        raise TextFeaturesRejected("not a text-features file of this format")
    key = metadata.get("key")
    if metadata.get("sha256") != sha256 or not isinstance(key, dict) or key_sha256(key) != sha256:
        raise TextFeaturesRejected("its metadata names other text features")
    entry = header.get(TENSOR_NAME)
    if set(header) - {"__metadata__"} != {TENSOR_NAME} or not isinstance(entry, dict):
        raise TextFeaturesRejected(f"expected exactly one tensor {TENSOR_NAME!r}")
    shape = entry.get("shape")
    if entry.get("dtype") != "F32" or not isinstance(shape, list) or len(shape) != 2:
        raise TextFeaturesRejected(f"expected a float32 matrix, got {entry.get('dtype')} {shape}")
    if shape[0] != num_classes or shape[1] < 1:
        raise TextFeaturesRejected(f"shape {shape} does not fit {num_classes} classes")
    try:
        tensor = load_safetensors(data)[TENSOR_NAME]
    except SafetensorError as exc:
        raise TextFeaturesRejected(f"invalid safetensors: {exc}") from None
    if not bool(torch.isfinite(tensor).all()):
        raise TextFeaturesRejected("non-finite values")
    return tensor


class TextFeatureStore:
    """Text features of zero-shot classifiers in ``storage``, per tenant."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def read(self, storage_key: str, *, sha256: str, num_classes: int) -> torch.Tensor | None:
        """The stored features, or None when there are none (or they failed verification: logged)."""
        try:
            data = self.storage.read_bytes(storage_key)
        except StorageError:
            return None
        try:
            return decode_entry(data, sha256=sha256, num_classes=num_classes)
        except TextFeaturesRejected as exc:
            log.warning("stored text features %s refused (recomputing): %s", storage_key, exc)
            return None

    def write(self, storage_key: str, features: torch.Tensor, key: dict[str, Any], sha256: str) -> None:
        """Store an entry; a failure is logged, not raised (the features still serve from memory)."""
        try:
            self.storage.put_bytes(storage_key, encode_entry(features, key, sha256))
        except (StorageError, OSError) as exc:
            log.warning("could not store text features %s: %s", storage_key, exc)

    def attach(
        self, classifier: Any, *, tenant_id: str, prompts_sha256: str | None = None
    ) -> TextFeatureEntry:
        """Seed ``classifier`` (a models.ZeroShotClassifier) with its text features: the tenant's stored
        entry when there is a valid one, else computed now and stored."""
        started = time.perf_counter()
        key = classifier.text_feature_key(prompts_sha256)
        sha256 = key_sha256(key)
        storage_key = text_features_key(tenant_id, sha256)
        stored = self.read(storage_key, sha256=sha256, num_classes=len(classifier.class_names))
        if stored is not None:
            try:
                classifier.set_text_features(stored)
                return TextFeatureEntry(sha256, storage_key, True, time.perf_counter() - started)
            except DataError as exc:  # another embedding width than this backbone's
                log.warning("stored text features %s refused (recomputing): %s", storage_key, exc)
        features = classifier.compute_text_features()
        classifier.set_text_features(features)
        self.write(storage_key, features, key, sha256)
        return TextFeatureEntry(sha256, storage_key, False, time.perf_counter() - started)
