"""A tenant's tuned models (their checkpoints live in storage under checkpoint_key)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.db.repo.common import PageQuery, owned_page
from app.core.db.tables import Job, TunedModel
from app.core.status import ACTIVE_STATUSES


def list_models(
    *,
    session: Session,
    tenant_id: str,
    page: PageQuery = PageQuery(),
    method: str | None = None,
    backbone: str | None = None,
    job_id: str | None = None,
) -> tuple[Sequence[TunedModel], bool]:
    filters = {TunedModel.method: method, TunedModel.backbone: backbone, TunedModel.job_id: job_id}
    conditions = [column == value for column, value in filters.items() if value is not None]
    return owned_page(session, TunedModel, tenant_id, page, *conditions)


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
