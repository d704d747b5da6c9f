"""What the repository modules share: their errors, one page of a tenant's rows, Idempotency-Key races."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.db.tables import Classifier, Dataset, Job, TunedModel


class IdempotencyConflict(Exception):
    """The Idempotency-Key was already used with a different request body."""


class InvalidTransition(Exception):
    """The job is in a state that does not allow the requested change."""


Owned = TypeVar("Owned", Dataset, Job, TunedModel, Classifier)
Keyed = TypeVar("Keyed", Dataset, Job, Classifier)  # the tables with an Idempotency-Key


@dataclasses.dataclass(frozen=True)
class PageQuery:
    """Which page of a list: ``limit`` rows after the row ``after`` (cursor paging) or after ``offset`` rows.

    ``after`` is the ``(created_at, id)`` of the previous page's last row: rows created meanwhile do not
    shift the pages that follow, as they do with ``offset`` (kept for v1 clients).
    """

    limit: int = 100
    offset: int = 0
    after: tuple[datetime, str] | None = None


def owned_page(
    session: Session, table: type[Owned], tenant_id: str, page: PageQuery, *conditions: Any
) -> tuple[Sequence[Owned], bool]:
    """One page of a tenant's rows, newest first (id breaks ties so pages are stable), and whether more follow."""
    query = select(table).where(table.tenant_id == tenant_id, *conditions)
    if page.after is not None:
        created, row_id = page.after
        query = query.where(
            or_(table.created_at < created, and_(table.created_at == created, table.id > row_id))
        )
    query = query.order_by(table.created_at.desc(), table.id).limit(page.limit + 1).offset(page.offset)
    rows = session.scalars(query).all()
    return rows[: page.limit], len(rows) > page.limit


def idempotency_race_winner(
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


def insert_once(
    session: Session,
    row: Keyed,
    key: str | None,
    lookup: Callable[[str], Keyed | None],
    same: Callable[[Keyed], bool],
) -> tuple[Keyed, bool]:
    """Insert ``row`` and commit; ``(row, True)``, or the race winner's row and False (see
    :func:`idempotency_race_winner`) when the unique (tenant_id, idempotency_key) index refused it."""
    session.add(row)
    try:
        session.commit()
    except IntegrityError as exc:
        return idempotency_race_winner(session, exc, key, lookup, same), False
    return row, True
