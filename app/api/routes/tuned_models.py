"""Tuned models: list, get, download the checkpoint, delete, predict."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any

import torch
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from app.api.deps import InferenceDep, RegistryDep, ServingDep, SessionDep, SettingsDep, StorageDep, TenantDep
from app.api.errors import ApiError, error_responses, not_found
from app.api.paging import PageDep, page_of
from app.api.predicting import (
    model_backbone_spec,
    parse_top_k,
    read_images,
    read_predict_form,
    ready_model,
    run_prediction,
    verify_stored_checkpoint,
)
from app.api.uploads import multipart_openapi
from app.core.db import repo
from app.core.storage import delete_model_files
from app.inference import images_to_batch
from app.schemas import ErrorResponse, Page, PredictionResponse, TunedModelPublic

router = APIRouter(prefix="/v1/models", tags=["models"], responses=error_responses(401, 422))

_PREDICT_DOC = multipart_openapi(
    {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "top_k": {"type": "integer", "minimum": 1},
    },
    ["images"],
)


@router.get(
    "", response_model=Page[TunedModelPublic], summary="List tuned models", responses=error_responses(400)
)
def list_models(
    session: SessionDep,
    tenant: TenantDep,
    page: PageDep,
    method: Annotated[str | None, Query(max_length=50)] = None,
    backbone: Annotated[str | None, Query(max_length=200)] = None,
    job_id: Annotated[str | None, Query(max_length=36, description="the job that trained it")] = None,
) -> dict[str, Any]:
    rows, more = repo.list_models(
        session=session, tenant_id=tenant.id, page=page, method=method, backbone=backbone, job_id=job_id
    )
    return page_of(rows, more, TunedModelPublic.model_validate)


@router.get(
    "/{model_id}",
    response_model=TunedModelPublic,
    responses={404: {"model": ErrorResponse}},
    name="get_model",
    summary="Get a tuned model",
)
def get_model(model_id: str, session: SessionDep, tenant: TenantDep) -> TunedModelPublic:
    row = repo.get_model(session=session, tenant_id=tenant.id, model_id=model_id)
    if row is None:
        raise not_found("model", "model_id")
    return TunedModelPublic.model_validate(row)


@router.get(
    "/{model_id}/checkpoint",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "the safetensors checkpoint"},
        404: {"model": ErrorResponse},
        409: {"model": ErrorResponse},
    },
    name="download_model_checkpoint",
    summary="Download the safetensors checkpoint",
)
def download_checkpoint(
    model_id: str, session: SessionDep, tenant: TenantDep, storage: StorageDep
) -> FileResponse:
    row, path = ready_model(session=session, tenant_id=tenant.id, model_id=model_id, storage=storage)
    verify_stored_checkpoint(row, path)  # never hand out torn or tampered bytes
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"{row.id}.safetensors",
        headers={"X-Checkpoint-SHA256": row.checkpoint_sha256},
    )


@router.delete(
    "/{model_id}",
    status_code=204,
    responses=error_responses(404, 409),
    name="delete_model",
    summary="Delete a tuned model",
)
def delete_model(model_id: str, session: SessionDep, tenant: TenantDep, storage: StorageDep) -> Response:
    row = repo.get_model(session=session, tenant_id=tenant.id, model_id=model_id)
    if row is None:
        raise not_found("model", "model_id")
    if repo.model_in_use(session=session, tenant_id=tenant.id, model_id=model_id):
        raise ApiError(
            409,
            "model_in_use",
            "a queued or running job starts from this model (init_from)",
            param="model_id",
        )
    key = row.checkpoint_key
    repo.delete_model(session=session, tenant_id=tenant.id, model_id=model_id)
    session.commit()
    delete_model_files(storage, tenant_id=tenant.id, model_id=model_id, checkpoint_key=key)
    return Response(status_code=204)


@router.post(
    "/{model_id}/predict",
    response_model=PredictionResponse,
    openapi_extra=_PREDICT_DOC,
    responses=error_responses(400, 404, 409, 413, 415, 422, 503),
    name="predict_with_model",
    summary="Classify images with a tuned model",
)
async def predict(
    model_id: str,
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
    row, checkpoint = await run_in_threadpool(
        partial(
            ready_model,
            session=session,
            tenant_id=tenant.id,
            model_id=model_id,
            storage=storage,
            param="model_id",
        )
    )
    form = await read_predict_form(request, settings)
    try:
        top_k = parse_top_k(form, settings)

        def prepare() -> tuple[Any, torch.Tensor, list[str]]:
            # One threadpool hop for the CPU work: decoding, the (cached) model and the transforms.
            images = read_images(form, settings)
            spec = model_backbone_spec(row, checkpoint, registry)
            method = inference.tuned_method(
                model_id=row.id, sha256=row.checkpoint_sha256, checkpoint_path=str(checkpoint), spec=spec
            )
            return method, images_to_batch(images, method.backbone), list(method.class_names)

        return await run_prediction(
            serving, prepare, backbone=row.backbone, tenant_id=tenant.id, top_k=top_k, model_id=row.id
        )
    finally:
        form.cleanup()
