"""Dataset schemas: the upload's import report and the public dataset."""

from __future__ import annotations

from pydantic import BaseModel, Field

from app.schemas.common import PublicModel, Timestamp


class SkippedFile(BaseModel):
    path: str
    reason: str


class TrimmedFile(BaseModel):
    """An image stored without the bytes that followed its end (a gain map, a motion photo, a polyglot)."""

    path: str
    bytes_removed: int


class DatasetReport(BaseModel):
    skipped: list[SkippedFile] = Field(default_factory=list)
    trimmed: list[TrimmedFile] = Field(default_factory=list)  # empty in reports stored before it existed


class DatasetPublic(PublicModel):
    id: str
    name: str
    status: str
    num_images: int
    num_classes: int
    classes: list[str]
    splits: dict[str, int]
    report: DatasetReport
    created_at: Timestamp
