"""Job schemas: the create request, the public job and its events."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.core.status import JobStatus
from app.schemas.common import PublicModel, Timestamp


class JobCreate(BaseModel):
    """``config`` is validated per method by app.core.job_plan (unknown fields -> invalid_config)."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field(min_length=1, max_length=50, description="a registered method (GET /v1/methods)")
    backbone: str = Field(min_length=1, max_length=200)
    dataset_id: str = Field(min_length=1, max_length=36)
    config: dict[str, Any] = Field(default_factory=dict)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    metadata: dict[str, Any] = Field(default_factory=dict)


class JobError(BaseModel):
    code: str
    message: str


class JobPublic(BaseModel):
    id: str
    method: str
    backbone: str
    dataset_id: str | None
    config: dict[str, Any]
    seed: int
    metadata: dict[str, Any]
    status: JobStatus
    phase: str | None
    progress: float
    metrics: dict[str, Any]
    error: JobError | None
    model_id: str | None
    attempts: int
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    updated_at: Timestamp

    @classmethod
    def from_row(cls, job: Any) -> JobPublic:
        error = JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None
        return cls(
            id=job.id,
            method=job.method,
            backbone=job.backbone,
            dataset_id=job.dataset_id,
            config=job.config or {},
            seed=job.seed,
            metadata=job.job_metadata or {},
            status=job.status,
            phase=job.phase,
            progress=job.progress,
            metrics=job.metrics or {},
            error=error,
            model_id=job.model_id,
            attempts=job.attempts,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            updated_at=job.updated_at,
        )


class JobEventPublic(PublicModel):
    id: int
    created_at: Timestamp
    level: str
    type: str
    message: str
    data: dict[str, Any]
