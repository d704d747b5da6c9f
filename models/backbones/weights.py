"""Reading weight files safely and hashing them.

security: nothing here unpickles arbitrary objects. ``.safetensors`` is read with safetensors;
legacy ``.pt/.pth/.bin`` files go through ``torch.load(weights_only=True)`` and a failure is an
error, never a fallback to unsafe loading (timm's ``_torch_load`` policy).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import CheckpointError, WeightsIntegrityError, WeightsNotFoundError

_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, streamed in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str | None) -> str:
    """Return the file's sha256; raise ``WeightsIntegrityError`` if ``expected`` is given and differs."""
    actual = sha256_file(path)
    if expected is not None and actual != expected.lower():
        raise WeightsIntegrityError(f"sha256 of {path} is {actual}, expected {expected.lower()}")
    return actual


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a flat tensor state dict from ``.safetensors`` or (weights-only) torch pickles."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not a plain tensor file"
        raise CheckpointError(
            f"{path} is not a weights-only torch file ({type(exc).__name__}); convert it to safetensors"
        ) from exc
    # Common wrappers: {"state_dict": ...} (timm/lightning), {"model": ...} (MAE, MoCo v3).
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a flat dict of tensors")
    return obj
