"""Tuned-model checkpoints: ONE safetensors file, self-describing, never unpickled.

A checkpoint holds the method's learned tensors (prompts, heads) and, in the safetensors header's
``__metadata__["promptune"]``, a JSON document describing how to rebuild the model around them
(method, its config, backbone spec and weights sha256, class names, preprocessing, metrics, the
data split used, library version; peft's self-describing ``save_pretrained`` is the model).

security: loading parses and bounds the header ourselves (file size, header size, tensor count,
dtype/shape/offset consistency) and checks the tensor names, shapes and dtypes against the
method's schema BEFORE any tensor is materialised; a pickle (``.pt``) is rejected as "not
safetensors" and never handed to ``torch.load``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import math
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from .backbones.weights import sha256_file
from .errors import CheckpointError, ConfigError, WeightsIntegrityError
from .fileio import atomic_write_bytes

if TYPE_CHECKING:
    from .backbones.spec import Backbone
    from .base import PromptMethod

FORMAT_VERSION = 1
METADATA_KEY = "promptune"
MAX_CHECKPOINT_BYTES = 2 << 30  # learned prompts + heads are megabytes; refuse anything absurd
MAX_HEADER_BYTES = 64 << 20  # safetensors itself allows 100 MB
MAX_TENSORS = 4096
REQUIRED_KEYS = ("format_version", "method", "method_config", "backbone", "class_names", "preprocessing")
OPTIONAL_KEYS = (
    "train_config",
    "backbone_weights_sha256",
    "metrics",
    "split",
    "library_version",
    "extra",
    "method_metadata",
)
_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
}
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


# ---- small I/O helpers (shared with the engine's resume state) ----------------------------------
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


sha256_path = sha256_file  # one streamed file hash for weights, checkpoints and resume states


# ---- header parsing ------------------------------------------------------------------------
def _read_header(path: Path, max_bytes: int) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Parse and bound-check a safetensors header without touching tensor data.

    Returns ``(tensors, metadata)`` where ``tensors`` maps name -> {dtype, shape, data_offsets}.
    """
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    if size > max_bytes:
        raise CheckpointError(f"{path}: {size} bytes exceeds the {max_bytes}-byte limit for checkpoints")
    if size < 8:
        raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n < 2 or n > MAX_HEADER_BYTES or 8 + n > size:
            raise CheckpointError(f"{path}: not a safetensors file (header length {n}, file size {size})")
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a safetensors file (header is not JSON: {exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: __metadata__ must map strings to strings")
    if len(header) > MAX_TENSORS:
        raise CheckpointError(f"{path}: {len(header)} tensors exceeds the limit of {MAX_TENSORS}")
    data_len = size - 8 - n
    spans = []
    for name, info in header.items():
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            ok = (
                dtype in _DTYPE_BYTES
                and isinstance(shape, list)
                and all(isinstance(d, int) and d >= 0 for d in shape)
                and isinstance(begin, int)
                and isinstance(end, int)
                and 0 <= begin <= end <= data_len
                and end - begin == math.prod(shape) * _DTYPE_BYTES[dtype]
            )
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise CheckpointError(f"{path}: malformed header entry for tensor {name!r}")
        spans.append((begin, end))
    spans.sort()
    covered = 0
    for begin, end in spans:
        if begin != covered:
            raise CheckpointError(f"{path}: tensor data is not contiguous (gap or overlap at byte {begin})")
        covered = end
    if covered != data_len:
        raise CheckpointError(
            f"{path}: truncated or padded file ({data_len} data bytes, header covers {covered})"
        )
    return header, metadata


def _parse_metadata(path: Path, metadata: Mapping[str, str]) -> dict[str, Any]:
    if METADATA_KEY not in metadata:
        raise CheckpointError(f"{path}: not a Promptune checkpoint (no '{METADATA_KEY}' metadata)")
    try:
        meta = json.loads(metadata[METADATA_KEY])
    except ValueError as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: checkpoint metadata must be a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: checkpoint metadata lacks {', '.join(missing)}")
    if meta["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format_version {meta['format_version']!r}")
    if not isinstance(meta["method"], str) or not isinstance(meta["method_config"], dict):
        raise CheckpointError(f"{path}: 'method' must be a string and 'method_config' an object")
    if not isinstance(meta["backbone"], dict):
        raise CheckpointError(f"{path}: 'backbone' must be a BackboneSpec object")
    names = meta["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(c, str) for c in names):
        raise CheckpointError(f"{path}: 'class_names' must be a non-empty list of strings")
    for key in OPTIONAL_KEYS:
        meta.setdefault(key, None)
    return meta


def read_checkpoint_metadata(path: str | Path, *, max_bytes: int = MAX_CHECKPOINT_BYTES) -> dict[str, Any]:
    """The checkpoint's JSON metadata, from the header only (no tensor is read)."""
    path = Path(path)
    _read_header(path, max_bytes)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from None
    return _parse_metadata(path, metadata)


# ---- save --------------------------------------------------------------------------------
def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _library_version() -> str:
    try:
        from importlib.metadata import version

        return version("promptune")
    except Exception:  # noqa: BLE001 - not installed (running from a checkout)
        return "0.1.0+local"


def save_checkpoint(
    method: PromptMethod,
    path: str | Path,
    *,
    train_config: Any = None,
    metrics: Mapping[str, Any] | None = None,
    split: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Write ``method``'s learned tensors and self-description to ``path``; return its sha256.

    Args:
        method: a trained :class:`~models.base.PromptMethod`.
        path: destination file (``.safetensors``); written atomically.
        train_config: the ``TrainConfig`` (or its dict) used, for provenance.
        metrics: e.g. ``{"val_acc": ..., "best_epoch": ...}``.
        split: the data split used, e.g. ``{"train": [paths], "val": [paths]}``.
        extra: any further JSON-serialisable provenance (job id, dataset id ...).
    """
    backbone = method.backbone
    if train_config is not None and hasattr(train_config, "to_dict"):
        train_config = train_config.to_dict()
    meta = {
        "format_version": FORMAT_VERSION,
        "method": method.method_name,
        "method_config": method.config.to_dict(),
        "train_config": train_config,
        "backbone": backbone.spec.to_dict(),
        "backbone_weights_sha256": backbone.weights_sha256,
        "class_names": list(method.class_names),
        "preprocessing": dataclasses.asdict(backbone.preprocessing),
        "metrics": dict(metrics) if metrics is not None else None,
        "split": dict(split) if split is not None else None,
        "library_version": _library_version(),
        "torch_version": torch.__version__,
        "extra": dict(extra) if extra is not None else None,
        "method_metadata": method.metadata(),
    }
    if not method.method_name:
        raise CheckpointError("method has no method_name: register it with models.registry.register_method")
    try:
        text = json.dumps(meta, sort_keys=True, default=_json_default, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint metadata is not JSON-serialisable: {exc}") from None
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in method.learned_state_dict().items()}
    blob = st_save(tensors, metadata={METADATA_KEY: text, "format": "pt"})
    atomic_write_bytes(path, blob)
    return sha256_bytes(blob)


# ---- load --------------------------------------------------------------------------------
def _method_entry(name: str) -> Any:
    from .registry import get_method, list_methods

    if name not in list_methods() and name.isidentifier() and name.islower():
        # Methods register on import; load their package if nobody imported it yet.
        if importlib.util.find_spec(f"models.{name}") is not None:
            importlib.import_module(f"models.{name}")
    try:
        return get_method(name)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint needs {exc.message}") from None


def _check_backbone(meta: dict[str, Any], backbone: Backbone, family: str) -> None:
    spec = meta["backbone"]
    if backbone.spec.family != family:
        raise CheckpointError(
            f"method {meta['method']!r} needs a {family} backbone, got {backbone.spec.family}"
        )
    if backbone.spec.arch != spec.get("arch"):
        raise CheckpointError(
            f"checkpoint was trained on arch {spec.get('arch')!r}, backbone is {backbone.spec.arch!r}"
        )
    want, have = meta.get("backbone_weights_sha256"), backbone.weights_sha256
    if want is not None and have is not None and want != have:
        raise CheckpointError(
            f"checkpoint was trained on backbone weights sha256 {want}, the backbone has {have}"
        )


def _materialise(path: Path, names: list[str]) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt", device="cpu") as fh:
        return {name: fh.get_tensor(name) for name in names}


def _check_file_sha256(path: Path, expected_sha256: str) -> None:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    actual = sha256_path(path)
    if actual != expected_sha256.lower():
        raise WeightsIntegrityError(f"sha256 of {path} is {actual}, expected {expected_sha256.lower()}")


def _method_config(entry: Any, meta: dict[str, Any]) -> Any:
    try:
        return entry.config_cls.from_dict(meta["method_config"])
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint method_config is invalid: {exc}") from None


def _load_stored_backbone(
    meta: dict[str, Any], load_backbone_fn: Callable[[Any], Backbone] | None
) -> Backbone:
    """The backbone the checkpoint's metadata describes, loaded by ``load_backbone_fn``."""
    from .backbones.spec import BackboneSpec

    try:
        spec = BackboneSpec.from_dict(meta["backbone"])
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint backbone spec is invalid: {exc}") from None
    if load_backbone_fn is None:
        from .backbones.loader import load_backbone

        load_backbone_fn = load_backbone
    return load_backbone_fn(spec)


def _check_tensor_schema(path: Path, method_name: str, expected: Mapping[str, tuple[int, ...]]) -> None:
    """The file's tensor names, shapes and dtypes against the rebuilt method's, from the header only."""
    with safe_open(str(path), framework="pt", device="cpu") as fh:
        found = {
            name: (tuple(fh.get_slice(name).get_shape()), fh.get_slice(name).get_dtype())
            for name in fh.keys()
        }
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint tensors do not match method {method_name!r}: missing {missing}, unexpected {unexpected}"
        )
    for name, shape in expected.items():
        got_shape, got_dtype = found[name]
        if got_shape != tuple(shape):
            raise CheckpointError(f"checkpoint tensor {name}: shape {got_shape} != expected {tuple(shape)}")
        if got_dtype not in _FLOAT_DTYPES:
            raise CheckpointError(f"checkpoint tensor {name}: dtype {got_dtype} is not a floating-point type")


def load_checkpoint(
    path: str | Path,
    backbone: Backbone | None = None,
    expected_sha256: str | None = None,
    load_backbone_fn: Callable[[Any], Backbone] | None = None,
    *,
    max_bytes: int = MAX_CHECKPOINT_BYTES,
) -> PromptMethod:
    """Rebuild a tuned method from a checkpoint.

    Args:
        path: the ``.safetensors`` checkpoint.
        backbone: the loaded backbone to attach; ``None`` = load it from the stored spec.
        expected_sha256: if given, the file's sha256 must match (``WeightsIntegrityError``).
        load_backbone_fn: how to load the stored spec (default ``models.backbones.loader.load_backbone``).

    Raises:
        CheckpointError: not a (Promptune) safetensors file, or its tensors' names, shapes or
            dtypes do not match the method rebuilt from its metadata; checked before reading any
            tensor.
    """
    path = Path(path)
    if expected_sha256 is not None:
        _check_file_sha256(path, expected_sha256)
    meta = read_checkpoint_metadata(path, max_bytes=max_bytes)
    entry = _method_entry(meta["method"])
    config = _method_config(entry, meta)
    if backbone is None:
        backbone = _load_stored_backbone(meta, load_backbone_fn)
    _check_backbone(meta, backbone, entry.family)
    method = entry.model_cls(backbone, config, meta["class_names"])

    expected = method.learned_shapes()
    _check_tensor_schema(path, meta["method"], expected)
    method.load_learned_state_dict(_materialise(path, sorted(expected)))
    method.eval()
    return method
