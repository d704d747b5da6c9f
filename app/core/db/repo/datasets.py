"""A tenant's datasets (their files live in storage under the row's storage_key)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.db.repo.common import PageQuery, insert_once, owned_page
from app.core.db.tables import Dataset, Job
from app.core.status import ACTIVE_STATUSES


def create_dataset(*, session: Session, tenant_id: str, **values: Any) -> Dataset:
    dataset = Dataset(tenant_id=tenant_id, **values)
    session.add(dataset)
    session.flush()
    return dataset


def list_datasets(
    *, session: Session, tenant_id: str, page: PageQuery = PageQuery()
) -> tuple[Sequence[Dataset], bool]:
    return owned_page(session, Dataset, tenant_id, page)


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
    return insert_once(
        session,
        dataset,
        idempotency_key,
        lambda key: get_dataset_by_idempotency_key(session=session, tenant_id=tenant_id, key=key),
        lambda row: same_upload(row, name=name, upload_sha256=upload_sha256),
    )
