"""Object storage for datasets, checkpoints and resume state.

Keys are ``/``-separated relative paths built by the server from database ids (never from client
strings): ``datasets/<tenant>/<dataset_id>/...``, ``models/<tenant>/<model_id>.safetensors``,
``models/<tenant>/<model_id>/<asset>`` (the report's plots and the model card), ``jobs/<job_id>/...``.
``LocalStorage`` keeps them under a folder (the default, under ``settings.data_dir/storage``);
``FsspecStorage`` under an fsspec URL such as ``s3://bucket/prefix`` (``s3fs`` is the optional ``s3``
extra, imported lazily by fsspec).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from models import atomic_path

_KEY_PART = re.compile(r"^[A-Za-z0-9._-]+$")


class StorageError(Exception):
    pass


def check_key(key: str) -> str:
    """security: keys are relative, '/'-separated, with plain components (no '..', no absolute paths)."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") or not _KEY_PART.match(p) for p in parts):
        raise StorageError(f"invalid storage key {key!r}")
    return key


def dataset_prefix(tenant_id: str, dataset_id: str) -> str:
    return check_key(f"datasets/{tenant_id}/{dataset_id}")


def model_key(tenant_id: str, model_id: str) -> str:
    return check_key(f"models/{tenant_id}/{model_id}.safetensors")


# A tuned model's report assets beside its checkpoint: plot name -> file name, and the model card.
MODEL_PLOT_FILES = {
    "training_curves": "training_curves.png",
    "confusion_matrix": "confusion_matrix.png",
}
MODEL_CARD_FILE = "README.md"


def model_assets_prefix(tenant_id: str, model_id: str) -> str:
    return check_key(f"models/{tenant_id}/{model_id}")


def model_asset_key(tenant_id: str, model_id: str, name: str) -> str:
    """Where asset ``name`` (a file name of :data:`MODEL_PLOT_FILES` or :data:`MODEL_CARD_FILE`) lives."""
    return check_key(f"{model_assets_prefix(tenant_id, model_id)}/{name}")


def delete_model_files(storage: Storage, *, tenant_id: str, model_id: str, checkpoint_key: str) -> None:
    """Delete a tuned model's checkpoint and its report assets (after its row is gone)."""
    storage.delete(checkpoint_key)
    storage.delete_prefix(model_assets_prefix(tenant_id, model_id))


def job_prefix(job_id: str) -> str:
    return check_key(f"jobs/{job_id}")


class Storage(ABC):
    """The operations the API and the worker need; every key goes through :func:`check_key`."""

    @abstractmethod
    def put_file(self, key: str, local_path: str | Path) -> None:
        """Store a local file under ``key`` (atomically replacing any previous object)."""

    @abstractmethod
    def put_dir(self, prefix: str, local_dir: str | Path) -> None:
        """Store every file of ``local_dir`` under ``prefix``; the local folder may be consumed (moved)."""

    @abstractmethod
    def open(self, key: str) -> IO[bytes]:
        """A readable binary file object."""

    @abstractmethod
    def get_local_path(self, key: str) -> Path:
        """A local path holding the object (the object itself for local storage, a cached copy otherwise)."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None: ...

    def sweep_abandoned(self, older_than_seconds: float) -> int:
        """Delete what killed writers left behind (temp files, staging folders); returns how many."""
        return 0

    def put_bytes(self, key: str, data: bytes) -> None:
        with tempfile.NamedTemporaryFile(delete=False) as tmp:
            tmp.write(data)
        try:
            self.put_file(key, tmp.name)
        finally:
            Path(tmp.name).unlink(missing_ok=True)

    def read_bytes(self, key: str) -> bytes:
        with self.open(key) as fh:
            return fh.read()


class LocalStorage(Storage):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._staging = self.root / ".staging"
        self._staging.mkdir(exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if not path.is_relative_to(self.root):  # security: defence in depth after check_key
            raise StorageError(f"storage key escapes the root: {key!r}")
        return path

    def staging_dir(self) -> Path:
        """A fresh folder on the storage's filesystem, so that moving it into place is a rename."""
        path = self._staging / uuid.uuid4().hex
        path.mkdir()
        return path

    def put_file(self, key: str, local_path: str | Path) -> None:
        with atomic_path(self._path(key)) as tmp:
            shutil.copyfile(local_path, tmp)

    def put_dir(self, prefix: str, local_dir: str | Path) -> None:
        dest = self._path(prefix)
        if dest.exists():
            raise StorageError(f"{prefix!r} already exists")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(local_dir), dest)  # a rename when local_dir is on the same filesystem

    def open(self, key: str) -> IO[bytes]:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise StorageError(f"no object {key!r}") from None

    def get_local_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise StorageError(f"no object {key!r}")
        return path

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def sweep_abandoned(self, older_than_seconds: float) -> int:
        """``put_file`` temp files (``.<name>.<hex>.tmp``) and staging folders older than the cut-off.

        A writer killed between the copy and the rename leaves them; nothing ever reads them (tested in
        tests/reliability/test_torn_checkpoints.py), so only their disk space is at stake.
        """
        cutoff = time.time() - older_than_seconds
        removed = 0
        stale = [p for p in self.root.rglob(".*.tmp") if p.is_file()]
        stale += list(self._staging.iterdir())
        for path in stale:
            try:
                if path.lstat().st_mtime >= cutoff:
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed += 1
            except OSError:
                continue  # raced with another sweeper or writer: the next sweep decides
        return removed

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix)
        if path.is_dir():
            # Rename first so that a half-deleted tree is never visible under the real key.
            trash = self._staging / f"trash-{uuid.uuid4().hex}"
            os.replace(path, trash)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


class FsspecStorage(Storage):
    """Storage on any fsspec filesystem (``s3://bucket/prefix`` needs the optional ``s3fs``)."""

    def __init__(self, url: str, cache_dir: str | Path, **storage_options: Any) -> None:
        import fsspec  # lazy: only deployments using object storage pay for it

        self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self.root = root.rstrip("/")
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)

    def _url(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}"

    def put_file(self, key: str, local_path: str | Path) -> None:
        self.fs.put_file(str(local_path), self._url(key))

    def put_dir(self, prefix: str, local_dir: str | Path) -> None:
        local_dir = Path(local_dir)
        if self.exists(prefix):
            raise StorageError(f"{prefix!r} already exists")
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        # The manifest goes last: readers treat a dataset without one as incomplete.
        files.sort(key=lambda p: p.name == "manifest.jsonl")
        for path in files:
            self.put_file(f"{prefix}/{path.relative_to(local_dir).as_posix()}", path)
        shutil.rmtree(local_dir, ignore_errors=True)

    def open(self, key: str) -> IO[bytes]:
        try:
            return self.fs.open(self._url(key), "rb")
        except FileNotFoundError:
            raise StorageError(f"no object {key!r}") from None

    def get_local_path(self, key: str) -> Path:
        dest = self.cache_dir / check_key(key)
        if not dest.is_file():
            if not self.exists(key):
                raise StorageError(f"no object {key!r}")
            with atomic_path(dest) as tmp:
                self.fs.get_file(self._url(key), str(tmp))
        return dest

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._url(key)))

    def delete(self, key: str) -> None:
        if self.exists(key):
            self.fs.rm(self._url(key))
        (self.cache_dir / check_key(key)).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        if self.exists(prefix):
            self.fs.rm(self._url(prefix), recursive=True)
        shutil.rmtree(self.cache_dir / check_key(prefix), ignore_errors=True)


def make_storage(storage_url: str | None, data_dir: str | Path) -> Storage:
    """``None`` or ``file://``/plain path -> LocalStorage; any other fsspec URL -> FsspecStorage."""
    data_dir = Path(data_dir)
    if storage_url is None:
        return LocalStorage(data_dir / "storage")
    if storage_url.startswith("file://"):
        return LocalStorage(storage_url[len("file://") :])
    if "://" not in storage_url:
        return LocalStorage(storage_url)
    return FsspecStorage(storage_url, cache_dir=data_dir / "cache" / "storage")


@contextmanager
def temp_dir(storage: Storage, data_dir: str | Path) -> Iterator[Path]:
    """A scratch folder removed on exit; on the storage's filesystem for LocalStorage."""
    if isinstance(storage, LocalStorage):
        path = storage.staging_dir()
    else:
        base = Path(data_dir) / "tmp"
        base.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
