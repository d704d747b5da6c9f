"""Loading frozen timm backbones (ViTs for SPT/VPT) from a tag, a weights file, or random init.

``load_timm_backbone(spec)`` builds ``timm.create_model(spec.arch, num_classes=0, **spec.model_kwargs)``
(never a timm head: the prompt method owns its head), loads the weights, freezes everything and
returns a :class:`~models.backbones.spec.Backbone` with timm's own eval transform.

Weights sources (``spec.weights``):

- ``random``: explicit random init (tests only).
- a timm pretrained tag (``augreg_in21k``, ``mae`` ...): the tag's weights file is resolved through the
  Hugging Face cache (``HF_HUB_OFFLINE=1`` makes a file that is not cached fail at once with
  :class:`WeightsNotFoundError`), its sha256 checked if ``spec.sha256`` is set, then loaded like a file.
- ``hf-hub:org/repo``: ``model.safetensors`` (or ``pytorch_model.bin``) of that repository.
- a weights file: ``.safetensors``, or ``.pt``/``.pth``/``.bin`` read with ``weights_only=True``.
  MAE and MoCo-v3 layouts are accepted: ``module.`` / ``base_encoder.`` prefixes are stripped and decoder,
  mask-token, momentum-encoder, predictor and head/projector tensors are dropped. Any other missing or
  unexpected key is an error that names the keys (a half-random backbone must never load silently).

Readout (docs/methods.md B.3): ``kind`` ``mae`` builds the model with ``global_pool="avg"`` (unless
``model_kwargs`` says otherwise), so timm's pooled pre-logits are ``fc_norm(mean(x[:, prefix:]))`` and the
MAE encoder's final ``norm`` is loaded into ``fc_norm``: that is SPT's ``norm(mean(x[:, 1:]))``.
``supervised`` and ``moco`` keep timm's token pooling, ``norm(x)[:, 0]``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, WeightsNotFoundError
from ..fileio import atomic_path
from .spec import Backbone, BackboneSpec, Preprocessing
from .weights import read_state_dict, verify_sha256

_log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
# model_kwargs that would fight the loader (it owns weights loading and the absence of a head).
_RESERVED_KWARGS = ("pretrained", "num_classes", "pretrained_cfg", "checkpoint_path", "features_only")
# Tensors of self-supervised checkpoints that are not part of the encoder we load.
_DROP_KEY = re.compile(
    r"^(decoder|mask_token|momentum_encoder\.|predictor\.|projector\.|head\.|head_dist\.|fc\.|pre_logits\.)"
)
# MAE/MoCo-v3 channel statistics (ImageNet defaults) for weights files of those kinds.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


# ---- public API -----------------------------------------------------------------------------------------
def load_timm_backbone(spec: BackboneSpec) -> Backbone:
    """Build, load and freeze the timm model described by ``spec``."""
    import timm

    if spec.family != "timm":
        raise ConfigError("family", f"load_timm_backbone needs family 'timm', got {spec.family!r}")
    source, tag = _classify_weights(spec.weights)
    if source == "random" and spec.sha256 is not None:
        raise ConfigError("sha256", "random weights have no file to verify")
    if "." in spec.arch or not timm.is_model(spec.arch):
        raise ConfigError(
            "arch", f"unknown timm model {spec.arch!r} (give the tag in 'weights', not in 'arch')"
        )
    kwargs = _model_kwargs(spec)

    name = f"{spec.arch}.{tag}" if source == "tag" else spec.arch
    if source == "tag":
        known = timm.list_pretrained(f"{spec.arch}.*")
        if name not in known:
            raise WeightsNotFoundError(
                f"timm has no pretrained tag {tag!r} for arch {spec.arch!r}; "
                f"known tags: {', '.join(k.split('.', 1)[1] for k in known) or 'none'}"
            )
    try:
        model: Any = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except TypeError as exc:
        raise ConfigError("model_kwargs", f"timm.create_model({name!r}) rejected the kwargs: {exc}") from exc
    except (AssertionError, ValueError) as exc:
        raise ConfigError("model_kwargs", f"timm.create_model({name!r}) failed: {exc}") from exc

    weights_sha256: str | None = None
    if source != "random":
        if source == "tag":
            path = _resolve_tag_file(model.pretrained_cfg, spec.arch, tag)
        elif source == "hf-hub":
            path = _resolve_hub_file(spec.weights[len("hf-hub:") :], spec.arch)
        else:
            path = Path(spec.weights).expanduser()
            if not path.is_file():
                raise WeightsNotFoundError(f"weights file for timm arch {spec.arch!r} not found: {path}")
        weights_sha256 = verify_sha256(path, spec.sha256)
        if path.suffix == ".npz":  # Google's original ViT checkpoints (timm's own numpy loader, no pickle)
            if not hasattr(model, "load_pretrained"):
                raise CheckpointError(f"{path}: {spec.arch!r} cannot read .npz checkpoints")
            model.load_pretrained(str(path))
        else:
            load_weights_into(model, read_state_dict(path), source=str(path))

    model.requires_grad_(False)
    model.eval()
    preprocessing, transform = _preprocessing(model, spec, file_weights=source in ("file", "hf-hub"))
    return Backbone(
        spec=spec,
        model=model,
        preprocessing=preprocessing,
        transform=transform,
        tokenizer=None,
        weights_sha256=weights_sha256,
    )


def save_timm_weights(model: nn.Module | Backbone, path: str | Path) -> str:
    """Write ``model``'s state dict as safetensors (atomically) and return the file's sha256.

    The file reloads with ``BackboneSpec(weights=str(path))`` for the same arch, kwargs and kind.
    """
    from safetensors.torch import save_file

    module = model.model if isinstance(model, Backbone) else model
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        # One metadata key: safetensors writes a metadata map in random order.
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    return verify_sha256(path, None)


def adapt_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map a checkpoint's keys onto ``model`` (MAE / MoCo-v3 / timm layouts), dropping non-encoder tensors."""
    state = dict(state)
    if any(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("base_encoder.") for k in state):  # MoCo v3 pretraining checkpoint
        state = {
            k.removeprefix("base_encoder."): v for k, v in state.items() if k.startswith("base_encoder.")
        }
    state = {k: v for k, v in state.items() if not _DROP_KEY.match(k)}
    try:
        from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
    except ImportError:  # pragma: no cover - timm always ships it
        VisionTransformer = None  # type: ignore[assignment,misc]
    if VisionTransformer is not None and isinstance(model, VisionTransformer):
        # resamples pos_embed / patch_embed when img_size or patch_size differ from the checkpoint's
        state = checkpoint_filter_fn(state, model)
    own = model.state_dict()
    # MAE encoders end in `norm`; under mean pooling timm holds that LayerNorm as `fc_norm`.
    if "fc_norm.weight" in own and "norm.weight" not in own and "fc_norm.weight" not in state:
        for suffix in ("weight", "bias"):
            if f"norm.{suffix}" in state:
                state[f"fc_norm.{suffix}"] = state.pop(f"norm.{suffix}")
    return state


def load_weights_into(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Strictly load ``state`` (after :func:`adapt_state_dict`); name every missing or unexpected key."""
    state = adapt_state_dict(state, model)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}: missing keys {_short(missing)}, "
            f"unexpected keys {_short(unexpected)}, shape mismatches {_short(mismatched)}"
        )
    model.load_state_dict(state, strict=True)


# ---- helpers --------------------------------------------------------------------------------------------
def _short(names: list[str], limit: int = 12) -> str:
    if len(names) <= limit:
        return str(names)
    return f"{names[:limit]} ... (+{len(names) - limit} more)"


def _classify_weights(weights: str) -> tuple[str, str]:
    """-> (source, tag): source in random | hf-hub | file | tag."""
    if weights == "random":
        return "random", ""
    if weights.startswith("hf-hub:"):
        if not weights[len("hf-hub:") :].strip("/"):
            raise ConfigError("weights", "hf-hub: needs a repository id (hf-hub:org/name)")
        return "hf-hub", ""
    if weights.startswith("local-dir:"):
        raise ConfigError(
            "weights", "local-dir: is an open_clip layout; give a timm weights file path instead"
        )
    if (
        weights.lower().endswith((*WEIGHT_SUFFIXES, ".npz"))
        or "/" in weights
        or os.sep in weights
        or (weights.startswith("~"))
    ):
        return "file", ""
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", weights):
        raise ConfigError("weights", f"{weights!r} is neither a timm pretrained tag nor a weights file path")
    return "tag", weights


def _model_kwargs(spec: BackboneSpec) -> dict[str, Any]:
    kwargs = dict(spec.model_kwargs or {})
    bad = [k for k in _RESERVED_KWARGS if k in kwargs]
    if bad:
        raise ConfigError("model_kwargs", f"{bad} are set by the loader and cannot be given")
    if spec.kind == "mae":
        kwargs.setdefault("global_pool", "avg")  # -> fc_norm(mean(tokens)): SPT's MAE readout
    return kwargs


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)  # read once from HF_HUB_OFFLINE when huggingface_hub is imported


def _hub_download(repo_id: str, filenames: list[str], what: str) -> Path:
    """First of ``filenames`` found for ``repo_id`` (from the HF cache when offline)."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    revision = None
    if "@" in repo_id:
        repo_id, revision = repo_id.split("@", 1)
    last: Exception | None = None
    for filename in filenames:
        try:
            return Path(hf_hub_download(repo_id=repo_id, filename=filename, revision=revision))
        except (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, OSError) as exc:
            last = exc
    mode = "offline (HF_HUB_OFFLINE=1), cache only" if _offline() else "hub and cache"
    raise WeightsNotFoundError(
        f"{what}: none of {filenames} of Hugging Face repo {repo_id!r} could be found ({mode}; "
        f"cache {constants.HF_HUB_CACHE}): {type(last).__name__}: {last}"
    )


def _resolve_tag_file(cfg: Any, arch: str, tag: str) -> Path:
    """The local weights file of a timm pretrained tag (HF cache or torch hub cache)."""
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {})
    what = f"timm arch {arch!r} tag {tag!r}"
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        from timm.models._hub import _get_safe_alternatives  # timm's own .bin -> .safetensors naming

        filename = cfg.get("hf_hub_filename") or "pytorch_model.bin"
        names = (
            [filename] if filename.endswith(".safetensors") else [*_get_safe_alternatives(filename), filename]
        )
        return _hub_download(hub_id, names, what)
    url = cfg.get("url")
    if not url:
        raise WeightsNotFoundError(f"{what}: timm names no weights source (no hf_hub_id, no url)")
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if cached.is_file():
        return cached
    if _offline():
        raise WeightsNotFoundError(
            f"{what}: {cached} is not cached and HF_HUB_OFFLINE=1 forbids fetching {url}"
        )
    from timm.models._hub import download_cached_file

    return Path(download_cached_file(url, check_hash=False, progress=False))


def _resolve_hub_file(repo_id: str, arch: str) -> Path:
    return _hub_download(
        repo_id, ["model.safetensors", "pytorch_model.bin"], f"timm arch {arch!r} weights hf-hub:{repo_id}"
    )


def _preprocessing(model: nn.Module, spec: BackboneSpec, *, file_weights: bool) -> tuple[Preprocessing, Any]:
    """timm's data config for this model (at its real input size) and the matching eval transform."""
    from timm.data import create_transform, resolve_data_config

    args: dict[str, Any] = {}
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:
        args["input_size"] = (3, int(img_size[0]), int(img_size[1]))
    overlay = (spec.model_kwargs or {}).get("pretrained_cfg_overlay") or {}
    if file_weights and spec.kind in ("mae", "moco") and "mean" not in overlay and "std" not in overlay:
        # MAE and MoCo-v3 encoders are trained on ImageNet-normalised inputs; timm's arch default cfg
        # (e.g. augreg's 0.5/0.5) describes some other checkpoint.
        args["mean"], args["std"] = _IMAGENET_MEAN, _IMAGENET_STD
    cfg = resolve_data_config(args=args, model=model)
    transform = create_transform(**cfg, is_training=False)
    _, height, _ = cfg["input_size"]
    preprocessing = Preprocessing(
        image_size=int(height),
        mean=tuple(float(v) for v in cfg["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in cfg["std"]),  # type: ignore[arg-type]
        resize_mode="shortest",
        interpolation=str(cfg["interpolation"]),
        crop_pct=float(cfg.get("crop_pct", 1.0)),
    )
    return preprocessing, transform
