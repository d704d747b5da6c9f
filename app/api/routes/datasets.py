"""Datasets: upload (a zip or WebDataset tar, streamed to disk under a cap), list, get, delete."""

from __future__ import annotations

from pathlib import PurePosixPath

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from app.api.deps import SessionDep, SettingsDep, StorageDep, TenantDep
from app.api.errors import ApiError, error_responses, not_found
from app.api.uploads import multipart_openapi, read_multipart
from app.core.db import repo
from app.core.db.tables import Dataset, new_id
from app.core.storage import dataset_prefix, temp_dir
from app.ingest.archive import ArchiveLimits
from app.ingest.datasets import DatasetRejected, IngestLimits, ingest_archive
from app.schemas import MAX_SQL_INTEGER, DatasetPublic, ErrorResponse

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=error_responses(401, 422))

_STATUS = {"too_large": 413}
_UPLOAD_DOC = multipart_openapi(
    {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "ImageFolder zip (optional train/ val/ test/), zip with manifest.csv|jsonl, or WebDataset tar",
        },
        "name": {"type": "string", "maxLength": 200},
    },
    ["file"],
)


def _dataset_name(given: str | None, filename: str) -> str:
    name = (given or PurePosixPath(filename).stem).strip()[:200]
    return name or "dataset"


@router.post(
    "",
    status_code=201,
    response_model=DatasetPublic,
    openapi_extra=_UPLOAD_DOC,
    responses=error_responses(400, 413, 415, 422),
)
async def create_dataset(
    request: Request, session: SessionDep, tenant: TenantDep, settings: SettingsDep, storage: StorageDep
) -> DatasetPublic:
    form = await read_multipart(
        request,
        max_bytes=settings.max_upload_bytes,
        tmp_root=settings.data_dir / "tmp",
        file_fields={"file": 1},
        text_fields={"name"},
    )
    try:
        upload = form.file("file")
        name = _dataset_name(form.text("name"), upload.filename)
        limits = IngestLimits(
            ArchiveLimits.from_settings(settings), settings.max_image_pixels, settings.min_images_per_dataset
        )
        dataset_id = new_id()
        prefix = dataset_prefix(tenant.id, dataset_id)
        with temp_dir(storage, settings.data_dir) as work:
            try:
                result = await run_in_threadpool(ingest_archive, upload.path, work / "dataset", limits)
            except DatasetRejected as exc:
                raise ApiError(_STATUS.get(exc.code, 422), exc.code, exc.message, param="file") from None

            # Files first, the row last: a failure leaves no row pointing at missing files, and a
            # failed request removes whatever it had stored.
            # Database work runs in the threadpool like the storage I/O: a blocking call on the event
            # loop would deadlock it once concurrent requests exhaust the connection pool.
            def store_row() -> Dataset:
                row = repo.create_dataset(
                    session=session,
                    tenant_id=tenant.id,
                    id=dataset_id,
                    name=name,
                    status="ready",
                    num_images=result.num_images,
                    num_classes=len(result.classes),
                    classes=result.classes,
                    splits=result.splits,
                    report={"skipped": result.skipped},
                    storage_key=prefix,
                )
                session.commit()
                return row

            try:
                await run_in_threadpool(storage.put_dir, prefix, work / "dataset")
                row = await run_in_threadpool(store_row)
            except BaseException:
                await run_in_threadpool(session.rollback)
                await run_in_threadpool(storage.delete_prefix, prefix)
                raise
        return DatasetPublic.model_validate(row)
    finally:
        form.cleanup()


@router.get("", response_model=list[DatasetPublic])
def list_datasets(
    session: SessionDep,
    tenant: TenantDep,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=MAX_SQL_INTEGER),
) -> list[DatasetPublic]:
    rows = repo.list_datasets(session=session, tenant_id=tenant.id, limit=limit, offset=offset)
    return [DatasetPublic.model_validate(row) for row in rows]


@router.get("/{dataset_id}", response_model=DatasetPublic, responses={404: {"model": ErrorResponse}})
def get_dataset(dataset_id: str, session: SessionDep, tenant: TenantDep) -> DatasetPublic:
    row = repo.get_dataset(session=session, tenant_id=tenant.id, dataset_id=dataset_id)
    if row is None:
        raise not_found("dataset", "dataset_id")
    return DatasetPublic.model_validate(row)


@router.delete(
    "/{dataset_id}", status_code=204, responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}}
)
def delete_dataset(dataset_id: str, session: SessionDep, tenant: TenantDep, storage: StorageDep) -> Response:
    row = repo.get_dataset(session=session, tenant_id=tenant.id, dataset_id=dataset_id)
    if row is None:
        raise not_found("dataset", "dataset_id")
    if repo.dataset_in_use(session=session, tenant_id=tenant.id, dataset_id=dataset_id):
        raise ApiError(
            409, "dataset_in_use", "the dataset is used by a queued or running job", param="dataset_id"
        )
    prefix = row.storage_key
    repo.delete_dataset(session=session, tenant_id=tenant.id, dataset_id=dataset_id)
    session.commit()
    storage.delete_prefix(prefix)  # after the commit: a failed delete never leaves a row without files
    return Response(status_code=204)
