"""Zero-shot prediction with an open_clip backbone, optionally with a zero-shot method's learned prompts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from fastapi import APIRouter, Request
from PIL import Image
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api.deps import InferenceDep, RegistryDep, ServingDep, SessionDep, SettingsDep, StorageDep, TenantDep
from app.api.errors import ApiError, error_responses
from app.api.predicting import parse_top_k, read_images, read_predict_form, ready_model, run_prediction
from app.api.uploads import MultipartForm, multipart_openapi
from app.core.backbones import BackboneRegistry
from app.core.db.tables import TunedModel
from app.core.job_plan import JobConfigError, resolve_backbone
from app.core.settings import Settings
from app.core.storage import Storage
from app.inference import images_to_batch
from app.schemas import PredictionResponse
from app.text_features import TextFeatureStore
from models import BackboneSpec, method_entries

router = APIRouter(prefix="/v1/predict", tags=["predict"], responses=error_responses(401, 422))

MAX_CLASSES = 1000
ZERO_SHOT_FIELDS = frozenset({"classes", "templates", "backbone", "model_id", "top_k"})
ZERO_SHOT_FAMILY = "open_clip"  # zero-shot classification reads class names through a CLIP text tower
MAX_TEMPLATES = 64
MAX_TEXT_CHARS = 200

_DOC = multipart_openapi(
    {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "classes": {"type": "string", "description": 'JSON list of class names, e.g. ["cat", "dog"]'},
        "templates": {"type": "string", "description": 'JSON list of prompt templates containing "{}"'},
        "backbone": {"type": "string", "description": "an open_clip backbone (default: the server's)"},
        "model_id": {
            "type": "string",
            "description": "a model of a zero-shot method (e.g. rpp) whose prompts to use",
        },
        "top_k": {"type": "integer", "minimum": 1},
    },
    ["images", "classes"],
)


def _json_list(form: MultipartForm, name: str, *, required: bool, limit: int) -> list[str] | None:
    raw = form.text(name)
    if raw is None or not raw.strip():
        if required:
            raise ApiError(422, "invalid_request", f"{name} is required (a JSON list of strings)", param=name)
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise ApiError(422, "invalid_request", f"{name} must be a JSON list of strings", param=name) from None
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, str) and v.strip() and len(v) <= MAX_TEXT_CHARS for v in value)
    ):
        raise ApiError(
            422,
            "invalid_request",
            f"{name} must be a non-empty JSON list of strings (each 1-{MAX_TEXT_CHARS} chars)",
            param=name,
        )
    if len(value) > limit:
        raise ApiError(422, "invalid_request", f"at most {limit} {name}", param=name)
    return [v.strip() for v in value]


@dataclass
class _ZeroShotRequest:
    classes: list[str]
    templates: list[str] | None
    top_k: int
    backbone: str | None
    model_id: str | None
    images: list[Image.Image]


async def _read_request(request: Request, settings: Settings) -> _ZeroShotRequest:
    form = await read_predict_form(request, settings, ZERO_SHOT_FIELDS)
    try:
        classes = _json_list(form, "classes", required=True, limit=MAX_CLASSES) or []
        if len(set(classes)) != len(classes):
            raise ApiError(422, "invalid_request", "class names must be unique", param="classes")
        templates = _json_list(form, "templates", required=False, limit=MAX_TEMPLATES)
        if templates is not None and not all("{}" in t for t in templates):
            raise ApiError(422, "invalid_request", 'every template must contain "{}"', param="templates")
        top_k = min(parse_top_k(form, settings), len(classes))
        backbone = (form.text("backbone") or "").strip() or None
        model_id = (form.text("model_id") or "").strip() or None
        images = await run_in_threadpool(read_images, form, settings)  # decoding is CPU work
    finally:
        form.cleanup()
    return _ZeroShotRequest(classes, templates, top_k, backbone, model_id, images)


def _zero_shot_model(
    body: _ZeroShotRequest, *, session: Session, tenant_id: str, storage: Storage
) -> tuple[TunedModel, Path]:
    """The tuned model whose prompts classify (one of a zero-shot method), on the backbone asked for."""
    assert body.model_id is not None
    row, checkpoint = ready_model(
        session=session, tenant_id=tenant_id, model_id=body.model_id, storage=storage
    )
    zero_shot_methods = [e.name for e in method_entries() if e.can("zero_shot")]
    if row.method not in zero_shot_methods:
        raise ApiError(
            422,
            "invalid_request",
            f"model_id must be a model of a zero-shot method ({', '.join(zero_shot_methods)})",
            param="model_id",
        )
    if body.backbone is not None and body.backbone != row.backbone:
        raise ApiError(
            422, "invalid_request", f"model {row.id} runs on backbone {row.backbone!r}", param="backbone"
        )
    return row, checkpoint


def _zero_shot_backbone(
    name: str | None, registry: BackboneRegistry, settings: Settings
) -> tuple[str, BackboneSpec]:
    """The backbone's registry name and spec (the default open_clip backbone when none is named)."""
    name = name or registry.default_for(ZERO_SHOT_FAMILY, settings.default_backbone)
    if name is None:
        raise ApiError(
            422, "unknown_backbone", "no open_clip backbone is registered on this server", param="backbone"
        )
    try:
        return name, resolve_backbone(
            name, registry.specs, family=ZERO_SHOT_FAMILY, user="zero-shot prediction"
        )
    except JobConfigError as exc:
        raise ApiError(422, exc.code, exc.message, param="backbone") from None


@router.post(
    "/zero-shot",
    response_model=PredictionResponse,
    openapi_extra=_DOC,
    responses=error_responses(400, 404, 409, 413, 415, 422, 503),
    name="predict_zero_shot",
    summary="Classify images zero-shot against class names",
)
async def zero_shot(
    request: Request,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    storage: StorageDep,
    registry: RegistryDep,
    inference: InferenceDep,
    serving: ServingDep,
) -> dict[str, Any]:
    body = await _read_request(request, settings)
    row = checkpoint = None
    if body.model_id is not None:
        # In the threadpool: a blocking database call on the event loop can deadlock it under load.
        row, checkpoint = await run_in_threadpool(
            partial(_zero_shot_model, body, session=session, tenant_id=tenant.id, storage=storage)
        )
    name, spec = _zero_shot_backbone(row.backbone if row is not None else body.backbone, registry, settings)

    def prepare() -> tuple[Any, torch.Tensor, list[str]]:
        method = prompts_sha256 = None
        if row is not None:
            method = inference.tuned_method(
                model_id=row.id, sha256=row.checkpoint_sha256, checkpoint_path=str(checkpoint), spec=spec
            )
            prompts_sha256 = row.checkpoint_sha256
        # The classifier comes with its text features in place (persisted per tenant, app/text_features.py),
        # so the lane only runs the image forward.
        classifier, _ = inference.zero_shot_features(
            tenant_id=tenant.id,
            store=TextFeatureStore(storage),
            spec=spec,
            classes=body.classes,
            templates=body.templates,
            method=method,
            prompts_sha256=prompts_sha256,
        )
        return classifier, images_to_batch(body.images, classifier.backbone), list(classifier.class_names)

    model_id = row.id if row is not None else None
    return await run_prediction(
        serving, prepare, backbone=name, tenant_id=tenant.id, top_k=body.top_k, model_id=model_id
    )
