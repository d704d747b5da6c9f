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
    shard_set: str | None = Field(
        default=None,
        description="the operator-registered shard set this dataset streams from (nothing was uploaded)",
    )


class ShardDatasetCreate(BaseModel):
    """A dataset that streams an operator-registered WebDataset shard set (docs/distributed.md)."""

    shard_set: str = Field(min_length=1, max_length=200, description="the registered set's name")
    name: str | None = Field(
        default=None, min_length=1, max_length=200, description="default: the set's name"
    )


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
