"""Where an open_clip backbone's weights come from (see :mod:`.clip_loader` for every accepted source).

``resolve_weights_source(spec)`` turns ``spec.weights`` into what open_clip must build (the arch, or the
``local-dir:`` / ``hf-hub:`` name that carries its own config) and the one file whose tensors then fill
it; nothing is read beyond the configs needed to decide that.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError, WeightsNotFoundError
from .spec import BackboneSpec

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
LOCAL_CONFIG_NAME = "open_clip_config.json"
LOCAL_WEIGHTS_NAME = "open_clip_model.safetensors"  # open_clip's HF_SAFE_WEIGHTS_NAME
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def _hf_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (checked at call time, not import time)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return bool(constants.HF_HUB_OFFLINE) or env in {"1", "ON", "YES", "TRUE"}


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _hf_file(repo_id: str, filenames: list[str], looked: list[str]) -> str | None:
    """First of ``filenames`` found in ``repo_id`` (cache only when offline); records what was tried."""
    from huggingface_hub import hf_hub_download

    offline = _hf_offline()
    for filename in filenames:
        try:
            return str(
                hf_hub_download(
                    repo_id=repo_id, filename=filename, local_files_only=offline, library_name="open_clip"
                )
            )
        except Exception as exc:  # noqa: BLE001 - hub errors vary by version; each miss is recorded
            looked.append(f"hf-hub {repo_id}/{filename} (HF cache {_hf_cache_dir()}; {type(exc).__name__})")
    return None


def _hf_weight_candidates(filename: str | None) -> list[str]:
    """open_clip's preference order: the safetensors sibling first, then the named file."""
    filename = filename or "open_clip_pytorch_model.bin"
    names = []
    if filename == "open_clip_pytorch_model.bin":
        names.append(LOCAL_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        names.append(filename[:-4] + ".safetensors")
    names.append(filename)
    return names


def _resolve_tag(arch: str, tag: str) -> tuple[str, dict[str, Any]]:
    """Path of the cached weights for an open_clip pretrained tag, plus the tag's config."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        known = open_clip.list_pretrained_tags_by_model(arch)
        raise WeightsNotFoundError(
            f"open_clip has no pretrained tag {tag!r} for arch {arch!r} "
            f"(known tags: {', '.join(known) if known else 'none'}); "
            "pass a file path, 'local-dir:/path', 'hf-hub:org/repo' or 'random'"
        )
    looked: list[str] = []
    if cfg.get("hf_hub"):
        # open_clip's convention: 'org/repo/filename', or 'org/repo/' for the default file name
        repo_id, filename = os.path.split(str(cfg["hf_hub"]))
        path = _hf_file(repo_id, _hf_weight_candidates(filename or None), looked)
        if path:
            return path, cfg
    if cfg.get("url"):
        url = str(cfg["url"])
        target = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if target.is_file():
            return str(target), cfg
        looked.append(f"url cache {target}")
        if not _hf_offline():
            try:
                return str(open_clip.download_pretrained_from_url(url)), cfg
            except Exception as exc:  # noqa: BLE001
                looked.append(f"download {url} ({type(exc).__name__}: {exc})")
    mode = "offline (HF_HUB_OFFLINE=1)" if _hf_offline() else "online"
    raise WeightsNotFoundError(
        f"weights for open_clip arch {arch!r} tag {tag!r} not found, {mode}; looked in: {'; '.join(looked)}"
    )


def _read_local_config(config_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read open_clip config {config_path}: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("model_cfg", raw), dict):
        raise CheckpointError(f"{config_path} is not an open_clip config")
    model_cfg = raw.get("model_cfg", raw)
    if not all(k in model_cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise CheckpointError(f"{config_path}: model_cfg needs embed_dim, vision_cfg and text_cfg")
    return model_cfg, dict(raw.get("preprocess_cfg") or {})


def _local_dir_weights(folder: Path) -> Path:
    preferred = [
        LOCAL_WEIGHTS_NAME,
        "open_clip_pytorch_model.safetensors",
        "open_clip_pytorch_model.bin",
        "open_clip_pytorch_model.pth",
    ]
    for name in preferred:
        if (folder / name).is_file():
            return folder / name
    raise WeightsNotFoundError(f"no open_clip weights in {folder} (looked for {', '.join(preferred)})")


def _is_file_path(weights: str) -> bool:
    return weights.endswith(_WEIGHT_SUFFIXES) or "/" in weights or os.sep in weights


# ---- one stage per kind of source -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class WeightsSource:
    """What to ask open_clip to build, and the weights file (if any) whose tensors then fill it."""

    model_name: str  # spec.arch, or the 'local-dir:' / 'hf-hub:' name whose folder holds the config
    checkpoint: str | None  # None: random initialisation
    create_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


def _local_dir_source(weights: str) -> WeightsSource:
    folder = Path(weights[len(LOCAL_DIR_PREFIX) :]).expanduser()
    if not (folder / LOCAL_CONFIG_NAME).is_file():
        raise WeightsNotFoundError(f"local-dir {folder}: {LOCAL_CONFIG_NAME} not found")
    _read_local_config(folder / LOCAL_CONFIG_NAME)  # validate before open_clip reads it
    return WeightsSource(f"{LOCAL_DIR_PREFIX}{folder}", str(_local_dir_weights(folder)))


def _hf_hub_source(weights: str) -> WeightsSource:
    repo_id = weights[len(HF_HUB_PREFIX) :]
    looked: list[str] = []
    config_path = _hf_file(repo_id, [LOCAL_CONFIG_NAME], looked)
    checkpoint = _hf_file(repo_id, _hf_weight_candidates(None), looked) if config_path else None
    if not config_path or not checkpoint:
        raise WeightsNotFoundError(
            f"open_clip weights {weights!r} not found"
            f"{' (offline)' if _hf_offline() else ''}; looked in: {'; '.join(looked)}"
        )
    return WeightsSource(weights, checkpoint)


def _weights_file_source(spec: BackboneSpec) -> WeightsSource:
    path = Path(spec.weights).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file not found: {path} (arch {spec.arch!r})")
    return WeightsSource(spec.arch, str(path))


def _pretrained_tag_source(spec: BackboneSpec) -> WeightsSource:
    import open_clip

    if spec.arch not in open_clip.list_models():
        raise ConfigError("arch", f"unknown open_clip architecture {spec.arch!r}")
    checkpoint, tag_cfg = _resolve_tag(spec.arch, spec.weights)
    create_kwargs: dict[str, Any] = {}
    # A tag trained with QuickGELU must run with it: open_clip itself only warns on a mismatch,
    # which silently degrades e.g. the 'openai' weights on the plain 'ViT-B-16' config.
    model_cfg = open_clip.get_model_config(spec.arch) or {}
    if tag_cfg.get("quick_gelu", False) and not model_cfg.get("quick_gelu", False):
        create_kwargs["force_quick_gelu"] = True
    create_kwargs["force_preprocess_cfg"] = {
        k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg
    }
    return WeightsSource(spec.arch, checkpoint, create_kwargs)


def resolve_weights_source(spec: BackboneSpec) -> WeightsSource:
    """Where ``spec.weights`` points. Call it holding the loader's lock: tags read open_clip's registry.

    Raises:
        WeightsNotFoundError: the tag, hub repo, folder or file cannot be found.
        CheckpointError: a local-dir config is unreadable or not an open_clip config.
        ConfigError: a pretrained tag names an unknown architecture.
    """
    weights = spec.weights
    if weights.startswith(LOCAL_DIR_PREFIX):
        return _local_dir_source(weights)
    if weights.startswith(HF_HUB_PREFIX):
        return _hf_hub_source(weights)
    if weights == "random":
        return WeightsSource(spec.arch, None)
    if _is_file_path(weights):
        return _weights_file_source(spec)
    return _pretrained_tag_source(spec)
