"""The demo's backbones: the zoo's pretrained ones (built once, cached) and seeded random-init ones.

``ensure_zoo`` builds (or reuses from ``zoo_dir``) Promptune's own pretrained backbones with
:func:`models.zoo.build.build_zoo` (profile ``demo`` for the demo, ``quick`` for the tests) and returns
the registry JSON the service reads as ``PROMPTUNE_BACKBONES_FILE``; a zoo built in ``data_dir/zoo``
(``app.core.catalogue.zoo_dir``) is also found by a plain ``promptune serve`` (docs/backbones.md). The demo and the tests that claim
learning use them.

``ensure_demo_backbones`` writes ``demo-vit`` and ``demo-clip``: tiny architectures with RANDOM weights,
instant to make, for tests that need a backbone but claim nothing about learning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Small enough to train in well under a minute on 2 CPU cores (digits are 32 px, 16 patches).
DEMO_VIT = {
    "family": "timm",
    "arch": "vit_tiny_patch16_224",
    "kind": "supervised",
    "model_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2},
}
DEMO_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
RANDOM_VERSION = 1  # bump to rebuild the random-init backbones

DEMO_ZOO_PROFILE = "demo"
# The demo's SPT backbone and its zero-shot CLIP (docs/zoo.md: the zoo's tiny pretrained models).
DEMO_ZOO_VIT = "zoo-vit-mae-tiny"
DEMO_ZOO_CLIP = "zoo-clip-tiny"


# ---- the zoo's pretrained backbones ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ZooBuild:
    registry: Path  # the backbones JSON (every valid build in the folder)
    seconds: float  # wall time of the whole call (training, saving, verification, or only the cache checks)
    built: dict[str, float]  # name -> training seconds, for the backbones trained by this call
    cached: list[str]  # names reused from the folder


def ensure_zoo(
    zoo_dir: Path,
    names: Sequence[str],
    *,
    profile: str = DEMO_ZOO_PROFILE,
    log: Callable[[str], None] | None = None,
) -> ZooBuild:
    """Build ``names`` with ``profile`` into ``zoo_dir`` unless a matching build is cached there.

    The CLIP's zero-shot evaluation is skipped (the demo measures its own). CPU-only machines train on
    the CPU; a CUDA device is used when present (the device is not part of the recipe hash).
    """
    from app.core.catalogue import ZOO_REGISTRY_NAME  # where the service looks for a zoo's registry
    from models.zoo.build import build_zoo

    started = time.monotonic()
    registry = (zoo_dir / ZOO_REGISTRY_NAME).resolve()
    result = build_zoo(
        zoo_dir, profile=profile, only=list(names), evaluate=False, log=log, registry_path=registry
    )
    built = {n: float(result["manifests"][n]["train_seconds"]) for n in result["built"]}
    return ZooBuild(
        registry=registry,
        seconds=time.monotonic() - started,
        built=built,
        cached=list(result["cached"]),
    )


# ---- random-init backbones (tests that claim nothing about learning) --------------------------------
def ensure_demo_backbones(zoo_dir: Path) -> Path:
    """Write ``demo-vit`` and ``demo-clip`` (seeded random init) and their registry; reuse if intact."""
    from app.core.catalogue import ZOO_REGISTRY_NAME
    from models import sha256_file

    zoo_dir = zoo_dir.resolve()
    registry_path, version_path = zoo_dir / ZOO_REGISTRY_NAME, zoo_dir / "zoo-version"
    with contextlib.suppress(OSError, ValueError, KeyError):
        if version_path.read_text().strip() == str(RANDOM_VERSION):
            registry = json.loads(registry_path.read_text())
            vit, clip = registry["demo-vit"], registry["demo-clip"]
            clip_weights = Path(clip["weights"].removeprefix("local-dir:")) / "open_clip_model.safetensors"
            if sha256_file(vit["weights"]) == vit["sha256"] and sha256_file(clip_weights) == clip["sha256"]:
                return registry_path
    registry = build_demo_backbones(zoo_dir)
    zoo_dir.mkdir(parents=True, exist_ok=True)
    registry_path.write_text(json.dumps(registry, indent=2, sort_keys=True))
    version_path.write_text(str(RANDOM_VERSION))
    return registry_path


def build_demo_backbones(zoo_dir: Path) -> dict[str, Any]:
    """Seeded random-init backbones written with the models library's save helpers (sha256 recorded)."""
    import torch

    from models import BackboneSpec, load_backbone, save_clip_local_dir, save_timm_weights

    torch.manual_seed(0)
    vit = load_backbone(BackboneSpec.from_dict({**DEMO_VIT, "weights": "random"}))
    vit_path = zoo_dir / "demo-vit.safetensors"
    vit_sha = save_timm_weights(vit.model, vit_path)
    torch.manual_seed(0)
    clip_spec = {"family": "open_clip", "arch": "promptune-demo-clip", "kind": "clip"}
    clip = load_backbone(
        BackboneSpec.from_dict({**clip_spec, "weights": "random", "model_config": DEMO_CLIP_CONFIG})
    )
    clip_sha = save_clip_local_dir(clip.model, DEMO_CLIP_CONFIG, zoo_dir / "demo-clip")
    return {
        "demo-vit": {**DEMO_VIT, "weights": str(vit_path), "sha256": vit_sha},
        "demo-clip": {**clip_spec, "weights": f"local-dir:{zoo_dir / 'demo-clip'}", "sha256": clip_sha},
    }
