"""Zoo weights for the tests that claim learning: Promptune's own pretrained backbones, built once.

``zoo_registry`` (session scope) builds the zoo's ``quick`` profile for the backbones the tests use
(``zoo-vit-mae-tiny`` only: build only what is used) into a cache folder, reused across sessions when
the recipe hash and the weights' sha256 still match (models/zoo/build.py), and returns its registry.
The folder is ``$PROMPTUNE_TEST_ZOO_DIR`` or the git-ignored ``.cache/zoo`` of the checkout; a file
lock lets two test sessions share it. Tests that need a backbone but claim nothing about learning keep
the instant random-init ``demo-vit`` / ``demo-clip`` (devstack/backbones.py).
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any

import pytest

ZOO_TEST_PROFILE = "quick"
# The MAE ViT, as in the demo: at the quick profile the supervised ViT's CLS token is nearly constant
# across digit images (SPT on it stayed at chance), while the MAE's mean-pooled tokens carry the digit.
ZOO_TEST_BACKBONES = ("zoo-vit-mae-tiny",)
_DEFAULT_DIR = Path(__file__).resolve().parents[1] / ".cache" / "zoo"


def zoo_cache_dir() -> Path:
    return Path(os.environ.get("PROMPTUNE_TEST_ZOO_DIR") or _DEFAULT_DIR).resolve()


def build_test_zoo(folder: Path) -> Path:
    """Build (or reuse) the test backbones in ``folder`` under an exclusive lock; returns the registry."""
    from devstack.backbones import ensure_zoo

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return ensure_zoo(folder, ZOO_TEST_BACKBONES, profile=ZOO_TEST_PROFILE, log=None).registry


def merge_registries(target: Path, *sources: Path) -> Path:
    """Write one registry JSON holding every backbone of ``sources`` (a later file wins on a name)."""
    merged: dict[str, Any] = {}
    for source in sources:
        merged.update(json.loads(source.read_text(encoding="utf-8")))
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(merged, indent=2, sort_keys=True), encoding="utf-8")
    tmp.replace(target)  # the service re-reads the registry when the file changes
    return target


@pytest.fixture(scope="session")
def zoo_registry() -> Path:
    """The registry JSON of the test zoo (``zoo-vit-mae-tiny``, quick profile), built at most once."""
    return build_test_zoo(zoo_cache_dir())
