"""Where and in what precision predictions run (``PROMPTUNE_INFERENCE_DEVICE`` / ``_DTYPE``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` = the first CUDA device when present, else the CPU; otherwise a torch device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@contextlib.contextmanager
def precision(device: torch.device, dtype: str) -> Iterator[None]:
    """Autocast to ``dtype`` for a forward (weights stay fp32); nothing for float32."""
    if dtype == "float32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=DTYPES[dtype]):
        yield
