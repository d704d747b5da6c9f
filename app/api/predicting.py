"""Shared parts of the prediction routes: reading images, locating checkpoints, mapping library errors."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from fastapi import Request
from PIL import Image
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api.errors import ApiError, not_found
from app.api.uploads import MultipartForm, read_multipart
from app.core.backbones import BackboneRegistry
from app.core.db import repo
from app.core.db.tables import TunedModel
from app.core.settings import Settings
from app.core.status import ACTIVE_STATUSES
from app.core.storage import Storage, StorageError
from app.ingest.images import ImageRejected, decode_image
from app.serving.engine import InferenceEngine, Overloaded
from app.serving.lane import DeadlineExceeded
from models import BackboneSpec, PromptuneError, predict_topk

log = logging.getLogger("promptune.api")
CHECKPOINT_ERROR_CODES = ("checksum_mismatch", "invalid_checkpoint")


def read_images(form: MultipartForm, settings: Settings) -> list[Image.Image]:
    files = form.files.get("images", [])
    if not files:
        raise ApiError(
            422, "invalid_request", "at least one file is required in field 'images'", param="images"
        )
    images = []
    for index, upload in enumerate(files):
        if upload.size > settings.max_member_bytes:
            raise ApiError(
                413, "too_large", f"images[{index}] exceeds {settings.max_member_bytes} bytes", param="images"
            )
        try:
            images.append(decode_image(upload.path.read_bytes(), max_pixels=settings.max_image_pixels))
        except ImageRejected as exc:
            raise ApiError(
                422, exc.code, f"images[{index}] ({upload.filename}): {exc.message}", param="images"
            ) from None
    return images


async def read_predict_form(
    request: Request, settings: Settings, text_fields: frozenset[str] = frozenset({"top_k"})
) -> MultipartForm:
    """A prediction request's multipart body: up to ``max_predict_images`` files in ``images`` and the
    route's text fields, under the upload byte cap. The caller calls ``form.cleanup()``."""
    return await read_multipart(
        request,
        max_bytes=settings.max_upload_bytes,
        tmp_root=settings.data_dir / "tmp",
        file_fields={"images": settings.max_predict_images},
        text_fields=set(text_fields),
    )


def parse_top_k(form: MultipartForm, settings: Settings, default: int = 5) -> int:
    raw = form.text("top_k")
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, "invalid_request", "top_k must be an integer", param="top_k") from None
    if not 1 <= value <= settings.max_top_k:
        raise ApiError(
            422, "invalid_request", f"top_k must be between 1 and {settings.max_top_k}", param="top_k"
        )
    return value


def ready_model(
    *, session: Session, tenant_id: str, model_id: str, storage: Storage, param: str = "model_id"
) -> tuple[TunedModel, Path]:
    """The tenant's model row and a local path to its checkpoint; 409 model_not_ready while it has none."""
    row = repo.get_model(session=session, tenant_id=tenant_id, model_id=model_id)
    if row is None:
        job = repo.get_job(session=session, tenant_id=tenant_id, job_id=model_id)
        if job is not None and job.status in ACTIVE_STATUSES:
            raise ApiError(
                409, "model_not_ready", f"job {model_id} has not produced a model yet", param=param
            )
        raise not_found("model", param)
    try:
        path = storage.get_local_path(row.checkpoint_key)
    except StorageError:
        raise ApiError(
            409, "model_not_ready", f"model {model_id} has no checkpoint stored yet", param=param
        ) from None
    return row, path


def model_backbone_spec(row: TunedModel, checkpoint: Path, registry: BackboneRegistry) -> BackboneSpec:
    """The registry's spec for the model's backbone, else the one stored in the checkpoint."""
    spec = registry.get(row.backbone)
    if spec is not None:
        return spec
    from models import read_checkpoint_metadata

    meta = read_checkpoint_metadata(checkpoint)
    return BackboneSpec.from_dict(meta["backbone"])


def library_error(exc: Exception, *, model_id: str | None = None) -> ApiError:
    """Map a models.errors.PromptuneError raised while loading/predicting to an API error.

    A refused checkpoint (sha256 mismatch, torn or malformed file) of ``model_id`` is also logged as an
    error naming the model, so that operators see tampering or storage corruption.
    """
    from models import WeightsNotFoundError

    code = getattr(exc, "code", "internal")
    message = getattr(exc, "message", str(exc))
    if model_id is not None and code in CHECKPOINT_ERROR_CODES:
        log.error("checkpoint of model %s refused (%s): %s", model_id, code, message)
    if isinstance(exc, WeightsNotFoundError):
        return ApiError(503, code, message)
    return ApiError(409, code, message)


def verify_stored_checkpoint(row: TunedModel, path: Path) -> None:
    """409 ``checksum_mismatch`` / ``invalid_checkpoint`` unless the stored file is the one recorded."""
    from models import PromptuneError, read_checkpoint_metadata, verify_sha256

    try:
        verify_sha256(path, row.checkpoint_sha256)
        read_checkpoint_metadata(path)
    except PromptuneError as exc:
        raise library_error(exc, model_id=row.id) from None


def as_predictions(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"predictions": rows}


async def run_prediction(
    engine: InferenceEngine,
    prepare: Callable[[], tuple[Any, torch.Tensor, list[str]]],
    *,
    backbone: str,
    tenant_id: str,
    top_k: int,
    model_id: str | None = None,
) -> dict[str, Any]:
    """Predictions through the serving engine: ``prepare`` (in the threadpool: model loading and image
    transforms are CPU work) gives the target, its preprocessed images and its class names; the forward
    runs batched with other requests on ``backbone``'s lane."""
    try:
        target, batch, class_names = await run_in_threadpool(prepare)
        logits = await engine.logits(backbone=backbone, target=target, images=batch, tenant_id=tenant_id)
    except PromptuneError as exc:
        raise library_error(exc, model_id=model_id) from None
    except Overloaded as exc:
        raise ApiError(
            exc.status, exc.code, exc.message, headers={"Retry-After": str(exc.retry_after)}
        ) from None
    except DeadlineExceeded as exc:
        raise ApiError(503, exc.code, exc.message, headers={"Retry-After": "1"}) from None
    return as_predictions(predict_topk(logits, class_names, top_k))
