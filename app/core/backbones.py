"""The server's backbone registry: a JSON file mapping names to ``BackboneSpec`` dicts.

``settings.backbones_file`` holds e.g. ``{"tiny-vit": {"family": "timm", "arch": "vit_tiny_patch16_224",
"weights": "/zoo/tiny-vit.safetensors", "kind": "supervised", "sha256": "..."}}``. The file is re-read
when it changes. ``available`` tells whether the weights can be resolved offline, without loading them.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models import BackboneSpec, ConfigError

_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


class RegistryError(Exception):
    pass


@dataclass(frozen=True)
class BackboneRegistry:
    specs: dict[str, BackboneSpec]

    def names(self) -> list[str]:
        return sorted(self.specs)

    def get(self, name: str) -> BackboneSpec | None:
        return self.specs.get(name)

    def default_for(self, family: str, preferred: str | None = None) -> str | None:
        """``preferred`` if it is of ``family``, else the first registered backbone of that family."""
        if preferred is not None and preferred in self.specs and self.specs[preferred].family == family:
            return preferred
        return next((n for n in self.names() if self.specs[n].family == family), None)


def parse_registry(data: Any) -> BackboneRegistry:
    if not isinstance(data, dict):
        raise RegistryError("the backbones file must hold a JSON object of name -> spec")
    specs: dict[str, BackboneSpec] = {}
    for name, values in data.items():
        if not isinstance(values, dict):
            raise RegistryError(f"backbone {name!r}: spec must be an object")
        try:
            specs[name] = BackboneSpec.from_dict({**values, "name": name})
        except ConfigError as exc:
            raise RegistryError(f"backbone {name!r}: {exc}") from None
    return BackboneRegistry(specs)


def load_registry(path: str | Path | None) -> BackboneRegistry:
    if path is None:
        return BackboneRegistry({})
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RegistryError(f"cannot read the backbones file {path}: {exc}") from None
    return parse_registry(data)


class RegistryFile:
    """Thread-safe holder re-reading the file when its mtime or size changes."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._registry = BackboneRegistry({})

    def get(self) -> BackboneRegistry:
        if self.path is None:
            return self._registry
        st = self.path.stat() if self.path.exists() else None
        stamp = (st.st_mtime_ns, st.st_size) if st else (0, 0)
        with self._lock:
            if stamp != self._stamp:
                self._registry = load_registry(self.path) if st else BackboneRegistry({})
                self._stamp = stamp
            return self._registry


def _hf_cached(repo_id: str) -> bool:
    from huggingface_hub import constants

    snapshots = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def _tag_repo(spec: BackboneSpec) -> str | None:
    """The Hugging Face repo a pretrained tag resolves to (open_clip / timm pretrained configs)."""
    if spec.family == "open_clip":
        import open_clip

        cfg = open_clip.get_pretrained_cfg(spec.arch, spec.weights)
        hub = cfg.get("hf_hub") if cfg else None
        return hub.strip("/") if hub else None
    import timm

    pcfg = timm.models.get_pretrained_cfg(f"{spec.arch}.{spec.weights}")
    return getattr(pcfg, "hf_hub_id", None) if pcfg is not None else None


def weights_available(spec: BackboneSpec) -> bool:
    """Whether ``spec.weights`` can be resolved offline (a file, a local dir, random, or a cached tag)."""
    weights = spec.weights
    if weights == "random":
        return True
    if weights.startswith("local-dir:"):
        folder = Path(weights[len("local-dir:") :])
        return (folder / "open_clip_config.json").is_file()
    if weights.startswith("hf-hub:"):
        return _hf_cached(weights[len("hf-hub:") :].split("@")[0])
    if os.sep in weights or weights.endswith(_WEIGHT_SUFFIXES):
        return Path(weights).is_file()
    try:
        repo = _tag_repo(spec)
    except Exception:  # noqa: BLE001 - an unknown arch/tag is simply not available
        return False
    return repo is not None and _hf_cached(repo)
