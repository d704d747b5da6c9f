"""A dataset's preview for the web console: counts per class and split, sample images and their thumbnails.

Both read the stored manifest (``datasets/<tenant>/<id>/manifest.jsonl``, written by app/ingest) through
the Storage API. A thumbnail is never the stored bytes: the image is decoded with the ingest's own limits
(app/ingest/images.py: format allow-list, pixel cap, bomb check) and re-encoded as a PNG by Pillow, so
whatever an upload held, the browser only ever receives a PNG we wrote.
"""

from __future__ import annotations

import io
import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from sqlalchemy.orm import Session

from app.api.deps import SessionDep, SettingsDep, StorageDep, TenantDep
from app.api.errors import ApiError, error_responses, not_found
from app.core.db import repo
from app.core.db.tables import Dataset
from app.core.storage import Storage, StorageError
from app.ingest.datasets import UNSPLIT
from app.ingest.images import ImageRejected, decode_image
from app.schemas.dataset_preview import PREVIEW_MAX_PER_CLASS, DatasetPreview, PreviewSample

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=error_responses(401, 404))

THUMBNAIL_SIZE = 128
_SPLIT_ORDER = ("train", "val", "test", UNSPLIT)
# The ingest names every stored image itself; anything else in a manifest line is not ours to open.
_IMAGE_PATH = re.compile(r"images/[0-9]+\.(?:jpg|png|webp|bmp|gif)")
_THUMBNAIL_HEADERS = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}


def _dataset(session: Session, tenant_id: str, dataset_id: str) -> Dataset:
    row = repo.get_dataset(session=session, tenant_id=tenant_id, dataset_id=dataset_id)
    if row is None:
        raise not_found("dataset", "dataset_id")
    return row


def _manifest_rows(storage: Storage, row: Dataset) -> list[dict[str, Any]]:
    """The manifest's lines, in order (line n is image index n)."""
    try:
        text = storage.read_bytes(f"{row.storage_key}/manifest.jsonl").decode("utf-8")
    except StorageError:
        raise ApiError(404, "not_found", "the dataset's files are not stored", param="dataset_id") from None
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def build_preview(classes: list[str], rows: list[dict[str, Any]], per_class: int) -> DatasetPreview:
    """Counts per class and split, and the first ``per_class`` images of each class in manifest order."""
    counts: dict[str, dict[str, int]] = {name: {} for name in classes}
    samples: list[PreviewSample] = []
    for index, line in enumerate(rows):
        label, split = str(line["label"]), line.get("split")
        per_split = counts.setdefault(label, {})  # a label the row lacks (never, after ingest) still shows
        taken = sum(per_split.values())
        per_split[split or UNSPLIT] = per_split.get(split or UNSPLIT, 0) + 1
        if taken < per_class:
            samples.append(PreviewSample(index=index, label=label, split=split))
    ordered = {
        label: {s: per_split[s] for s in sorted(per_split, key=_split_rank)}
        for label, per_split in counts.items()
    }
    return DatasetPreview(class_counts=ordered, samples=samples)


def _split_rank(split: str) -> tuple[int, str]:
    return (_SPLIT_ORDER.index(split) if split in _SPLIT_ORDER else len(_SPLIT_ORDER), split)


@router.get(
    "/{dataset_id}/preview",
    response_model=DatasetPreview,
    name="get_dataset_preview",
    summary="Preview a dataset: images per class and split, and sample images",
)
def get_dataset_preview(
    dataset_id: str,
    session: SessionDep,
    tenant: TenantDep,
    storage: StorageDep,
    per_class: Annotated[
        int, Query(ge=0, le=PREVIEW_MAX_PER_CLASS, description="sample images listed per class")
    ] = 3,
) -> DatasetPreview:
    """Counts come from the stored manifest; each sample's ``index`` names its thumbnail
    (``GET /v1/datasets/{dataset_id}/samples/{index}/thumbnail``)."""
    row = _dataset(session, tenant.id, dataset_id)
    return build_preview(list(row.classes), _manifest_rows(storage, row), per_class)


@router.get(
    "/{dataset_id}/samples/{index}/thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "a PNG of at most 128x128 pixels"}},
    name="get_dataset_sample_thumbnail",
    summary="Get a thumbnail of one of a dataset's images",
)
def get_dataset_sample_thumbnail(
    dataset_id: str,
    index: int,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> Response:
    """The image at line ``index`` of the manifest, re-encoded as a PNG of at most 128x128 pixels
    (aspect ratio kept)."""
    row = _dataset(session, tenant.id, dataset_id)
    rows = _manifest_rows(storage, row)
    if not 0 <= index < len(rows):
        raise not_found(f"image {index}", "index")
    path = str(rows[index].get("path", ""))
    if not _IMAGE_PATH.fullmatch(path):
        raise not_found(f"image {index}", "index")
    try:
        data = storage.read_bytes(f"{row.storage_key}/{path}")
        png = thumbnail_png(data, max_pixels=settings.max_image_pixels)
    except StorageError:
        raise not_found(f"image {index}", "index") from None
    except ImageRejected as exc:  # e.g. the pixel cap was lowered after the upload
        raise ApiError(
            409, exc.code, f"image {index} cannot be shown: {exc.message}", param="index"
        ) from None
    return Response(png, media_type="image/png", headers=_THUMBNAIL_HEADERS)


def thumbnail_png(data: bytes, *, max_pixels: int) -> bytes:
    """``data`` decoded under the ingest's limits, shrunk to fit 128x128 and written as a new PNG."""
    image = decode_image(data, max_pixels=max_pixels)  # fully loaded RGB: no palette or alpha surprises
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
