"""client.models: get, list, predict (batches split to the server's limit), download, report, delete."""

from __future__ import annotations

import builtins
import hashlib
import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import httpx

from promptune._errors import APIConnectionError, PromptuneError
from promptune._files import ImageInput, image_parts
from promptune._transport import Request
from promptune._types import Page, Prediction, Report, TunedModel
from promptune.resources._base import Resource, query, segment

CHECKPOINT_NAME = "model.safetensors"
# What an archive may hold (GET /v1/models/{id}/archive); anything else in it is not extracted.
ARCHIVE_SUFFIXES = (".safetensors", ".md", ".json", ".png")


class Models(Resource):
    def get(self, model_id: str) -> TunedModel:
        return TunedModel.from_json(self._get(f"/v1/models/{segment(model_id)}"))

    def list(
        self,
        *,
        method: str | None = None,
        backbone: str | None = None,
        job_id: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[TunedModel]:
        """One page of tuned models, newest first, optionally filtered."""
        params = {"method": method, "backbone": backbone, "job_id": job_id, "limit": limit, "cursor": cursor}
        return self._page("/v1/models", TunedModel.from_json, params)

    def list_all(self, **filters: Any) -> Iterator[TunedModel]:
        return self._all(self.list(**filters))

    def delete(self, model_id: str) -> None:
        self._request(Request("DELETE", f"/v1/models/{segment(model_id)}"))

    def report(self, model_id: str) -> Report:
        """The model's evaluation report: accuracy, F1s, per-class metrics, confusion matrix, history."""
        return Report.from_json(self._get(f"/v1/models/{segment(model_id)}/report"))

    def predict(
        self, model_id: str, images: ImageInput | Iterable[ImageInput], *, top_k: int | None = None
    ) -> builtins.list[Prediction]:
        """Classify images (paths, bytes, binary files or PIL images), one Prediction each, in order.

        More images than the server takes in one request (``Client(max_predict_images=)``) are sent in
        several requests.
        """
        return self._client._predict_batches(
            f"/v1/models/{segment(model_id)}/predict", image_parts(images), query(top_k=top_k)
        )

    def download(self, model_id: str, path: str | os.PathLike[str], *, verify: bool = True) -> Path:
        """Download the model's archive (checkpoint, model card, report, plots).

        ``path`` ending in ``.zip``: the archive is saved there as it is. Otherwise ``path`` is a folder
        (created if needed) that receives the archive's files; names that are not plain file names are
        never written (no path traversal). ``verify`` checks the checkpoint's sha256 against the model's.
        Returns ``path``.
        """
        target = Path(path)
        url = f"/v1/models/{segment(model_id)}/archive"
        parent = target.parent if target.suffix.lower() == ".zip" else target
        parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".promptune-", suffix=".zip.part", dir=parent)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out, self._client._transport.stream(Request("GET", url)) as response:
                try:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                except httpx.TransportError as exc:
                    raise APIConnectionError(f"the download of model {model_id} broke off: {exc}") from exc
            expected = self.get(model_id).checkpoint_sha256 if verify else None
            if target.suffix.lower() == ".zip":
                _check_archive(tmp, expected)
                _as_created_file(tmp)
                os.replace(tmp, target)
            else:
                _extract(tmp, target, expected)
        finally:
            tmp.unlink(missing_ok=True)
        return target


def _as_created_file(path: Path) -> None:
    """rw-r--r--, as a plain download would be: mkstemp makes 0600 files (reading the umask would mean
    setting it, process-wide, which races with the caller's threads)."""
    path.chmod(0o644)


def _safe_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The members that are plain file names with an expected suffix (never a path, never a link)."""
    members = []
    for info in archive.infolist():
        name = info.filename
        plain = name == PurePosixPath(name).name and "\\" not in name and name not in ("", ".", "..")
        if plain and not info.is_dir() and name.lower().endswith(ARCHIVE_SUFFIXES):
            members.append(info)
    return members


def _check_archive(path: Path, expected_sha256: str | None) -> None:
    with zipfile.ZipFile(path) as archive:
        if expected_sha256 is not None:
            digest = hashlib.sha256()
            with archive.open(CHECKPOINT_NAME) as fh:
                while chunk := fh.read(1 << 20):
                    digest.update(chunk)
            _verify(digest.hexdigest(), expected_sha256)


def _extract(path: Path, folder: Path, expected_sha256: str | None) -> None:
    with zipfile.ZipFile(path) as archive:
        for info in _safe_members(archive):
            digest = hashlib.sha256()
            fd, tmp = tempfile.mkstemp(prefix=".promptune-", dir=folder)
            try:
                with archive.open(info) as src, os.fdopen(fd, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        digest.update(chunk)
                        dst.write(chunk)
                if info.filename == CHECKPOINT_NAME and expected_sha256 is not None:
                    _verify(digest.hexdigest(), expected_sha256)
                _as_created_file(Path(tmp))
                os.replace(tmp, folder / info.filename)
            finally:
                Path(tmp).unlink(missing_ok=True)


def _verify(actual: str, expected: str) -> None:
    if actual != expected:
        raise PromptuneError(
            f"the downloaded checkpoint's sha256 {actual} is not the model's {expected}",
            code="checksum_mismatch",
        )
