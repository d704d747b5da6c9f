"""What backbones this server offers: the built-in catalogue, the project's zoo and the operator's file.

Three registries (app/core/backbones.py), merged in precedence order:

1. the backbones file (``PROMPTUNE_BACKBONES_FILE``): the operator's names win on a clash; with
   ``PROMPTUNE_BACKBONES_FILE_MODE=replace`` it is the whole registry (no zoo, no catalogue);
2. the zoo under ``data_dir/zoo`` (``ZOO_DIR_NAME``/``ZOO_REGISTRY_NAME``), when ``promptune demo`` or
   ``scripts/build_zoo.py`` built one there;
3. the built-in catalogue of well-known open_clip and timm weights (``catalogue.json`` next to this module).

``availability`` says whether a backbone can load now: its files are here (``local``), its Hugging Face
repo is cached (``cached``), the hub answers and downloads are allowed (``downloadable``), or none of
these (``missing``). The hub check is a cached HEAD request with a short timeout, never a download.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

from app.core.backbones import (
    BackboneRegistry,
    EntryInfo,
    RegistryFile,
    hub_repo,
    parse_registry,
    weights_available,
    weights_form,
    weights_size_on_disk,
)
from app.core.settings import Settings
from models import BackboneSpec

_log = logging.getLogger(__name__)

# The service looks for a built zoo at data_dir/zoo/backbones.json: the folder `promptune demo` builds
# into (devstack) and the registry name models.zoo.build writes by default (a test keeps them equal).
ZOO_DIR_NAME = "zoo"
ZOO_REGISTRY_NAME = "backbones.json"
# Catalogue weights may name a file the operator puts under the data folder.
DATA_DIR_PLACEHOLDER = "{data_dir}"

Availability = Literal["local", "cached", "downloadable", "missing"]


def zoo_dir(data_dir: Path) -> Path:
    return Path(data_dir) / ZOO_DIR_NAME


def zoo_registry_path(data_dir: Path) -> Path:
    return zoo_dir(data_dir) / ZOO_REGISTRY_NAME


@lru_cache(maxsize=1)
def _catalogue_text() -> str:
    return resources.files("app.core").joinpath("catalogue.json").read_text(encoding="utf-8")


def builtin_catalogue(data_dir: Path) -> BackboneRegistry:
    """The well-known weights, with ``{data_dir}`` in a weights path replaced by the data folder."""
    data = json.loads(_catalogue_text())
    folder = str(Path(data_dir).resolve())
    for values in data.values():
        values["weights"] = values["weights"].replace(DATA_DIR_PLACEHOLDER, folder)
    return parse_registry(data, "catalogue")


def merge_registries(*registries: BackboneRegistry) -> BackboneRegistry:
    """One registry; on a name in several, the earlier registry wins (and keeps its position)."""
    specs: dict[str, BackboneSpec] = {}
    info: dict[str, EntryInfo] = {}
    for registry in registries:
        for name, spec in registry.specs.items():
            if name not in specs:
                specs[name] = spec
                info[name] = registry.info_for(name)
    return BackboneRegistry(specs, info)


class ServerRegistry:
    """The merged registry the API serves (``app.state.backbones``); thread-safe.

    The backbones file and the zoo registry are re-read when they change (:class:`RegistryFile`); the
    merge is redone only when one of them did. A broken zoo registry is logged and skipped; a broken
    backbones file raises, as it always did (the operator named it).
    """

    def __init__(self, settings: Settings) -> None:
        self.replace = settings.backbones_file_mode == "replace"
        self._file = RegistryFile(settings.backbones_file, "file")
        self._zoo = RegistryFile(zoo_registry_path(settings.data_dir), "zoo", lenient=True)
        self._catalogue = builtin_catalogue(settings.data_dir)
        self._lock = threading.Lock()
        self._parts: tuple[BackboneRegistry, BackboneRegistry] | None = None
        self._merged = BackboneRegistry({})

    def get(self) -> BackboneRegistry:
        file = self._file.get()
        if self.replace:
            return file
        zoo = self._zoo.get()
        with self._lock:
            if self._parts is None or self._parts[0] is not file or self._parts[1] is not zoo:
                self._merged = merge_registries(file, zoo, self._catalogue)
                self._parts = (file, zoo)
            return self._merged


def server_registry(settings: Settings) -> BackboneRegistry:
    """The registry as the API sees it now (for a worker planning one job)."""
    return ServerRegistry(settings).get()


# ---- can it load now? -------------------------------------------------------------------------------------
class HubProbe:
    """Whether the Hugging Face hub answers: one HEAD request, remembered for ``ttl_seconds``.

    Never probes when ``HF_HUB_OFFLINE`` is set (the loaders would not download then either). The request
    runs in a daemon thread: a caller waits at most ``timeout_seconds`` for it (a stuck DNS lookup cannot
    hold a request), then gets the last known answer; one probe at a time.
    """

    def __init__(self, *, timeout_seconds: float = 2.0, ttl_seconds: float = 300.0) -> None:
        self.timeout_seconds = timeout_seconds
        self.ttl_seconds = ttl_seconds
        self._lock = threading.Lock()
        self._checked_at: float | None = None
        self._reachable = False
        self._running: threading.Thread | None = None

    def reachable(self) -> bool:
        if hub_offline():
            return False
        with self._lock:
            fresh = self._checked_at is not None and time.monotonic() - self._checked_at < self.ttl_seconds
            if fresh:
                return self._reachable
            if self._running is None:
                self._running = threading.Thread(target=self._refresh, name="hub-probe", daemon=True)
                self._running.start()
            running = self._running
        running.join(self.timeout_seconds)
        with self._lock:
            return self._reachable

    def _refresh(self) -> None:
        try:
            reachable = self._probe()
        except Exception:  # noqa: BLE001 - a probe that fails for any reason says "unreachable"
            _log.exception("the Hugging Face hub probe failed")
            reachable = False
        with self._lock:
            self._reachable, self._checked_at, self._running = reachable, time.monotonic(), None

    def _probe(self) -> bool:
        from huggingface_hub import constants

        request = urllib.request.Request(constants.ENDPOINT, method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds):  # noqa: S310 - the hub's URL
                return True
        except urllib.error.HTTPError:
            return True  # it answered: the hub is up, whatever it thinks of a bare HEAD
        except (OSError, ValueError) as exc:
            _log.info("Hugging Face hub %s unreachable: %s", constants.ENDPOINT, exc)
            return False


HUB_PROBE = HubProbe()


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)  # read once from HF_HUB_OFFLINE when huggingface_hub is imported


@dataclass(frozen=True)
class BackboneStatus:
    availability: Availability
    size_bytes: int | None  # on disk when it is there, else the documented download size

    @property
    def available(self) -> bool:
        return self.availability != "missing"


def backbone_status(spec: BackboneSpec, info: EntryInfo, probe: HubProbe | None = None) -> BackboneStatus:
    """Filesystem checks, plus the (cached) hub probe for a hub form that is not cached."""
    form = weights_form(spec)
    on_disk = weights_available(spec)
    if form in ("random", "local"):
        availability: Availability = "local" if on_disk else "missing"
    elif on_disk:
        availability = "cached"
    elif hub_repo(spec) is not None and (probe or HUB_PROBE).reachable():
        availability = "downloadable"
    else:
        availability = "missing"
    size = weights_size_on_disk(spec) if on_disk else None
    return BackboneStatus(availability, size if size is not None else info.size_bytes)
