"""A tenant's jobs and their events (the worker's transitions are in worker/state.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.db.repo.common import (
    IdempotencyConflict,
    InvalidTransition,
    PageQuery,
    idempotency_race_winner,
    owned_page,
)
from app.core.db.tables import Job, JobEvent, utcnow
from app.core.status import ACTIVE_STATUSES, JobStatus


def same_request(job: Job, values: dict[str, Any]) -> bool:
    """Whether ``job`` was created from these request values (for Idempotency-Key replays)."""
    return all(getattr(job, name) == value for name, value in values.items())


def request_values(
    *,
    method: str,
    backbone: str,
    dataset_id: str,
    config: dict[str, Any],
    seed: int,
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """The client-supplied fields of a job, keyed by column attribute."""
    return {
        "method": method,
        "backbone": backbone,
        "dataset_id": dataset_id,
        "config": config,
        "seed": seed,
        "job_metadata": metadata,
    }


def get_job_by_idempotency_key(*, session: Session, tenant_id: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))


def create_job(
    *,
    session: Session,
    tenant_id: str,
    method: str,
    backbone: str,
    dataset_id: str,
    config: dict[str, Any],
    seed: int,
    metadata: dict[str, Any],
    max_attempts: int,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Insert a queued job; returns (job, created).

    With an idempotency key, a retry returns the existing job (created=False). Concurrent duplicates race
    on the unique (tenant_id, idempotency_key) constraint: the loser rolls back its insert and re-reads.
    A key reused with a different request raises :class:`IdempotencyConflict`. Commits the transaction.
    """
    values = request_values(
        method=method, backbone=backbone, dataset_id=dataset_id, config=config, seed=seed, metadata=metadata
    )
    if idempotency_key is not None:
        existing = get_job_by_idempotency_key(session=session, tenant_id=tenant_id, key=idempotency_key)
        if existing is not None:
            if not same_request(existing, values):
                raise IdempotencyConflict(idempotency_key)
            return existing, False
    job = Job(tenant_id=tenant_id, idempotency_key=idempotency_key, max_attempts=max_attempts, **values)
    session.add(job)
    try:
        session.flush()
        queued = {"status": JobStatus.QUEUED}
        session.add(JobEvent(job_id=job.id, type="status", message="job queued", data=queued))
        session.commit()
    except IntegrityError as exc:
        winner = idempotency_race_winner(
            session,
            exc,
            idempotency_key,
            lambda key: get_job_by_idempotency_key(session=session, tenant_id=tenant_id, key=key),
            lambda row: same_request(row, values),
        )
        return winner, False
    return job, True


def get_job(*, session: Session, tenant_id: str, job_id: str) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))


def list_jobs(
    *,
    session: Session,
    tenant_id: str,
    page: PageQuery = PageQuery(),
    status: str | None = None,
    method: str | None = None,
    backbone: str | None = None,
    dataset_id: str | None = None,
) -> tuple[Sequence[Job], bool]:
    filters = {Job.status: status, Job.method: method, Job.backbone: backbone, Job.dataset_id: dataset_id}
    conditions = [column == value for column, value in filters.items() if value is not None]
    return owned_page(session, Job, tenant_id, page, *conditions)


def count_active_jobs(*, session: Session, tenant_id: str) -> int:
    query = select(func.count(Job.id)).where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE_STATUSES))
    return int(session.scalar(query) or 0)


def cancel_job(*, session: Session, tenant_id: str, job_id: str) -> Job | None:
    """Cancel a job: queued -> cancelled at once; running -> cancel_requested (the worker stops).

    Both are compare-and-set updates, so a worker claiming the job at the same moment cannot be overwritten.
    Raises :class:`InvalidTransition` for a terminal job; returns None for an unknown job. Commits.
    """
    now = utcnow()
    owned = (Job.id == job_id, Job.tenant_id == tenant_id)
    result = session.execute(
        update(Job)
        .where(*owned, Job.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.CANCELLED,
            cancel_requested=True,
            finished_at=now,
            updated_at=now,
            error_code="cancelled_by_user",
            error_message="cancelled before it started",
        )
    )
    changed = bool(result.rowcount)  # type: ignore[attr-defined]
    if changed:
        session.add(
            JobEvent(
                job_id=job_id, type="status", message="job cancelled", data={"status": JobStatus.CANCELLED}
            )
        )
    else:
        result = session.execute(
            update(Job)
            .where(*owned, Job.status == JobStatus.RUNNING)
            .values(cancel_requested=True, updated_at=now)
        )
        changed = bool(result.rowcount)  # type: ignore[attr-defined]
        if changed:
            session.add(JobEvent(job_id=job_id, type="message", message="cancellation requested", data={}))
    session.commit()
    job = get_job(session=session, tenant_id=tenant_id, job_id=job_id)
    if job is None:
        return None
    session.refresh(job)
    if not changed:
        raise InvalidTransition(job.status)
    return job


def list_job_events(
    *, session: Session, job_id: str, after: int = 0, limit: int = 1000
) -> Sequence[JobEvent]:
    """Events of a job (the caller has checked the job belongs to its tenant), oldest first."""
    query = (
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.id > after)
        .order_by(JobEvent.id)
        .limit(limit)
    )
    return session.scalars(query).all()


def add_job_event(
    *,
    session: Session,
    job_id: str,
    message: str,
    type: str = "message",
    level: str = "info",
    data: dict[str, Any] | None = None,
) -> JobEvent:
    event = JobEvent(job_id=job_id, type=type, level=level, message=message, data=data or {})
    session.add(event)
    session.flush()
    return event


def count_jobs_by_status(*, session: Session) -> dict[str, int]:
    """Job counts per status over all tenants (for /metrics)."""
    rows = session.execute(select(Job.status, func.count(Job.id)).group_by(Job.status)).all()
    return {status: int(count) for status, count in rows}
