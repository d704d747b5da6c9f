"""Request and response schemas of the REST API (pydantic), one module per resource.

Create schemas accept only what a client may set (never tenant_id, status, attempts or storage paths);
public schemas expose only what a client may see (never tenant_id, key hashes or storage keys).
"""

from app.schemas.catalogue import BackbonePublic, MethodPublic
from app.schemas.classifiers import (
    CLASSIFIER_MAX_CLASSES,
    CLASSIFIER_MAX_TEMPLATES,
    CLASSIFIER_MAX_TEXT_CHARS,
    ClassifierCreate,
    ClassifierPublic,
)
from app.schemas.common import MAX_SQL_INTEGER, ErrorDetail, ErrorResponse, Page, PublicModel, Timestamp
from app.schemas.datasets import DatasetPublic, DatasetReport, ShardDatasetCreate, SkippedFile, TrimmedFile
from app.schemas.health import CheckResult, ReadyResponse
from app.schemas.jobs import JobCreate, JobError, JobEventPublic, JobPublic
from app.schemas.models import Prediction, PredictionResponse, TopK, TunedModelPublic

__all__ = [
    "CLASSIFIER_MAX_CLASSES",
    "CLASSIFIER_MAX_TEMPLATES",
    "CLASSIFIER_MAX_TEXT_CHARS",
    "MAX_SQL_INTEGER",
    "BackbonePublic",
    "CheckResult",
    "ClassifierCreate",
    "ClassifierPublic",
    "DatasetPublic",
    "DatasetReport",
    "ShardDatasetCreate",
    "ErrorDetail",
    "ErrorResponse",
    "JobCreate",
    "JobError",
    "JobEventPublic",
    "JobPublic",
    "MethodPublic",
    "Page",
    "Prediction",
    "PredictionResponse",
    "PublicModel",
    "ReadyResponse",
    "SkippedFile",
    "Timestamp",
    "TopK",
    "TrimmedFile",
    "TunedModelPublic",
]
