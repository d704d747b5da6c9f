"""A tuned model's evaluation report, its plots, its model card and a zip archive of all of it.

The worker writes the report into ``tuned_models.report`` and the plots and the card into storage beside
the checkpoint (worker/model_report.py, worker/report_assets.py; docs/reports.md). A model of another
tenant is 404 ``not_found``; a model stored without a report (before reports existed, or trained
without a held-out split) is 404 ``report_not_available``.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

from fastapi import APIRouter, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask

from app.api.deps import SessionDep, SettingsDep, StorageDep, TenantDep
from app.api.errors import ApiError, error_responses, not_found
from app.api.predicting import ready_model, verify_stored_checkpoint
from app.core.db import repo
from app.core.db.tables import TunedModel
from app.core.storage import MODEL_CARD_FILE, MODEL_PLOT_FILES, Storage, StorageError, model_asset_key
from app.schemas.reports import ModelReport

router = APIRouter(prefix="/v1/models", tags=["models"], responses=error_responses(401, 404))

ARCHIVE_CHECKPOINT = "model.safetensors"
ARCHIVE_REPORT = "report.json"


def _reported_model(session: Session, tenant_id: str, model_id: str) -> TunedModel:
    row = repo.get_model(session=session, tenant_id=tenant_id, model_id=model_id)
    if row is None:
        raise not_found("model", "model_id")
    if row.report is None:
        raise ApiError(
            404,
            "report_not_available",
            f"model {model_id} has no evaluation report (stored before reports existed, "
            "or trained without a test or validation split)",
            param="model_id",
        )
    return row


def _asset(storage: Storage, row: TunedModel, name: str) -> bytes:
    try:
        return storage.read_bytes(model_asset_key(row.tenant_id, row.id, name))
    except StorageError:
        raise ApiError(
            404, "report_not_available", f"model {row.id} has no {name} stored", param="model_id"
        ) from None


def _report_json(row: TunedModel) -> bytes:
    report = ModelReport.model_validate(row.report)
    return json.dumps(report.model_dump(mode="json"), indent=2, ensure_ascii=False).encode("utf-8")


@router.get(
    "/{model_id}/report",
    response_model=ModelReport,
    name="get_model_report",
    summary="Get a model's evaluation report",
)
def get_model_report(model_id: str, session: SessionDep, tenant: TenantDep) -> ModelReport:
    """Metrics on the held-out split (test, else validation), per class and as a confusion matrix, with
    every epoch's training history and the learning-rate search when there was one."""
    return ModelReport.model_validate(_reported_model(session, tenant.id, model_id).report)


@router.get(
    "/{model_id}/plots/{name}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "the plot"}},
    name="get_model_plot",
    summary="Get a plot of a model's report",
)
def get_model_plot(
    model_id: str,
    session: SessionDep,
    tenant: TenantDep,
    storage: StorageDep,
    name: str = PathParam(description="training_curves or confusion_matrix"),
) -> Response:
    """``training_curves``: loss and accuracy per epoch (train and validation); ``confusion_matrix``: true
    class by predicted class on the report's split."""
    if name not in MODEL_PLOT_FILES:
        raise ApiError(
            404, "not_found", f"no plot {name!r}; plots: {', '.join(MODEL_PLOT_FILES)}", param="name"
        )
    row = _reported_model(session, tenant.id, model_id)
    return Response(_asset(storage, row, MODEL_PLOT_FILES[name]), media_type="image/png")


@router.get(
    "/{model_id}/card",
    response_class=Response,
    responses={200: {"content": {"text/markdown": {}}, "description": "the model card"}},
    name="get_model_card",
    summary="Get a model's card (markdown)",
)
def get_model_card(model_id: str, session: SessionDep, tenant: TenantDep, storage: StorageDep) -> Response:
    """A README in the style of Hugging Face model cards: backbone, data, recipe, results, limitations."""
    row = _reported_model(session, tenant.id, model_id)
    return Response(_asset(storage, row, MODEL_CARD_FILE), media_type="text/markdown; charset=utf-8")


@router.get(
    "/{model_id}/archive",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/zip": {}}, "description": "checkpoint, card, report and plots"},
        **error_responses(409),
    },
    name="download_model_archive",
    summary="Download a model with its card, report and plots (zip)",
)
def download_model_archive(
    model_id: str, session: SessionDep, tenant: TenantDep, storage: StorageDep, settings: SettingsDep
) -> FileResponse:
    """A zip of ``model.safetensors`` (verified against the recorded sha256), ``README.md`` (the card),
    ``report.json`` and the two plots."""
    row = _reported_model(session, tenant.id, model_id)
    _, checkpoint = ready_model(session=session, tenant_id=tenant.id, model_id=model_id, storage=storage)
    verify_stored_checkpoint(row, checkpoint)  # never hand out torn or tampered bytes
    members = {
        MODEL_CARD_FILE: _asset(storage, row, MODEL_CARD_FILE),
        ARCHIVE_REPORT: _report_json(row),
        **{file: _asset(storage, row, file) for file in MODEL_PLOT_FILES.values()},
    }
    tmp_dir = Path(settings.data_dir) / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=tmp_dir, suffix=".zip", delete=False) as handle:
        archive = Path(handle.name)
    try:
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            # Tensors barely compress: stored as they are, so the zip costs no CPU for the bulk of it.
            zf.write(checkpoint, ARCHIVE_CHECKPOINT, compress_type=zipfile.ZIP_STORED)
            for name, content in members.items():
                zf.writestr(name, content)
    except BaseException:
        archive.unlink(missing_ok=True)
        raise
    return FileResponse(
        archive,
        media_type="application/zip",
        filename=f"{row.id}.zip",
        headers={"X-Checkpoint-SHA256": row.checkpoint_sha256},
        background=BackgroundTask(archive.unlink, missing_ok=True),
    )
