"""Zero-shot classifiers: create (text features computed once and stored; idempotent), list, get, delete,
predict.

A classifier is class names (+ templates) on an open_clip backbone, optionally driven by the prompts of a
tuned model of a zero-shot method (rpp). Its text features are computed at creation, or found in the
tenant's text-feature store (app/text_features.py), so predictions never pay for them. The model is kept
as a plain id: once it is deleted, the classifier's predictions answer 409 ``model_deleted``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import torch
from fastapi import APIRouter, Header, Query, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api.deps import InferenceDep, RegistryDep, ServingDep, SessionDep, SettingsDep, StorageDep, TenantDep
from app.api.errors import ApiError, error_responses, not_found
from app.api.paging import PageDep, page_of
from app.api.predicting import (
    library_error,
    parse_top_k,
    read_images,
    read_predict_form,
    ready_model,
    run_prediction,
)
from app.api.uploads import multipart_openapi
from app.core.backbones import BackboneRegistry
from app.core.db import repo
from app.core.db.tables import Classifier, TunedModel
from app.core.job_plan import JobConfigError, resolve_backbone
from app.core.settings import Settings
from app.core.storage import Storage
from app.inference import InferenceCache, images_to_batch
from app.schemas import ClassifierCreate, ClassifierPublic, Page, PredictionResponse
from app.text_features import TextFeatureEntry, TextFeatureStore
from models import BackboneSpec, PromptuneError, method_entries

router = APIRouter(prefix="/v1/classifiers", tags=["classifiers"], responses=error_responses(401, 422))

ZERO_SHOT_FAMILY = "open_clip"  # class names are read through a CLIP text tower
_PREDICT_DOC = multipart_openapi(
    {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "top_k": {"type": "integer", "minimum": 1},
    },
    ["images"],
)


@dataclass(frozen=True)
class _Target:
    """What classifies: the backbone (registry name and spec) and the tuned model with its checkpoint."""

    backbone: str
    spec: BackboneSpec
    model: TunedModel | None = None
    checkpoint: Path | None = None


def _backbone_spec(name: str, registry: BackboneRegistry, *, status: int = 422) -> BackboneSpec:
    try:
        return resolve_backbone(name, registry.specs, family=ZERO_SHOT_FAMILY, user="a zero-shot classifier")
    except JobConfigError as exc:
        raise ApiError(status, exc.code, exc.message, param="backbone") from None


def _creation_target(
    body: ClassifierCreate,
    *,
    session: Session,
    tenant_id: str,
    storage: Storage,
    registry: BackboneRegistry,
    settings: Settings,
) -> _Target:
    """The backbone asked for (default: the server's open_clip one), or the tuned model's."""
    if body.model_id is None:
        name = body.backbone or registry.default_for(ZERO_SHOT_FAMILY, settings.default_backbone)
        if name is None:
            raise ApiError(
                422,
                "unknown_backbone",
                "no open_clip backbone is registered on this server",
                param="backbone",
            )
        return _Target(name, _backbone_spec(name, registry))
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
    return _Target(row.backbone, _backbone_spec(row.backbone, registry), row, checkpoint)


def _prediction_target(
    row: Classifier, *, session: Session, tenant_id: str, storage: Storage, registry: BackboneRegistry
) -> _Target:
    """The classifier's backbone and model as they are now: 409 when either is gone."""
    spec = _backbone_spec(row.backbone, registry, status=409)  # removed from the server's registry
    if row.model_id is None:
        return _Target(row.backbone, spec)
    try:
        model, checkpoint = ready_model(
            session=session, tenant_id=tenant_id, model_id=row.model_id, storage=storage
        )
    except ApiError as exc:
        if exc.status_code != 404:
            raise
        raise ApiError(
            409,
            "model_deleted",
            f"the tuned model {row.model_id} of this classifier was deleted; create another classifier",
            param="classifier_id",
        ) from None
    return _Target(row.backbone, spec, model, checkpoint)


def _classifier(
    inference: InferenceCache,
    storage: Storage,
    tenant_id: str,
    target: _Target,
    classes: list[str],
    templates: list[str] | None,
) -> tuple[Any, TextFeatureEntry]:
    """The models.ZeroShotClassifier with its text features in place (cached, stored or computed)."""
    method = prompts_sha256 = None
    if target.model is not None:
        method = inference.tuned_method(
            model_id=target.model.id,
            sha256=target.model.checkpoint_sha256,
            checkpoint_path=str(target.checkpoint),
            spec=target.spec,
        )
        prompts_sha256 = target.model.checkpoint_sha256
    return inference.zero_shot_features(
        tenant_id=tenant_id,
        store=TextFeatureStore(storage),
        spec=target.spec,
        classes=classes,
        templates=templates,
        method=method,
        prompts_sha256=prompts_sha256,
    )


def _request_sha256(body: ClassifierCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _idempotency_conflict() -> ApiError:
    return ApiError(
        409,
        "idempotency_conflict",
        "this Idempotency-Key was used with a different request",
        param="Idempotency-Key",
    )


def _owned(session: Session, tenant_id: str, classifier_id: str) -> Classifier:
    row = repo.get_classifier(session=session, tenant_id=tenant_id, classifier_id=classifier_id)
    if row is None:
        raise not_found("classifier", "classifier_id")
    return row


@router.post(
    "",
    status_code=201,
    response_model=ClassifierPublic,
    responses={
        200: {"model": ClassifierPublic, "description": "a retried create with the same Idempotency-Key"},
        **error_responses(400, 404, 409, 503),
    },
    name="create_classifier",
    summary="Create a zero-shot classifier",
)
def create_classifier(
    body: ClassifierCreate,
    response: Response,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    storage: StorageDep,
    registry: RegistryDep,
    inference: InferenceDep,
    idempotency_key: Annotated[
        str | None,
        Header(max_length=200, description="a retry with the same key and body returns the classifier"),
    ] = None,
) -> ClassifierPublic:
    fingerprint = _request_sha256(body)
    if idempotency_key is not None:
        existing = repo.get_classifier_by_idempotency_key(
            session=session, tenant_id=tenant.id, key=idempotency_key
        )
        if existing is not None:  # a retry: nothing is computed again
            if existing.request_sha256 != fingerprint:
                raise _idempotency_conflict()
            response.status_code = 200
            return ClassifierPublic.from_row(existing)
    target = _creation_target(
        body, session=session, tenant_id=tenant.id, storage=storage, registry=registry, settings=settings
    )
    try:
        classifier, entry = _classifier(inference, storage, tenant.id, target, body.classes, body.templates)
    except PromptuneError as exc:
        raise library_error(exc, model_id=body.model_id) from None
    try:
        row, created = repo.create_classifier_once(
            session=session,
            tenant_id=tenant.id,
            idempotency_key=idempotency_key,
            request_sha256=fingerprint,
            name=body.name,
            backbone=target.backbone,
            classes=list(classifier.class_names),
            templates=list(classifier.templates),  # the effective ones: the defaults when none were given
            model_id=body.model_id,
            text_features_key=entry.storage_key,
            text_features_sha256=entry.sha256,
            text_features_cached=entry.cached,
            text_features_seconds=round(entry.seconds, 6),
        )
    except repo.IdempotencyConflict:
        raise _idempotency_conflict() from None
    if not created:  # a concurrent create with the same key won
        response.status_code = 200
    return ClassifierPublic.from_row(row)


@router.get(
    "",
    response_model=Page[ClassifierPublic],
    summary="List zero-shot classifiers",
    responses=error_responses(400),
)
def list_classifiers(
    session: SessionDep,
    tenant: TenantDep,
    page: PageDep,
    backbone: Annotated[str | None, Query(max_length=200, description="only this backbone's")] = None,
) -> dict[str, Any]:
    rows, more = repo.list_classifiers(session=session, tenant_id=tenant.id, page=page, backbone=backbone)
    return page_of(rows, more, ClassifierPublic.from_row)


@router.get(
    "/{classifier_id}",
    response_model=ClassifierPublic,
    responses=error_responses(404),
    name="get_classifier",
    summary="Get a zero-shot classifier",
)
def get_classifier(classifier_id: str, session: SessionDep, tenant: TenantDep) -> ClassifierPublic:
    return ClassifierPublic.from_row(_owned(session, tenant.id, classifier_id))


@router.delete(
    "/{classifier_id}",
    status_code=204,
    responses=error_responses(404),
    name="delete_classifier",
    summary="Delete a zero-shot classifier",
)
def delete_classifier(
    classifier_id: str, session: SessionDep, tenant: TenantDep, storage: StorageDep
) -> Response:
    key = _owned(session, tenant.id, classifier_id).text_features_key
    repo.delete_classifier(session=session, tenant_id=tenant.id, classifier_id=classifier_id)
    session.commit()
    # After the commit, and only when no other classifier of the tenant shares them: the tenant's
    # ad-hoc zero-shot requests for the same classes recompute them when they next ask.
    if not repo.text_features_in_use(session=session, tenant_id=tenant.id, key=key):
        storage.delete(key)
    return Response(status_code=204)


@router.post(
    "/{classifier_id}/predict",
    response_model=PredictionResponse,
    openapi_extra=_PREDICT_DOC,
    responses=error_responses(400, 404, 409, 413, 415, 422, 503),
    name="predict_with_classifier",
    summary="Classify images with a zero-shot classifier",
)
async def predict(
    classifier_id: str,
    request: Request,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    storage: StorageDep,
    registry: RegistryDep,
    inference: InferenceDep,
    serving: ServingDep,
) -> dict[str, Any]:
    # In the threadpool: a blocking database call on the event loop can deadlock it under load.
    row = await run_in_threadpool(_owned, session, tenant.id, classifier_id)
    classes, templates, model_id = list(row.classes), list(row.templates), row.model_id
    target = await run_in_threadpool(
        partial(
            _prediction_target, row, session=session, tenant_id=tenant.id, storage=storage, registry=registry
        )
    )
    form = await read_predict_form(request, settings)
    try:
        top_k = parse_top_k(form, settings)
        images = await run_in_threadpool(read_images, form, settings)  # decoding is CPU work
    finally:
        form.cleanup()

    def prepare() -> tuple[Any, torch.Tensor, list[str]]:
        classifier, _ = _classifier(inference, storage, tenant.id, target, classes, templates)
        return classifier, images_to_batch(images, classifier.backbone), list(classifier.class_names)

    return await run_prediction(
        serving, prepare, backbone=row.backbone, tenant_id=tenant.id, top_k=top_k, model_id=model_id
    )
