"""Tenant-scoped repository functions used by the API and the CLI.

Every function is keyword-only and every query on tenant-owned rows filters on ``tenant_id``: another
tenant's object is simply "not found" (OWASP API1). Functions flush but do not commit; the caller
(a request's session dependency, or the CLI's ``session_scope``) owns the transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.db.tables import ApiKey, Dataset, Job, JobEvent, Tenant, TunedModel, utcnow
from app.core.security import generate_key, parse_prefix, verify_key
from app.core.status import ACTIVE_STATUSES, JobStatus

# Writing last_used_at on every request would serialise all readers on SQLite; a minute is precise enough.
LAST_USED_RESOLUTION = timedelta(seconds=60)


class IdempotencyConflict(Exception):
    """The Idempotency-Key was already used with a different request body."""


class InvalidTransition(Exception):
    """The job is in a state that does not allow the requested change."""


Owned = TypeVar("Owned", Dataset, Job, TunedModel)
Keyed = TypeVar("Keyed", Dataset, Job)  # the tables with an Idempotency-Key


def _owned_page(
    session: Session, table: type[Owned], tenant_id: str, limit: int, offset: int, *conditions: Any
) -> Sequence[Owned]:
    """One page of a tenant's rows, newest first (id breaks ties so pages are stable)."""
    query = (
        select(table)
        .where(table.tenant_id == tenant_id, *conditions)
        .order_by(table.created_at.desc(), table.id)
        .limit(limit)
        .offset(offset)
    )
    return session.scalars(query).all()


# ---- tenants and keys ----------------------------------------------------------------------------
def create_tenant(*, session: Session, name: str) -> Tenant:
    tenant = Tenant(name=name)
    session.add(tenant)
    session.flush()
    return tenant


def get_tenant_by_name(*, session: Session, name: str) -> Tenant | None:
    return session.scalar(select(Tenant).where(Tenant.name == name))


def get_or_create_tenant(*, session: Session, name: str) -> Tenant:
    return get_tenant_by_name(session=session, name=name) or create_tenant(session=session, name=name)


def create_api_key(*, session: Session, tenant_id: str) -> tuple[ApiKey, str]:
    """Create a key for the tenant. Returns the row and the plaintext key (show it once; it is not stored)."""
    new = generate_key()
    row = ApiKey(tenant_id=tenant_id, prefix=new.prefix, key_sha256=new.sha256)
    session.add(row)
    session.flush()
    return row, new.key


def list_api_keys(*, session: Session, tenant_id: str) -> Sequence[ApiKey]:
    return session.scalars(
        select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at)
    ).all()


def revoke_api_key(*, session: Session, tenant_id: str, prefix: str) -> bool:
    row = session.scalar(select(ApiKey).where(ApiKey.tenant_id == tenant_id, ApiKey.prefix == prefix))
    if row is None:
        return False
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return True


def authenticate(*, session: Session, key: str) -> Tenant | None:
    """The tenant owning a live key, or None. Constant-time compare; a dummy compare for unknown keys."""
    prefix = parse_prefix(key)
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix)) if prefix else None
    if not verify_key(key, row.key_sha256 if row is not None else None):
        return None
    assert row is not None
    if row.revoked_at is not None:
        return None
    now = utcnow()
    last = row.last_used_at
    if last is None or now - last > LAST_USED_RESOLUTION:
        row.last_used_at = now
        session.flush()
    return session.get(Tenant, row.tenant_id)


# ---- datasets ------------------------------------------------------------------------------------
def create_dataset(*, session: Session, tenant_id: str, **values: Any) -> Dataset:
    dataset = Dataset(tenant_id=tenant_id, **values)
    session.add(dataset)
    session.flush()
    return dataset


def list_datasets(
    *, session: Session, tenant_id: str, limit: int = 100, offset: int = 0
) -> Sequence[Dataset]:
    return _owned_page(session, Dataset, tenant_id, limit, offset)


def get_dataset(*, session: Session, tenant_id: str, dataset_id: str) -> Dataset | None:
    return session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.tenant_id == tenant_id))


def dataset_in_use(*, session: Session, tenant_id: str, dataset_id: str) -> bool:
    query = select(func.count(Job.id)).where(
        Job.tenant_id == tenant_id, Job.dataset_id == dataset_id, Job.status.in_(ACTIVE_STATUSES)
    )
    return bool(session.scalar(query))


def delete_dataset(*, session: Session, tenant_id: str, dataset_id: str) -> None:
    dataset = get_dataset(session=session, tenant_id=tenant_id, dataset_id=dataset_id)
    if dataset is not None:
        session.delete(dataset)
        session.flush()


def get_dataset_by_idempotency_key(*, session: Session, tenant_id: str, key: str) -> Dataset | None:
    return session.scalar(
        select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.idempotency_key == key)
    )


def same_upload(dataset: Dataset, *, name: str, upload_sha256: str | None) -> bool:
    """Whether ``dataset`` was created from this upload (for Idempotency-Key replays)."""
    return dataset.name == name and dataset.upload_sha256 == upload_sha256


def create_dataset_once(
    *,
    session: Session,
    tenant_id: str,
    name: str,
    idempotency_key: str | None,
    upload_sha256: str | None,
    **values: Any,
) -> tuple[Dataset, bool]:
    """Insert a dataset row and commit; returns (dataset, created).

    Concurrent uploads with one idempotency key race on the unique (tenant_id, idempotency_key) index: the
    loser rolls back its insert and gets the winner's row (created=False), or :class:`IdempotencyConflict`
    when the winner stored a different upload. The caller removes the loser's stored files.
    """
    dataset = Dataset(
        tenant_id=tenant_id, name=name, idempotency_key=idempotency_key, upload_sha256=upload_sha256, **values
    )
    session.add(dataset)
    try:
        session.commit()
    except IntegrityError as exc:
        winner = _idempotency_race_winner(
            session,
            exc,
            idempotency_key,
            lambda key: get_dataset_by_idempotency_key(session=session, tenant_id=tenant_id, key=key),
            lambda row: same_upload(row, name=name, upload_sha256=upload_sha256),
        )
        return winner, False
    return dataset, True


def _idempotency_race_winner(
    session: Session,
    error: IntegrityError,
    key: str | None,
    lookup: Callable[[str], Keyed | None],
    same: Callable[[Keyed], bool],
) -> Keyed:
    """The row that won a race on the unique (tenant_id, idempotency_key) index, after our insert lost.

    Rolls our insert back; re-raises ``error`` when it was not that race, and raises
    :class:`IdempotencyConflict` when the winner was created from a different request.
    """
    session.rollback()
    existing = lookup(key) if key is not None else None
    if existing is None:
        raise error
    if not same(existing):
        raise IdempotencyConflict(key) from None
    return existing


# ---- jobs ----------------------------------------------------------------------------------------
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
        winner = _idempotency_race_winner(
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
    *, session: Session, tenant_id: str, status: str | None = None, limit: int = 100, offset: int = 0
) -> Sequence[Job]:
    conditions = () if status is None else (Job.status == status,)
    return _owned_page(session, Job, tenant_id, limit, offset, *conditions)


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


# ---- tuned models --------------------------------------------------------------------------------
def list_models(
    *, session: Session, tenant_id: str, limit: int = 100, offset: int = 0
) -> Sequence[TunedModel]:
    return _owned_page(session, TunedModel, tenant_id, limit, offset)


def get_model(*, session: Session, tenant_id: str, model_id: str) -> TunedModel | None:
    return session.scalar(
        select(TunedModel).where(TunedModel.id == model_id, TunedModel.tenant_id == tenant_id)
    )


def create_model(*, session: Session, tenant_id: str, **values: Any) -> TunedModel:
    row = TunedModel(tenant_id=tenant_id, **values)
    session.add(row)
    session.flush()
    return row


def model_in_use(*, session: Session, tenant_id: str, model_id: str) -> bool:
    """Whether a queued or running job of the tenant names ``model_id`` in its ``config.init_from``."""
    configs = session.scalars(
        select(Job.config).where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE_STATUSES))
    ).all()  # at most the tenant's concurrent-job cap; JSON paths differ between SQLite and PostgreSQL
    return any(isinstance(config, dict) and config.get("init_from") == model_id for config in configs)


def delete_model(*, session: Session, tenant_id: str, model_id: str) -> None:
    row = get_model(session=session, tenant_id=tenant_id, model_id=model_id)
    if row is not None:
        session.delete(row)
        session.flush()
