"""Cursor paging of the list endpoints: the query parameters, the opaque cursor, the page envelope.

A cursor names the last row of the page the client has (its ``created_at`` and ``id``), so the next page
starts right after it however many rows were created since; ``offset`` keeps working for v1 clients
(not together with a cursor). The cursor is base64url JSON: opaque to clients, cheap to check here.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query

from app.api.errors import ApiError
from app.core.db.repo import PageQuery
from app.schemas import MAX_SQL_INTEGER

Row = TypeVar("Row")


def encode_cursor(created_at: datetime, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The ``(created_at, id)`` a cursor names; a 400 ``invalid_cursor`` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, row_id = json.loads(raw)
        when = datetime.fromisoformat(created)
        if not isinstance(row_id, str) or when.tzinfo is None:
            raise ValueError("malformed cursor")
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise ApiError(
            400, "invalid_cursor", "the cursor is not one this API returned (use next_cursor)", param="cursor"
        ) from None
    return when, row_id


def page_query(
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many items")] = 100,
    cursor: Annotated[
        str | None,
        Query(max_length=500, description="next_cursor of the previous page; omit for the first page"),
    ] = None,
    offset: Annotated[
        int | None,
        Query(ge=0, le=MAX_SQL_INTEGER, deprecated=True, description="items to skip (use cursor instead)"),
    ] = None,
) -> PageQuery:
    if cursor is not None and offset:
        raise ApiError(400, "invalid_query", "pass either cursor or offset, not both", param="offset")
    after = decode_cursor(cursor) if cursor is not None else None
    return PageQuery(limit=limit, offset=offset or 0, after=after)


PageDep = Annotated[PageQuery, Depends(page_query)]


def page_of(rows: Sequence[Row], has_more: bool, to_public: Callable[[Row], Any]) -> dict[str, Any]:
    """The envelope (``app.schemas.Page``) of one page of ``created_at``/``id`` rows, newest first."""
    last: Any = rows[-1] if rows else None
    next_cursor = encode_cursor(last.created_at, last.id) if has_more and last is not None else None
    return {"data": [to_public(row) for row in rows], "has_more": has_more, "next_cursor": next_cursor}


def catalogue_page(items: Sequence[Any]) -> dict[str, Any]:
    """A whole catalogue (backbones, methods) in the list envelope: always one page."""
    return {"data": list(items), "has_more": False, "next_cursor": None}
