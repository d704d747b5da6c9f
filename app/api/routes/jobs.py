"""Training jobs: create (idempotent), list, get, events (JSON or a live SSE stream), cancel."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api.deps import RegistryDep, SessionDep, SettingsDep, TenantDep
from app.api.errors import ApiError, error_responses, not_found
from app.api.paging import PageDep, page_of
from app.core.backbones import BackboneRegistry
from app.core.catalogue import backbone_status
from app.core.db import repo
from app.core.db.tables import Job
from app.core.job_fields import job_world_size
from app.core.job_plan import JobConfigError, build_plan
from app.core.settings import Settings
from app.core.status import TERMINAL_STATUSES, JobStatus
from app.schemas import (
    MAX_SQL_INTEGER,
    ErrorResponse,
    JobCreate,
    JobEventPublic,
    JobPublic,
    Page,
)

log = logging.getLogger("promptune.api")
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=error_responses(401, 422))

SSE_POLL_SECONDS = 0.5
SSE_KEEPALIVE_SECONDS = 15.0
_CONFIG_STATUS = {"not_found": 404}


@router.post(
    "",
    status_code=201,
    response_model=JobPublic,
    responses={
        200: {"model": JobPublic, "description": "a retried create with the same Idempotency-Key"},
        **error_responses(400, 404, 409, 422, 429),
    },
    name="create_job",
    summary="Start a tuning job",
)
def create_job(
    body: JobCreate,
    request: Request,
    response: Response,
    session: SessionDep,
    tenant: TenantDep,
    settings: SettingsDep,
    registry: RegistryDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobPublic:
    if idempotency_key is not None:
        existing = repo.get_job_by_idempotency_key(session=session, tenant_id=tenant.id, key=idempotency_key)
        if existing is not None:
            return _replay(existing, body, response)
    _check_request(body, session=session, tenant_id=tenant.id, settings=settings, registry=registry)
    if (
        repo.count_active_jobs(session=session, tenant_id=tenant.id)
        >= settings.max_concurrent_jobs_per_tenant
    ):
        raise ApiError(
            429,
            "too_many_jobs",
            f"at most {settings.max_concurrent_jobs_per_tenant} queued or running jobs per tenant",
        )
    try:
        job, created = repo.create_job(
            session=session,
            tenant_id=tenant.id,
            method=body.method,
            backbone=body.backbone,
            dataset_id=body.dataset_id,
            config=body.config,
            seed=body.seed,
            metadata=body.metadata,
            max_attempts=settings.job_max_attempts,
            idempotency_key=idempotency_key,
        )
    except repo.IdempotencyConflict:
        raise _idempotency_conflict() from None
    if not created:
        response.status_code = 200
        return JobPublic.from_row(job)
    _enqueue(request, job.id, world_size=job_world_size(job.config))
    return JobPublic.from_row(job)


def _check_request(
    body: JobCreate, *, session: Session, tenant_id: str, settings: Settings, registry: BackboneRegistry
) -> None:
    """Everything a job request must pass before it is stored: its config (the plan the worker will run),
    its dataset, a validation split for ``lr: "auto"``, and a backbone that can load."""
    try:
        plan = build_plan(
            method=body.method,
            backbone=body.backbone,
            config=body.config,
            seed=body.seed,
            specs=registry.specs,
            max_epochs=settings.max_epochs,
            checkpoint_every_steps=settings.checkpoint_every_steps,
            model_exists=lambda model_id, method: _has_model(session, tenant_id, model_id, method),
        )
    except JobConfigError as exc:
        raise ApiError(_CONFIG_STATUS.get(exc.code, 422), exc.code, exc.message, param=exc.param) from None
    dataset = repo.get_dataset(session=session, tenant_id=tenant_id, dataset_id=body.dataset_id)
    if dataset is None:
        raise not_found("dataset", "dataset_id")
    if plan.lr_grid is not None and not (dataset.splits or {}).get("val") and plan.val_fraction == 0:
        raise ApiError(
            422,
            "invalid_config",
            'config.lr: "auto" chooses on the validation split, and this job has none: the dataset has no '
            "val split and config.val_fraction is 0",
            param="config.lr",
        )
    _require_loadable(registry, body.backbone)


def _require_loadable(backbones: BackboneRegistry, name: str) -> None:
    """Refuse a job whose backbone cannot load (not on disk and the hub out of reach): it would only fail
    in the worker, minutes later, with weights_not_found."""
    if not backbone_status(backbones.specs[name], backbones.info_for(name)).available:
        raise ApiError(
            409,
            "backbone_unavailable",
            f"backbone {name!r} cannot load on this server now: its weights are neither on disk nor "
            "downloadable (see GET /v1/backbones for what is available)",
            param="backbone",
        )


def _replay(job: Job, body: JobCreate, response: Response) -> JobPublic:
    values = repo.request_values(
        method=body.method,
        backbone=body.backbone,
        dataset_id=body.dataset_id,
        config=body.config,
        seed=body.seed,
        metadata=body.metadata,
    )
    if not repo.same_request(job, values):
        raise _idempotency_conflict()
    response.status_code = 200
    return JobPublic.from_row(job)


def _idempotency_conflict() -> ApiError:
    return ApiError(
        409,
        "idempotency_conflict",
        "this Idempotency-Key was used with a different request",
        param="Idempotency-Key",
    )


def _has_model(session: Session, tenant_id: str, model_id: str, method: str) -> bool:
    """Whether the tenant has a model ``model_id`` of ``method`` (what ``init_from`` may name)."""
    row = repo.get_model(session=session, tenant_id=tenant_id, model_id=model_id)
    return row is not None and row.method == method


def _enqueue(request: Request, job_id: str, *, world_size: int) -> None:
    try:
        request.app.state.enqueue(job_id, world_size=world_size)
    except Exception:  # noqa: BLE001 - the job stays queued; the worker's reaper re-enqueues it
        log.warning("could not enqueue job %s; it stays queued for the reaper", job_id, exc_info=True)


@router.get("", response_model=Page[JobPublic], summary="List jobs", responses=error_responses(400))
def list_jobs(
    session: SessionDep,
    tenant: TenantDep,
    page: PageDep,
    status: JobStatus | None = None,
    method: Annotated[str | None, Query(max_length=50)] = None,
    backbone: Annotated[str | None, Query(max_length=200)] = None,
    dataset_id: Annotated[str | None, Query(max_length=36)] = None,
) -> dict[str, Any]:
    rows, more = repo.list_jobs(
        session=session,
        tenant_id=tenant.id,
        page=page,
        status=status,
        method=method,
        backbone=backbone,
        dataset_id=dataset_id,
    )
    return page_of(rows, more, JobPublic.from_row)


@router.get(
    "/{job_id}",
    response_model=JobPublic,
    responses={404: {"model": ErrorResponse}},
    name="get_job",
    summary="Get a job",
)
def get_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobPublic:
    job = repo.get_job(session=session, tenant_id=tenant.id, job_id=job_id)
    if job is None:
        raise not_found("job", "job_id")
    return JobPublic.from_row(job)


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}},
    name="cancel_job",
    summary="Cancel a job",
)
def cancel_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobPublic:
    try:
        job = repo.cancel_job(session=session, tenant_id=tenant.id, job_id=job_id)
    except repo.InvalidTransition as exc:
        raise ApiError(409, "job_not_cancellable", f"the job is already {exc}", param="job_id") from None
    if job is None:
        raise not_found("job", "job_id")
    return JobPublic.from_row(job)


@router.get(
    "/{job_id}/events",
    response_model=Page[JobEventPublic],
    name="list_job_events",
    summary="List a job's events, or follow them live (SSE)",
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "a page of events (oldest first), or with `Accept: text/event-stream` a live SSE "
            "stream that ends once the job is terminal and every event was sent",
        },
        **error_responses(400, 404),
    },
)
def job_events(
    job_id: str,
    request: Request,
    session: SessionDep,
    tenant: TenantDep,
    after: int = Query(0, ge=0, le=MAX_SQL_INTEGER, description="only events with a larger id"),
    cursor: Annotated[
        str | None, Query(max_length=20, description="next_cursor of the previous page")
    ] = None,
    limit: int = Query(1000, ge=1, le=10000),
    last_event_id: Annotated[str | None, Header()] = None,
) -> object:
    job = repo.get_job(session=session, tenant_id=tenant.id, job_id=job_id)
    if job is None:
        raise not_found("job", "job_id")
    after = max(after, _event_cursor(cursor))
    if "text/event-stream" in request.headers.get("accept", ""):
        if last_event_id is not None and last_event_id.isascii() and last_event_id.isdigit():
            after = max(after, min(int(last_event_id), MAX_SQL_INTEGER))
        return StreamingResponse(
            _event_stream(request, job_id, after),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    events = repo.list_job_events(session=session, job_id=job_id, after=after, limit=limit + 1)
    more = len(events) > limit
    data = [JobEventPublic.model_validate(e) for e in events[:limit]]
    return {"data": data, "has_more": more, "next_cursor": str(data[-1].id) if more else None}


def _event_cursor(cursor: str | None) -> int:
    """An events cursor is the id of the last event the client has (the pages are oldest first)."""
    if cursor is None:
        return 0
    if not (cursor.isascii() and cursor.isdigit()) or int(cursor) > MAX_SQL_INTEGER:
        raise ApiError(400, "invalid_cursor", "the cursor is not one this API returned", param="cursor")
    return int(cursor)


def _poll(request: Request, job_id: str, after: int) -> tuple[list[JobEventPublic], bool]:
    with request.app.state.sessionmaker() as session:
        events = repo.list_job_events(session=session, job_id=job_id, after=after, limit=500)
        job = session.get(Job, job_id)
        done = job is None or job.status in TERMINAL_STATUSES
        return [JobEventPublic.model_validate(e) for e in events], done


async def _event_stream(request: Request, job_id: str, after: int) -> AsyncIterator[str]:
    """Poll the database; emit each event once; end after the job is terminal and drained."""
    loop = asyncio.get_running_loop()
    last_sent = loop.time()
    while True:
        events, done = await run_in_threadpool(_poll, request, job_id, after)
        for event in events:
            after = event.id
            payload = json.dumps(event.model_dump(mode="json"))
            yield f"id: {event.id}\nevent: {event.type}\ndata: {payload}\n\n"
            last_sent = loop.time()
        if done and not events:
            return
        if events:
            continue  # drain a backlog without waiting
        if loop.time() - last_sent > SSE_KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            last_sent = loop.time()
        if await request.is_disconnected():
            return
        await asyncio.sleep(SSE_POLL_SECONDS)
