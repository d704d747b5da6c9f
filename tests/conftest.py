"""Test-wide settings. Offline hub behaviour must be set before open_clip/timm are imported."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from tests.zoo_fixture import zoo_registry  # noqa: E402, F401 - session fixture: zoo weights for learning tests
