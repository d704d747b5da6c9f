"""A tenant's zero-shot classifiers (their text features live in storage, app/text_features.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.db.repo.common import PageQuery, insert_once, owned_page
from app.core.db.tables import Classifier


def get_classifier(*, session: Session, tenant_id: str, classifier_id: str) -> Classifier | None:
    return session.scalar(
        select(Classifier).where(Classifier.id == classifier_id, Classifier.tenant_id == tenant_id)
    )


def list_classifiers(
    *, session: Session, tenant_id: str, page: PageQuery = PageQuery(), backbone: str | None = None
) -> tuple[Sequence[Classifier], bool]:
    conditions = () if backbone is None else (Classifier.backbone == backbone,)
    return owned_page(session, Classifier, tenant_id, page, *conditions)


def get_classifier_by_idempotency_key(*, session: Session, tenant_id: str, key: str) -> Classifier | None:
    return session.scalar(
        select(Classifier).where(Classifier.tenant_id == tenant_id, Classifier.idempotency_key == key)
    )


def create_classifier_once(
    *,
    session: Session,
    tenant_id: str,
    idempotency_key: str | None,
    request_sha256: str | None,
    **values: Any,
) -> tuple[Classifier, bool]:
    """Insert a classifier and commit; returns (classifier, created).

    Like :func:`create_dataset_once`: a concurrent create with the same idempotency key that lost the race
    on the unique index gets the winner's row (created=False), or :class:`IdempotencyConflict` when the
    winner was created from a different request.
    """
    row = Classifier(
        tenant_id=tenant_id, idempotency_key=idempotency_key, request_sha256=request_sha256, **values
    )
    return insert_once(
        session,
        row,
        idempotency_key,
        lambda key: get_classifier_by_idempotency_key(session=session, tenant_id=tenant_id, key=key),
        lambda existing: existing.request_sha256 == request_sha256,
    )


def text_features_in_use(*, session: Session, tenant_id: str, key: str) -> bool:
    """Whether a classifier of the tenant uses the stored text features ``key``."""
    query = select(func.count(Classifier.id)).where(
        Classifier.tenant_id == tenant_id, Classifier.text_features_key == key
    )
    return bool(session.scalar(query))


def delete_classifier(*, session: Session, tenant_id: str, classifier_id: str) -> None:
    row = get_classifier(session=session, tenant_id=tenant_id, classifier_id=classifier_id)
    if row is not None:
        session.delete(row)
        session.flush()
