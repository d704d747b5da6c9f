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
import shutil
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_path, atomic_write_text
from .clip_sources import HF_HUB_PREFIX as HF_HUB_PREFIX  # the prefixes stay importable from here
from .clip_sources import LOCAL_CONFIG_NAME, LOCAL_WEIGHTS_NAME, resolve_weights_source
from .clip_sources import LOCAL_DIR_PREFIX as LOCAL_DIR_PREFIX
from .spec import Backbone, BackboneSpec, Preprocessing
from .weights import read_state_dict, verify_sha256

logger = logging.getLogger(__name__)

# open_clip keeps its config registry in module globals; registering and building must not interleave
# between threads (the service may load two backbones at once).
_LOCK = threading.RLock()
_REGISTERED: dict[str, str] = {}  # arch -> digest of the inline config registered under it
_CONFIG_ROOT: Path | None = None


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


def _check_known_arch(spec: BackboneSpec, model_name: str) -> None:
    """A bare arch name must be open_clip's own or registered (local-dir and hf-hub carry a config)."""
    import open_clip

    if model_name == spec.arch and spec.arch not in open_clip.list_models():
        raise ConfigError(
            "arch", f"unknown open_clip architecture {spec.arch!r} (give model_config to define it)"
        )


def _verified_sha256(checkpoint: str | None, expected: str | None) -> str | None:
    """The weights file's digest (checked against ``expected``) before any tensor is read from it."""
    sha = verify_sha256(checkpoint, expected) if checkpoint else None
    if checkpoint is None and expected is not None:
        raise ConfigError("sha256", "random weights have no file to verify; drop sha256")
    return sha


def _create_unloaded_model(model_name: str, create_kwargs: dict[str, Any]) -> nn.Module:
    """open_clip's model for ``model_name``, randomly initialised: the caller loads the weights."""
    import open_clip

    # open_clip warns "No pretrained weights loaded ... initialized randomly" on the root logger because
    # it is told not to load them: we load (and verify) them ourselves just below.
    root = logging.getLogger()
    root.addFilter(_drop_random_init_warning)
    try:
        return open_clip.create_model(model_name, pretrained=None, load_weights=False, **create_kwargs)
    except RuntimeError as exc:
        raise ConfigError("arch", f"open_clip cannot build {model_name!r}: {exc}") from exc
    finally:
        root.removeFilter(_drop_random_init_warning)


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

    with _LOCK:
        if spec.model_config is not None:
            register_model_config(spec.arch, spec.model_config)
        source = resolve_weights_source(spec)
        _check_known_arch(spec, source.model_name)
        sha = _verified_sha256(source.checkpoint, spec.sha256)
        model = _create_unloaded_model(source.model_name, source.create_kwargs)
        tokenizer = open_clip.get_tokenizer(source.model_name)

    if source.checkpoint is not None:
        _load_tensors(model, source.checkpoint)
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
