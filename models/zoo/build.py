"""Build the zoo: named backbones pretrained on the world, cached on disk, listed in a registry JSON.

``build_zoo(out_dir, profile="quick" | "full", only=None)`` trains each named recipe unless a cached copy
with the same recipe hash (config + profile budget + world version) and a matching sha256 is already in
``out_dir``, then (re)writes ``out_dir/backbones.json``: ``{name: BackboneSpec dict}`` for every backbone
built there, which the service reads as ``settings.backbones_file``.

Layout::

    out_dir/backbones.json
    out_dir/zoo-clip-tiny/open_clip_config.json, open_clip_model.safetensors, manifest.json
    out_dir/zoo-vit-sup-tiny/model.safetensors, manifest.json
    out_dir/zoo-vit-mae-tiny/model.safetensors, manifest.json

``manifest.json`` records the recipe, its hash, the spec, the sha256, steps / seconds / images seen, the
loss curve, versions, and for the CLIP its zero-shot accuracy on held-out world tasks next to a random-init
CLIP of the same architecture.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from ..backbones.spec import BackboneSpec
from ..backbones.weights import sha256_file
from ..errors import ConfigError
from ..fileio import atomic_write_text
from .pretrain_clip import ClipPretrainConfig, pretrain_clip, save_clip
from .pretrain_vit import VitPretrainConfig, pretrain_vit, save_vit
from .training import resolve_device
from .verify import EVAL_TASK_SEED as EVAL_TASK_SEED  # the checks stay importable from here
from .verify import evaluate_clip_zero_shot, verify_with_loader
from .verify import open_clip_tokenize as open_clip_tokenize
from .world import WORLD_VERSION

ZOO_VERSION = 1  # bump when a recipe's code path changes what it produces
PROFILES = ("quick", "demo", "full", "gpu")
REGISTRY_NAME = "backbones.json"
MANIFEST_NAME = "manifest.json"

# Per profile: overrides of the pretraining config. "quick" proves the pipeline in about a minute on two
# CPU cores (its weights are barely trained: fine for the demo and CI, not for claims); "full" is sized
# for roughly 20 minutes per model on the same two idle cores (step budgets, so the weights are
# reproducible). The full step counts come from 5-step timings on a shared machine (docs/zoo.md):
# time the first full run and adjust here if it is far from 20 minutes.
_CLIP_PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"max_steps": 12, "batch_size": 64, "warmup_steps": 3, "log_every": 4},
    "demo": {"max_steps": 150, "batch_size": 64, "warmup_steps": 15, "log_every": 25},
    "full": {"max_steps": 900, "batch_size": 128, "warmup_steps": 50, "log_every": 25},
    "gpu": {"max_steps": 8000, "batch_size": 256, "warmup_steps": 300, "log_every": 250, "lr": 1e-3},
}
_VIT_PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"max_steps": 12, "batch_size": 64, "warmup_steps": 3, "log_every": 4},
    "demo": {"max_steps": 150, "batch_size": 64, "warmup_steps": 15, "log_every": 25},
    "full": {"max_steps": 1400, "batch_size": 128, "warmup_steps": 70, "log_every": 50},
    "gpu": {"max_steps": 6000, "batch_size": 256, "warmup_steps": 300, "log_every": 250},
}
_MAE_PROFILES: dict[str, dict[str, Any]] = {
    "quick": {"max_steps": 12, "batch_size": 64, "warmup_steps": 3, "log_every": 4},
    "demo": {"max_steps": 150, "batch_size": 64, "warmup_steps": 15, "log_every": 25},
    "full": {"max_steps": 1200, "batch_size": 256, "warmup_steps": 60, "log_every": 50, "lr": 1.5e-3},
    "gpu": {"max_steps": 8000, "batch_size": 256, "warmup_steps": 300, "log_every": 250, "lr": 1.5e-3},
}
# Zero-shot evaluation of the CLIP: test images per held-out world task.
_EVAL_TEST_SIZE = {"quick": 100, "demo": 200, "full": 500, "gpu": 500}


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    family: str  # open_clip | timm
    kind: str  # clip | supervised | mae
    config: dict[str, Any]  # base pretraining config (ClipPretrainConfig / VitPretrainConfig fields)
    profiles: dict[str, dict[str, Any]]
    description: str = ""

    def resolved_config(self, profile: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        if profile not in self.profiles:
            raise ConfigError("profile", f"must be one of {', '.join(self.profiles)}, got {profile!r}")
        return {**self.config, **self.profiles[profile], **(overrides or {})}

    def recipe_hash(self, profile: str, overrides: dict[str, Any] | None = None) -> str:
        """Everything that decides the weights (not the device, the log cadence or the machine)."""
        cfg = {
            k: v
            for k, v in self.resolved_config(profile, overrides).items()
            if k not in ("device", "log_every", "data_workers")
        }
        blob = {
            "name": self.name,
            "family": self.family,
            "kind": self.kind,
            "config": cfg,
            "world_version": WORLD_VERSION,
            "zoo_version": ZOO_VERSION,
        }
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


RECIPES: dict[str, Recipe] = {
    "zoo-clip-tiny": Recipe(
        name="zoo-clip-tiny",
        family="open_clip",
        kind="clip",
        config=ClipPretrainConfig(arch="zoo-clip-tiny").to_dict(),
        profiles=_CLIP_PROFILES,
        description="open_clip ViT CLIP, 32 px patch 4, vision 4x192, text 4x128, contrastive on world captions",
    ),
    "zoo-vit-sup-tiny": Recipe(
        name="zoo-vit-sup-tiny",
        family="timm",
        kind="supervised",
        config=VitPretrainConfig(mode="supervised").to_dict(),
        profiles=_VIT_PROFILES,
        description="timm ViT 32 px patch 4, 4x192, supervised on world attributes + digits (train split)",
    ),
    "zoo-vit-mae-tiny": Recipe(
        name="zoo-vit-mae-tiny",
        family="timm",
        kind="mae",
        config=VitPretrainConfig(mode="mae").to_dict(),
        profiles=_MAE_PROFILES,
        description="timm ViT 32 px patch 4, 4x192, MAE (mask 0.75) on world images + digits (train split)",
    ),
}


def weights_path(out_dir: Path, recipe: Recipe) -> Path:
    folder = out_dir / recipe.name
    return folder / ("open_clip_model.safetensors" if recipe.family == "open_clip" else "model.safetensors")


def backbone_spec(recipe: Recipe, out_dir: Path, sha256: str, config: dict[str, Any]) -> BackboneSpec:
    """The registry entry: absolute paths, the weights' sha256, and the architecture to rebuild."""
    folder = (out_dir / recipe.name).resolve()
    if recipe.family == "open_clip":
        clip_cfg = ClipPretrainConfig.from_dict(config)
        return BackboneSpec(
            family="open_clip", arch=clip_cfg.arch, weights=f"local-dir:{folder}", kind="clip",
            sha256=sha256, name=recipe.name, model_config=clip_cfg.model_config(),
        )  # fmt: skip
    vit_cfg = VitPretrainConfig.from_dict(config)
    return BackboneSpec(
        family="timm", arch=vit_cfg.arch, weights=str(weights_path(out_dir, recipe).resolve()),
        kind=recipe.kind, sha256=sha256, name=recipe.name, model_kwargs=vit_cfg.model_kwargs(),
    )  # fmt: skip


def read_manifest(out_dir: Path, name: str) -> dict[str, Any] | None:
    path = out_dir / name / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def cached(out_dir: Path, recipe: Recipe, recipe_hash: str) -> dict[str, Any] | None:
    """The manifest of a usable cached build (same recipe hash, weights present, sha256 matching)."""
    manifest = read_manifest(out_dir, recipe.name)
    if manifest is None or manifest.get("recipe_hash") != recipe_hash:
        return None
    weights = weights_path(out_dir, recipe)
    if not weights.is_file() or sha256_file(weights) != manifest.get("sha256"):
        return None
    return manifest


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _versions() -> dict[str, str]:
    import numpy
    import open_clip
    import timm

    return {
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def _pretrain_and_save(
    recipe: Recipe, out_dir: Path, config: dict[str, Any], log: Callable[[str], None] | None
) -> tuple[Any, str]:
    """Pretrain ``recipe`` and write its weights; returns (the pretraining result, the weights' sha256)."""
    result: Any
    if recipe.family == "open_clip":
        result = pretrain_clip(config, log=log)
        _, sha = save_clip(result.model, result.model_config, out_dir / recipe.name)
    else:
        result = pretrain_vit(config, log=log)
        _, sha = save_vit(result.model, weights_path(out_dir, recipe))
    return result, sha


def _training_manifest(
    recipe: Recipe,
    profile: str,
    overrides: dict[str, Any] | None,
    *,
    config: dict[str, Any],
    spec: BackboneSpec,
    result: Any,
    started: float,
) -> dict[str, Any]:
    """The manifest's record of what was trained, how, for how long and with which versions."""
    return {
        "name": recipe.name,
        "description": recipe.description,
        "profile": profile,
        "recipe_hash": recipe.recipe_hash(profile, overrides),
        "config": config,
        "spec": spec.to_dict(),
        "sha256": spec.sha256,
        "steps": result.steps,
        "train_seconds": round(result.seconds, 2),
        "images_seen": result.images_seen,
        "final_loss": result.history[-1]["loss"] if result.history else None,
        "history": result.history,
        "versions": _versions(),
        "device": str(resolve_device(str(config.get("device", "auto")))),
        "torch_threads": torch.get_num_threads(),
        "world_version": WORLD_VERSION,
        "zoo_version": ZOO_VERSION,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
    }


def _loader_check(spec: BackboneSpec, model: Any, image_size: int) -> dict[str, Any]:
    try:
        return verify_with_loader(spec, model, image_size)
    except ImportError as exc:  # the loader is part of the library; only a broken install lacks it
        return {"error": f"backbone loader unavailable: {exc}"}


def _clip_zero_shot(
    recipe: Recipe, result: Any, image_size: int, profile: str, log: Callable[[str], None] | None
) -> dict[str, Any]:
    """The manifest's ``zero_shot`` table and ``zero_shot_seconds``, logged per task."""
    t0 = time.perf_counter()
    zero_shot = evaluate_clip_zero_shot(
        result.model, result.tokenizer, result.model_config, arch=result.config.arch,
        image_size=image_size, test_size=_EVAL_TEST_SIZE[profile],
    )  # fmt: skip
    seconds = round(time.perf_counter() - t0, 2)
    if log is not None:
        for task, row in zero_shot.items():
            log(
                f"[{recipe.name}] zero-shot {task:<12} pretrained {row['pretrained']:.3f} "
                f"random-init {row['random_init']:.3f} chance {row['chance']:.3f}"
            )
    return {"zero_shot": zero_shot, "zero_shot_seconds": seconds}


def build_one(
    recipe: Recipe,
    out_dir: Path,
    profile: str,
    *,
    overrides: dict[str, Any] | None = None,
    evaluate: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Train, save, verify and (CLIP) evaluate one recipe; returns its manifest."""
    config = recipe.resolved_config(profile, overrides)
    folder = out_dir / recipe.name
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    result, sha = _pretrain_and_save(recipe, out_dir, config, log)
    image_size = result.config.image_size
    spec = backbone_spec(recipe, out_dir, sha, config)
    manifest = _training_manifest(
        recipe, profile, overrides, config=config, spec=spec, result=result, started=started
    )
    manifest["verified"] = _loader_check(spec, result.model, image_size)
    if recipe.family == "open_clip" and evaluate:
        manifest.update(_clip_zero_shot(recipe, result, image_size, profile, log))
    _write_json(folder / MANIFEST_NAME, manifest)
    return manifest


def write_registry(out_dir: Path, path: Path | None = None) -> dict[str, dict[str, Any]]:
    """``{name: spec dict}`` for every valid build in ``out_dir`` (any recipe name), written atomically."""
    registry: dict[str, dict[str, Any]] = {}
    for name, recipe in RECIPES.items():
        manifest = read_manifest(out_dir, name)
        if manifest is None:
            continue
        weights = weights_path(out_dir, recipe)
        if not weights.is_file() or sha256_file(weights) != manifest.get("sha256"):
            continue
        registry[name] = BackboneSpec.from_dict(manifest["spec"]).to_dict()
    target = path or out_dir / REGISTRY_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    _write_json(target, registry)
    return registry


def build_zoo(
    out_dir: str | Path,
    profile: str = "quick",
    only: Iterable[str] | None = None,
    *,
    force: bool = False,
    device: str = "auto",
    overrides: dict[str, dict[str, Any]] | None = None,
    evaluate: bool = True,
    registry_path: str | Path | None = None,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Build (or reuse) the named backbones and write the registry.

    Args:
        out_dir: where the weights, manifests and ``backbones.json`` go.
        profile: ``quick`` (about a minute for all three on two cores) or ``full`` (~20 min each).
        only: recipe names to build (default: all of :data:`RECIPES`).
        force: rebuild even when a matching cached build exists.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``. Not part of the recipe hash.
        overrides: per recipe name, config fields to override (they change the recipe hash).
        evaluate: run the CLIP zero-shot evaluation after training.
        registry_path: where to write the registry (default ``out_dir/backbones.json``).

    Returns:
        ``{"registry": {...}, "built": [names], "cached": [names], "manifests": {name: manifest}}``.
    """
    if profile not in PROFILES:
        raise ConfigError("profile", f"must be one of {', '.join(PROFILES)}, got {profile!r}")
    names = list(only) if only else list(RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise ConfigError("only", f"unknown backbone(s) {unknown} (known: {', '.join(RECIPES)})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    built, reused, manifests = [], [], {}
    for name in names:
        recipe = RECIPES[name]
        extra = dict((overrides or {}).get(name, {}))
        digest = recipe.recipe_hash(profile, extra)
        manifest = None if force else cached(out, recipe, digest)
        if manifest is not None:
            if log is not None:
                log(
                    f"[zoo] {name}: cached ({profile}, recipe {digest[:12]}, sha256 {manifest['sha256'][:12]})"
                )
            reused.append(name)
        else:
            if log is not None:
                log(f"[zoo] {name}: building ({profile}, recipe {digest[:12]})")
            # The device is not part of the recipe hash (see Recipe.recipe_hash).
            manifest = build_one(recipe, out, profile, overrides={**extra, "device": device}, evaluate=evaluate,
                                 log=log)  # fmt: skip
            built.append(name)
        manifests[name] = manifest
    registry = write_registry(out, Path(registry_path) if registry_path else None)
    return {"registry": registry, "built": built, "cached": reused, "manifests": manifests}
