"""Request and response schemas of the REST API (pydantic).

Create schemas accept only what a client may set (never tenant_id, status, attempts or storage paths);
public schemas expose only what a client may see (never tenant_id, key hashes or storage keys).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.core.status import JobStatus

# Timestamps come from UTCDateTime columns (app/core/db/types.py): always timezone-aware UTC.
Timestamp = datetime

# The largest integer a query parameter may carry into SQL (found by schemathesis: larger ones were 500s).
# SQLite overflows above 2**63 - 1 (offset); PostgreSQL compares the events cursor with job_events.id,
# a 32-bit INTEGER. One bound for both: nobody pages past 2**31 rows.
MAX_SQL_INTEGER = 2**31 - 1


class _Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorDetail(BaseModel):
    code: str
    message: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# ---- datasets ------------------------------------------------------------------------------------
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


class DatasetPublic(_Public):
    id: str
    name: str
    status: str
    num_images: int
    num_classes: int
    classes: list[str]
    splits: dict[str, int]
    report: DatasetReport
    created_at: Timestamp


# ---- backbones -----------------------------------------------------------------------------------
class BackbonePublic(BaseModel):
    name: str
    family: str
    arch: str
    weights: str
    kind: str
    available: bool


# ---- methods -------------------------------------------------------------------------------------
class MethodPublic(BaseModel):
    name: str
    family: str = Field(description="the backbone family it runs on: open_clip or timm")
    description: str
    capabilities: dict[str, bool] = Field(
        description="zero_shot: classifies arbitrary class names; init_from: can start from another model"
    )
    config_schema: dict[str, Any] = Field(description="JSON Schema of the job's config for this method")


# ---- jobs ----------------------------------------------------------------------------------------
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


class JobEventPublic(_Public):
    id: int
    created_at: Timestamp
    level: str
    type: str
    message: str
    data: dict[str, Any]


# ---- tuned models and predictions ----------------------------------------------------------------
class TunedModelPublic(_Public):
    id: str
    method: str
    backbone: str
    classes: list[str]
    metrics: dict[str, Any]
    job_id: str | None
    created_at: Timestamp
    checkpoint_sha256: str


class TopK(BaseModel):
    label: str
    score: float


class Prediction(BaseModel):
    label: str
    score: float
    top_k: list[TopK]


class PredictionResponse(BaseModel):
    predictions: list[Prediction]


# ---- health --------------------------------------------------------------------------------------
class CheckResult(BaseModel):
    ok: bool
    error: str | None = None


class ReadyResponse(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, CheckResult]


# ---- zero-shot classifiers -----------------------------------------------------------------------
CLASSIFIER_MAX_CLASSES = 1000  # the same limits as /v1/predict/zero-shot
CLASSIFIER_MAX_TEMPLATES = 64
CLASSIFIER_MAX_TEXT_CHARS = 200
ClassifierText = Annotated[
    str,
    Field(min_length=1, max_length=CLASSIFIER_MAX_TEXT_CHARS, description="surrounding spaces are removed"),
]


def _clean_text(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError(f"{what} must not be blank")
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be valid Unicode text") from None
    return value


class ClassifierCreate(BaseModel):
    """A zero-shot classifier: its text features are computed (or found in the store) at creation."""

    model_config = ConfigDict(extra="forbid")

    classes: list[ClassifierText] = Field(
        min_length=1, max_length=CLASSIFIER_MAX_CLASSES, description="unique, non-empty class names"
    )
    templates: list[ClassifierText] | None = Field(
        default=None,
        min_length=1,
        max_length=CLASSIFIER_MAX_TEMPLATES,
        description="prompt templates, each with \"{}\" exactly once (default: the server's, or the model's)",
    )
    backbone: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="an open_clip backbone (default: the server's; with model_id, the model's)",
    )
    model_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=36,
        description="a tuned model of a zero-shot method (e.g. rpp) whose prompts classify",
    )
    name: str | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, value: list[str]) -> list[str]:
        cleaned = [_clean_text(v, "class names") for v in value]
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("class names must be unique")
        return cleaned

    @field_validator("templates")
    @classmethod
    def _one_placeholder(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        cleaned = [_clean_text(v, "templates") for v in value]
        if any(t.count("{}") != 1 for t in cleaned):
            raise ValueError('every template must contain "{}" exactly once')
        return cleaned

    @field_validator("backbone", "model_id", "name")
    @classmethod
    def _plain_text(cls, value: str | None) -> str | None:
        return None if value is None else _clean_text(value, "the value")


class ClassifierPublic(BaseModel):
    id: str
    name: str | None
    backbone: str
    classes: list[str]
    templates: list[str]
    model_id: str | None
    num_classes: int
    created_at: Timestamp
    text_features_sha256: str = Field(
        description="sha256 naming the text features (backbone weights, classes, templates, prompts)"
    )
    text_features_cached: bool = Field(description="found already computed, rather than computed at creation")
    text_features_seconds: float = Field(description="what computing (or loading) the text features took")

    @classmethod
    def from_row(cls, row: Any) -> ClassifierPublic:
        return cls(
            id=row.id,
            name=row.name,
            backbone=row.backbone,
            classes=list(row.classes),
            templates=list(row.templates),
            model_id=row.model_id,
            num_classes=len(row.classes),
            created_at=row.created_at,
            text_features_sha256=row.text_features_sha256,
            text_features_cached=row.text_features_cached,
            text_features_seconds=row.text_features_seconds,
        )
