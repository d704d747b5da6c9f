"""Backbone registries: JSON files mapping names to ``BackboneSpec`` dicts, and what is on disk.

A registry file holds e.g. ``{"tiny-vit": {"family": "timm", "arch": "vit_tiny_patch16_224",
"weights": "/zoo/tiny-vit.safetensors", "kind": "supervised", "sha256": "...", "description": "..."}}``
(``description`` is optional). :class:`RegistryFile` re-reads one when it changes. ``weights_available``
tells whether weights resolve offline, without loading them. What the server offers (the built-in
catalogue, the project's zoo and the operator's file, merged) is :mod:`app.core.catalogue`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from models import BackboneSpec, ConfigError

_log = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
Source = Literal["catalogue", "zoo", "file"]
# How weights are found: nothing to find (random init), a path on this machine, or a Hugging Face repo.
WeightsForm = Literal["random", "local", "hub"]


class RegistryError(Exception):
    pass


@dataclass(frozen=True)
class EntryInfo:
    """What the server says about a backbone besides its spec."""

    source: Source
    description: str = ""
    num_params: int | None = None  # parameters of the model as load_backbone builds it (no class head)
    size_bytes: int | None = None  # the documented (approximate) download size; disk wins when present


@dataclass(frozen=True)
class BackboneRegistry:
    """Name -> spec, in precedence order (the operator's file, then the zoo, then the catalogue)."""

    specs: dict[str, BackboneSpec]
    info: Mapping[str, EntryInfo] = field(default_factory=dict)

    def names(self) -> list[str]:
        return sorted(self.specs)

    def get(self, name: str) -> BackboneSpec | None:
        return self.specs.get(name)

    def info_for(self, name: str) -> EntryInfo:
        return self.info.get(name) or EntryInfo(source="file")

    def default_for(self, family: str, preferred: str | None = None) -> str | None:
        """``preferred`` if it is of ``family``; else the first of that family whose weights are on disk
        (in precedence order: after the demo, the zoo's CLIP rather than an uncached ViT-B-16); else the
        first of that family at all."""
        if preferred is not None and preferred in self.specs and self.specs[preferred].family == family:
            return preferred
        candidates = [name for name, spec in self.specs.items() if spec.family == family]
        on_disk = (name for name in candidates if weights_available(self.specs[name]))
        return next(on_disk, candidates[0] if candidates else None)


def parse_registry(data: Any, source: Source = "file") -> BackboneRegistry:
    if not isinstance(data, dict):
        raise RegistryError("the backbones file must hold a JSON object of name -> spec")
    specs: dict[str, BackboneSpec] = {}
    info: dict[str, EntryInfo] = {}
    for name, values in data.items():
        if not isinstance(values, dict):
            raise RegistryError(f"backbone {name!r}: spec must be an object")
        spec_values = {k: v for k, v in values.items() if k not in _INFO_KEYS}
        try:
            specs[name] = BackboneSpec.from_dict({**spec_values, "name": name})
        except ConfigError as exc:
            raise RegistryError(f"backbone {name!r}: {exc}") from None
        info[name] = _entry_info(name, values, source)
    return BackboneRegistry(specs, info)


# Optional keys of a registry entry that describe it rather than say how to load it.
_INFO_KEYS = ("description", "num_params", "size_bytes")


def _entry_info(name: str, values: dict[str, Any], source: Source) -> EntryInfo:
    description = values.get("description", "")
    if not isinstance(description, str):
        raise RegistryError(f"backbone {name!r}: description must be a string")
    counts = {key: values.get(key) for key in ("num_params", "size_bytes")}
    for key, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise RegistryError(f"backbone {name!r}: {key} must be a non-negative integer")
    return EntryInfo(source, description, counts["num_params"], counts["size_bytes"])


def load_registry(path: str | Path | None, source: Source = "file") -> BackboneRegistry:
    if path is None:
        return BackboneRegistry({})
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RegistryError(f"cannot read the backbones file {path}: {exc}") from None
    return parse_registry(data, source)


class RegistryFile:
    """Thread-safe holder re-reading the file when its mtime or size changes.

    ``lenient``: a file that cannot be read or parsed counts as empty (logged once per change) instead of
    raising; for files the server finds on its own (the zoo's), not for the one the operator named.
    """

    def __init__(self, path: str | Path | None, source: Source = "file", *, lenient: bool = False) -> None:
        self.path = Path(path) if path is not None else None
        self.source: Source = source
        self.lenient = lenient
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
                self._registry = self._read() if st else BackboneRegistry({})
                self._stamp = stamp
            return self._registry

    def _read(self) -> BackboneRegistry:
        try:
            return load_registry(self.path, self.source)
        except RegistryError as exc:
            if not self.lenient:
                raise
            _log.warning("ignoring the %s registry: %s", self.source, exc)
            return BackboneRegistry({})


# ---- where weights are, offline -------------------------------------------------------------------------
def _hf_snapshots(repo_id: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots"


def _hf_cached(repo_id: str) -> bool:
    snapshots = _hf_snapshots(repo_id)
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


def weights_form(spec: BackboneSpec) -> WeightsForm:
    weights = spec.weights
    if weights == "random":
        return "random"
    if weights.startswith("local-dir:") or os.sep in weights or weights.endswith(_WEIGHT_SUFFIXES):
        return "local"
    return "hub"  # hf-hub:org/repo or a pretrained tag


def hub_repo(spec: BackboneSpec) -> str | None:
    """The Hugging Face repo id holding ``spec``'s weights (None: not a hub form, or an unknown tag)."""
    if weights_form(spec) != "hub":
        return None
    if spec.weights.startswith("hf-hub:"):
        return spec.weights[len("hf-hub:") :].split("@")[0].strip("/") or None
    try:
        return _tag_repo(spec)
    except Exception:  # noqa: BLE001 - an unknown arch/tag simply has no repo
        return None


def weights_available(spec: BackboneSpec) -> bool:
    """Whether ``spec.weights`` can be resolved offline (a file, a local dir, random, or a cached tag)."""
    form = weights_form(spec)
    if form == "random":
        return True
    if form == "local":
        return local_weights_path(spec).is_file()
    repo = hub_repo(spec)
    return repo is not None and _hf_cached(repo)


def local_weights_path(spec: BackboneSpec) -> Path:
    """The file whose presence makes a local spec loadable (a local dir's open_clip config)."""
    if spec.weights.startswith("local-dir:"):
        return Path(spec.weights[len("local-dir:") :]) / "open_clip_config.json"
    return Path(spec.weights)


def weights_size_on_disk(spec: BackboneSpec) -> int | None:
    """Bytes of the weights on this machine: the file, a local dir's weight files, or the largest weights
    file of a cached Hugging Face snapshot (the one a loader reads); None when nothing is on disk."""
    form = weights_form(spec)
    if form == "random":
        return None
    if form == "local":
        if spec.weights.startswith("local-dir:"):
            return _weight_files_size(Path(spec.weights[len("local-dir:") :]), total=True)
        path = Path(spec.weights)
        return path.stat().st_size if path.is_file() else None
    repo = hub_repo(spec)
    return _weight_files_size(_hf_snapshots(repo), total=False) if repo else None


def _weight_files_size(folder: Path, *, total: bool) -> int | None:
    if not folder.is_dir():
        return None
    # Snapshot entries are links into blobs/: stat() follows them to the real file.
    sizes = [p.stat().st_size for p in folder.rglob("*") if p.name.endswith(_WEIGHT_SUFFIXES) and p.is_file()]
    if not sizes:
        return None
    return sum(sizes) if total else max(sizes)
