"""What the schema modules share: the error shape, the page envelope, timestamps, the SQL integer bound."""

from __future__ import annotations

from datetime import datetime
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

# Timestamps come from UTCDateTime columns (app/core/db/types.py): always timezone-aware UTC.
Timestamp = datetime

# The largest integer a query parameter may carry into SQL (found by schemathesis: larger ones were 500s).
# SQLite overflows above 2**63 - 1 (offset); PostgreSQL compares the events cursor with job_events.id,
# a 32-bit INTEGER. One bound for both: nobody pages past 2**31 rows.
MAX_SQL_INTEGER = 2**31 - 1


class PublicModel(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorDetail(BaseModel):
    code: str
    message: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


Item = TypeVar("Item")


class Page(BaseModel, Generic[Item]):
    """One page of a list, newest first. Pass ``next_cursor`` as ``cursor`` to get the next page."""

    data: list[Item]
    has_more: bool = Field(description="whether another page follows this one")
    next_cursor: str | None = Field(description="the cursor of the next page; null on the last page")
