"""Datasets: upload (a zip or WebDataset tar, streamed to disk under a cap; idempotent), list, get, delete."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api.deps import SessionDep, SettingsDep, StorageDep, TenantDep
from app.api.errors import ApiError, error_responses, not_found
from app.api.paging import PageDep, page_of
from app.api.uploads import multipart_openapi, read_multipart
from app.core.db import repo
from app.core.db.tables import Dataset, new_id
from app.core.settings import Settings
from app.core.shard_sets import ShardSetsError, load_shard_sets
from app.core.storage import Storage, dataset_prefix, temp_dir
from app.ingest.archive import ArchiveLimits
from app.ingest.datasets import DatasetRejected, IngestLimits, ingest_archive
from app.schemas import DatasetPublic, ErrorResponse, Page, ShardDatasetCreate

log = logging.getLogger("promptune.api")
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


@dataclass(frozen=True)
class _Upload:
    """The spooled upload file, the dataset's name and the Idempotency-Key with the upload's sha256."""

    path: Path
    name: str
    idempotency_key: str | None
    upload_sha256: str | None


@router.post(
    "",
    status_code=201,
    response_model=DatasetPublic,
    openapi_extra=_UPLOAD_DOC,
    responses={
        200: {"model": DatasetPublic, "description": "a retried upload with the same Idempotency-Key"},
        **error_responses(400, 409, 413, 415, 422),
    },
    name="create_dataset",
    summary="Upload a dataset (a zip of class folders)",
)
async def create_dataset(
    request: Request,
    response: Response,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    storage: StorageDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=200,
            description="a retry with the same key and the same upload returns the dataset created first",
        ),
    ] = None,
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
        upload_sha256 = None
        if idempotency_key is not None:
            upload_sha256 = await run_in_threadpool(_sha256_file, upload.path)
            existing = await run_in_threadpool(
                repo.get_dataset_by_idempotency_key, session=session, tenant_id=tenant.id, key=idempotency_key
            )
            if existing is not None:  # a retry: nothing is ingested or stored again
                if not repo.same_upload(existing, name=name, upload_sha256=upload_sha256):
                    raise _idempotency_conflict()
                response.status_code = 200
                return DatasetPublic.model_validate(existing)
        upload_ref = _Upload(upload.path, name, idempotency_key, upload_sha256)
        row, created = await _ingest_and_store(session, tenant.id, settings, storage, upload_ref)
        if not created:
            response.status_code = 200
        return DatasetPublic.model_validate(row)
    finally:
        form.cleanup()


async def _ingest_and_store(
    session: Session, tenant_id: str, settings: Settings, storage: Storage, upload: _Upload
) -> tuple[Dataset, bool]:
    """Ingest into a scratch folder, store the files, then insert the row; (row, created)."""
    limits = IngestLimits(
        ArchiveLimits.from_settings(settings), settings.max_image_pixels, settings.min_images_per_dataset
    )
    dataset_id = new_id()
    prefix = dataset_prefix(tenant_id, dataset_id)
    with temp_dir(storage, settings.data_dir) as work:
        try:
            result = await run_in_threadpool(ingest_archive, upload.path, work / "dataset", limits)
        except DatasetRejected as exc:
            raise ApiError(_STATUS.get(exc.code, 422), exc.code, exc.message, param="file") from None

        # Files first, the row last: a failure leaves no row pointing at missing files, and a
        # failed request removes whatever it had stored.
        # Database work runs in the threadpool like the storage I/O: a blocking call on the event
        # loop would deadlock it once concurrent requests exhaust the connection pool.
        def store_row() -> tuple[Dataset, bool]:
            return repo.create_dataset_once(
                session=session,
                tenant_id=tenant_id,
                name=upload.name,
                idempotency_key=upload.idempotency_key,
                upload_sha256=upload.upload_sha256,
                id=dataset_id,
                status="ready",
                num_images=result.num_images,
                num_classes=len(result.classes),
                classes=result.classes,
                splits=result.splits,
                report=result.report(),
                storage_key=prefix,
            )

        try:
            await run_in_threadpool(storage.put_dir, prefix, work / "dataset")
            row, created = await run_in_threadpool(store_row)
        except BaseException as exc:
            await run_in_threadpool(session.rollback)
            await run_in_threadpool(storage.delete_prefix, prefix)
            if isinstance(exc, repo.IdempotencyConflict):
                raise _idempotency_conflict() from None
            raise
    if not created:  # a concurrent upload with the same key won: its copy is the one kept
        await run_in_threadpool(storage.delete_prefix, prefix)
    return row, created


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _idempotency_conflict() -> ApiError:
    return ApiError(
        409,
        "idempotency_conflict",
        "this Idempotency-Key was used with a different upload",
        param="Idempotency-Key",
    )


@router.get(
    "",
    response_model=Page[DatasetPublic],
    summary="List datasets",
    responses=error_responses(400),
)
def list_datasets(session: SessionDep, tenant: TenantDep, page: PageDep) -> dict[str, Any]:
    rows, more = repo.list_datasets(session=session, tenant_id=tenant.id, page=page)
    return page_of(rows, more, DatasetPublic.model_validate)


@router.get(
    "/{dataset_id}",
    response_model=DatasetPublic,
    responses={404: {"model": ErrorResponse}},
    name="get_dataset",
    summary="Get a dataset and its import report",
)
def get_dataset(dataset_id: str, session: SessionDep, tenant: TenantDep) -> DatasetPublic:
    row = repo.get_dataset(session=session, tenant_id=tenant.id, dataset_id=dataset_id)
    if row is None:
        raise not_found("dataset", "dataset_id")
    return DatasetPublic.model_validate(row)


@router.post(
    "/shards",
    status_code=201,
    response_model=DatasetPublic,
    responses=error_responses(400, 404, 422, 503),
    name="create_shard_dataset",
    summary="Create a dataset that streams a registered shard set",
)
def create_shard_dataset(
    body: ShardDatasetCreate, session: SessionDep, tenant: TenantDep, settings: SettingsDep
) -> DatasetPublic:
    """Nothing is uploaded or copied: jobs on this dataset stream the set's tar shards from storage, split
    by rank and DataLoader worker (docs/distributed.md). ``val_fraction`` and ``shots`` do not apply."""
    try:
        sets = load_shard_sets(settings)
    except ShardSetsError as exc:  # the operator's file, not the request: logged, and a 503 to retry later
        log.error("shard sets: %s", exc.message)
        raise ApiError(
            503, "shard_sets_unavailable", "the server's shard-set registry cannot be read"
        ) from None
    shard_set = sets.get(body.shard_set)
    if shard_set is None:
        known = ", ".join(sorted(sets)) or "none registered on this server"
        raise ApiError(
            404, "not_found", f"unknown shard set {body.shard_set!r} (known: {known})", param="shard_set"
        )
    dataset_id = new_id()
    splits = {"train": shard_set.num_samples}
    if shard_set.val is not None:
        splits["val"] = shard_set.val_samples or 1  # counted by the worker; 1 marks "there is one"
    row = repo.create_dataset(
        session=session,
        tenant_id=tenant.id,
        id=dataset_id,
        name=body.name or shard_set.name,
        status="ready",
        num_images=shard_set.num_samples + (shard_set.val_samples or 0),
        num_classes=len(shard_set.classes),
        classes=shard_set.classes,
        splits=splits,
        report={"skipped": [], "trimmed": [], "shard_set": shard_set.name},
        storage_key=f"shard-datasets/{tenant.id}/{dataset_id}",  # holds nothing: deleting it is harmless
    )
    session.commit()
    return DatasetPublic.model_validate(row)


@router.delete(
    "/{dataset_id}",
    status_code=204,
    responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
    name="delete_dataset",
    summary="Delete a dataset",
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
