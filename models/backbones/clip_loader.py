"""open_clip backbones: resolve the weights, verify them, build the model frozen.

``load_clip_backbone(spec)`` accepts every weights source ``BackboneSpec`` documents:

- an open_clip pretrained tag (``openai``, ``laion2b_s34b_b88k`` ...), resolved through the Hugging Face
  cache exactly as open_clip does (safetensors first), or open_clip's URL cache (``~/.cache/clip``) for tags
  without a hub entry. With ``HF_HUB_OFFLINE=1`` nothing touches the network: a tag that is not cached
  fails at once with :class:`~models.errors.WeightsNotFoundError` naming the arch, the tag and every place
  looked in.
- ``hf-hub:org/repo``: ``open_clip_config.json`` + the weights from that repository (same caching rules).
- ``local-dir:/path``: open_clip's folder layout (``open_clip_config.json`` + ``open_clip_model.safetensors``),
  as written by :func:`save_clip_local_dir`.
- a weights file (``.safetensors``; ``.pt``/``.pth``/``.bin`` read with ``weights_only=True``), with the
  architecture taken from ``spec.arch`` (and ``spec.model_config`` when given).
- ``random``: explicit random initialisation (tests, smoke runs).

The model is always built first without weights; the file that is then read is hashed (and checked
against ``spec.sha256``) before any tensor is loaded, and its digest is recorded on the Backbone.

security: weights are read by ``models.backbones.weights.read_state_dict`` (safetensors or weights-only
torch); nothing here unpickles arbitrary objects.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, WeightsNotFoundError
from ..fileio import atomic_path, atomic_write_text
from .spec import Backbone, BackboneSpec, Preprocessing
from .weights import read_state_dict, verify_sha256

logger = logging.getLogger(__name__)

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
LOCAL_CONFIG_NAME = "open_clip_config.json"
LOCAL_WEIGHTS_NAME = "open_clip_model.safetensors"  # open_clip's HF_SAFE_WEIGHTS_NAME
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")

# open_clip keeps its config registry in module globals; registering and building must not interleave
# between threads (the service may load two backbones at once).
_LOCK = threading.RLock()
_REGISTERED: dict[str, str] = {}  # arch -> digest of the inline config registered under it
_CONFIG_ROOT: Path | None = None


# ---- weights source resolution ----------------------------------------------------------------------
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


# ---- model building ---------------------------------------------------------------------------------
def _drop_random_init_warning(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(
        ("No pretrained weights loaded", "Local config loaded, but no CLIP")
    )


def _config_digest(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def register_model_config(arch: str, model_config: Mapping[str, Any]) -> None:
    """Make ``model_config`` buildable as ``arch`` (open_clip's ``add_model_config`` takes a path).

    Idempotent for the same config. Refuses to shadow a built-in open_clip architecture with a different
    config (that would silently change every later ``create_model(arch)`` in this process).
    """
    import open_clip

    if not all(k in model_config for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ConfigError("model_config", "needs embed_dim, vision_cfg and text_cfg")
    digest = _config_digest(model_config)
    with _LOCK:
        if _REGISTERED.get(arch) == digest:
            return
        if arch not in _REGISTERED and arch in open_clip.list_models():
            if _config_digest(open_clip.get_model_config(arch)) != digest:
                raise ConfigError(
                    "model_config",
                    f"arch {arch!r} is a built-in open_clip model; name the inline config differently",
                )
        global _CONFIG_ROOT
        if _CONFIG_ROOT is None:
            _CONFIG_ROOT = Path(tempfile.mkdtemp(prefix="promptune-open-clip-configs-"))
            # open_clip re-reads every registered folder on each rescan, so the folder must live as
            # long as the process; remove it at exit rather than leaking one per process.
            atexit.register(shutil.rmtree, _CONFIG_ROOT, True)
        folder = _CONFIG_ROOT / digest
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{arch}.json").write_text(json.dumps(dict(model_config), sort_keys=True), encoding="utf-8")
        open_clip.add_model_config(folder)  # later paths win on a name clash: the newest registration
        _REGISTERED[arch] = digest


def _load_tensors(model: nn.Module, path: str) -> None:
    """open_clip's ``load_checkpoint`` massaging, on a state dict we read safely ourselves."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    state = read_state_dict(path)
    if state and next(iter(state)).startswith("module."):
        state = {k[len("module.") :]: v for k, v in state.items()}
    state = convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        own = getattr(model, key, None)
        if key in state and isinstance(own, torch.Tensor) and own.ndim != state[key].ndim:
            state[key] = state[key].reshape(own.shape)
    if (
        "logit_bias" not in state
        and getattr(model, "logit_bias", None) is not None
        and "logit_scale" in state
    ):
        state["logit_bias"] = torch.zeros_like(state["logit_scale"])
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"weights {path} do not fit the architecture: missing {sorted(result.missing_keys)[:10]}"
            f"{'...' if len(result.missing_keys) > 10 else ''}, unexpected {sorted(result.unexpected_keys)[:10]}"
            f"{'...' if len(result.unexpected_keys) > 10 else ''}"
        )


def _preprocessing(model: nn.Module) -> tuple[Preprocessing, Any]:
    from open_clip import get_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = dict(get_model_preprocess_cfg(model))
    pp = PreprocessCfg(**{k: v for k, v in cfg.items() if k in PreprocessCfg.__dataclass_fields__})
    size = pp.size if isinstance(pp.size, int) else tuple(pp.size)
    if isinstance(size, tuple):
        if len(set(size)) != 1:
            raise ConfigError("arch", f"non-square image size {size} is not supported")
        size = int(size[0])
    mean = tuple(float(m) for m in pp.mean)
    std = tuple(float(s) for s in pp.std)
    preprocessing = Preprocessing(
        image_size=int(size),
        mean=(mean[0], mean[1], mean[2]),
        std=(std[0], std[1], std[2]),
        resize_mode=str(pp.resize_mode),
        interpolation=str(pp.interpolation),
    )
    return preprocessing, image_transform_v2(pp, is_train=False)


def load_clip_backbone(spec: BackboneSpec) -> Backbone:
    """Build a frozen open_clip model (eval mode, no parameter requires grad) with its preprocessing.

    Raises:
        WeightsNotFoundError: the weights (tag, hub repo, folder or file) cannot be found.
        WeightsIntegrityError: ``spec.sha256`` is set and the weights file differs.
        CheckpointError: the file is not a weights-only tensor file, or does not fit the architecture.
        ConfigError: the spec is not an open_clip spec or the architecture is unknown.
    """
    import open_clip

    if spec.family != "open_clip":
        raise ConfigError("family", f"load_clip_backbone needs family 'open_clip', got {spec.family!r}")
    weights = spec.weights
    checkpoint: str | None = None
    model_name = spec.arch
    create_kwargs: dict[str, Any] = {}

    with _LOCK:
        if spec.model_config is not None:
            register_model_config(spec.arch, spec.model_config)

        if weights.startswith(LOCAL_DIR_PREFIX):
            folder = Path(weights[len(LOCAL_DIR_PREFIX) :]).expanduser()
            if not (folder / LOCAL_CONFIG_NAME).is_file():
                raise WeightsNotFoundError(f"local-dir {folder}: {LOCAL_CONFIG_NAME} not found")
            _read_local_config(folder / LOCAL_CONFIG_NAME)  # validate before open_clip reads it
            checkpoint = str(_local_dir_weights(folder))
            model_name = f"{LOCAL_DIR_PREFIX}{folder}"
        elif weights.startswith(HF_HUB_PREFIX):
            repo_id = weights[len(HF_HUB_PREFIX) :]
            looked: list[str] = []
            config_path = _hf_file(repo_id, [LOCAL_CONFIG_NAME], looked)
            checkpoint = _hf_file(repo_id, _hf_weight_candidates(None), looked) if config_path else None
            if not config_path or not checkpoint:
                raise WeightsNotFoundError(
                    f"open_clip weights {weights!r} not found"
                    f"{' (offline)' if _hf_offline() else ''}; looked in: {'; '.join(looked)}"
                )
            model_name = weights
        elif weights == "random":
            checkpoint = None
        elif _is_file_path(weights):
            path = Path(weights).expanduser()
            if not path.is_file():
                raise WeightsNotFoundError(f"weights file not found: {path} (arch {spec.arch!r})")
            checkpoint = str(path)
        else:
            if spec.arch not in open_clip.list_models():
                raise ConfigError("arch", f"unknown open_clip architecture {spec.arch!r}")
            checkpoint, tag_cfg = _resolve_tag(spec.arch, weights)
            # A tag trained with QuickGELU must run with it: open_clip itself only warns on a mismatch,
            # which silently degrades e.g. the 'openai' weights on the plain 'ViT-B-16' config.
            model_cfg = open_clip.get_model_config(spec.arch) or {}
            if tag_cfg.get("quick_gelu", False) and not model_cfg.get("quick_gelu", False):
                create_kwargs["force_quick_gelu"] = True
            create_kwargs["force_preprocess_cfg"] = {
                k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg
            }

        if model_name == spec.arch and spec.arch not in open_clip.list_models():
            raise ConfigError(
                "arch", f"unknown open_clip architecture {spec.arch!r} (give model_config to define it)"
            )

        sha = verify_sha256(checkpoint, spec.sha256) if checkpoint else None
        if checkpoint is None and spec.sha256 is not None:
            raise ConfigError("sha256", "random weights have no file to verify; drop sha256")

        # open_clip warns "No pretrained weights loaded ... initialized randomly" on the root logger because
        # it is told not to load them: we load (and verify) them ourselves just below.
        root = logging.getLogger()
        root.addFilter(_drop_random_init_warning)
        try:
            model = open_clip.create_model(model_name, pretrained=None, load_weights=False, **create_kwargs)
        except RuntimeError as exc:
            raise ConfigError("arch", f"open_clip cannot build {model_name!r}: {exc}") from exc
        finally:
            root.removeFilter(_drop_random_init_warning)
        tokenizer = open_clip.get_tokenizer(model_name)

    if checkpoint is not None:
        _load_tensors(model, checkpoint)
    model.requires_grad_(False)
    model.eval()
    preprocessing, transform = _preprocessing(model)
    return Backbone(
        spec=spec,
        model=model,
        preprocessing=preprocessing,
        transform=transform,
        tokenizer=tokenizer,
        weights_sha256=sha,
    )


def save_clip_local_dir(model: nn.Module, model_config: Mapping[str, Any], path: str | Path) -> str:
    """Write ``model`` in open_clip's local-dir layout; returns the weights file's sha256.

    ``path/open_clip_config.json`` holds ``{"model_cfg": model_config, "preprocess_cfg": ...}`` and
    ``path/open_clip_model.safetensors`` the full state dict. Both are written atomically (temp + rename).
    Load it back with ``BackboneSpec(family="open_clip", arch=..., weights="local-dir:<path>")``.
    """
    from open_clip import get_model_preprocess_cfg
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    preprocess = {
        k: (list(v) if isinstance(v, tuple) else v) for k, v in get_model_preprocess_cfg(model).items()
    }
    config = {"model_cfg": dict(model_config), "preprocess_cfg": preprocess}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(folder / LOCAL_WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp))
    atomic_write_text(folder / LOCAL_CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True))
    return verify_sha256(folder / LOCAL_WEIGHTS_NAME, None)
