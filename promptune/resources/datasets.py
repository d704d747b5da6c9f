"""client.datasets: upload (a zip, or a folder zipped on the fly), list, get, delete."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from promptune._files import FilePart, zip_folder
from promptune._transport import Request
from promptune._types import Dataset, Page
from promptune.resources._base import Resource, idempotency_headers, segment


class Datasets(Resource):
    def upload(
        self, path: str | os.PathLike[str], *, name: str | None = None, idempotency_key: str | None = None
    ) -> Dataset:
        """Upload a dataset: a ``.zip`` / WebDataset ``.tar`` as it is, or a folder (``<class>/<image>``,
        optionally under ``train/`` ``val/`` ``test/``; or images with ``manifest.csv|jsonl``), zipped
        into a temporary file first. The name defaults to the file's or folder's.

        An Idempotency-Key is generated unless given, so a retried upload returns the same dataset.
        """
        source = Path(path)
        headers = idempotency_headers(idempotency_key)
        stem = (source.resolve().name if source.is_dir() else source.name) or "dataset"
        data = {"name": name or stem.removesuffix(".zip").removesuffix(".tar")}
        if source.is_dir():
            archive = zip_folder(source)
            try:
                return self._send(archive, f"{stem}.zip", data, headers)
            finally:
                archive.unlink(missing_ok=True)
        if not source.is_file():
            raise FileNotFoundError(f"no such file or folder: {source}")
        return self._send(source, source.name, data, headers)

    def _send(self, archive: Path, filename: str, data: dict[str, str], headers: dict[str, str]) -> Dataset:
        kind = "application/x-tar" if filename.endswith(".tar") else "application/zip"
        part = FilePart("file", filename, archive, kind)
        # An upload may take long: no read timeout while the server ingests.
        body = self._request(
            Request(
                "POST",
                "/v1/datasets",
                data=data,
                files=[part],
                headers=headers,
                timeout=self._client._upload_timeout,
            )
        )
        return Dataset.from_json(body)

    def list(self, *, limit: int | None = None, cursor: str | None = None) -> Page[Dataset]:
        """One page of datasets, newest first."""
        return self._page("/v1/datasets", Dataset.from_json, {"limit": limit, "cursor": cursor})

    def list_all(self, *, limit: int | None = None) -> Iterator[Dataset]:
        """Every dataset, newest first, fetching further pages as needed."""
        return self._all(self.list(limit=limit))

    def get(self, dataset_id: str) -> Dataset:
        return Dataset.from_json(self._get(f"/v1/datasets/{segment(dataset_id)}"))

    def delete(self, dataset_id: str) -> None:
        self._request(Request("DELETE", f"/v1/datasets/{segment(dataset_id)}"))
