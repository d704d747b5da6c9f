"""Promptune's Python SDK: upload datasets, train prompt-tuning jobs, follow them live, predict, download.

    from promptune import Client

    with Client() as client:  # PROMPTUNE_BASE_URL, PROMPTUNE_API_KEY
        dataset = client.datasets.upload("digits/")
        job = client.jobs.create(method="spt", backbone="demo-vit", dataset_id=dataset.id)
        job = client.jobs.wait(job.id, on_event=print)

It depends on httpx and the standard library only (docs/sdk.md).
"""

from promptune._client import Client
from promptune._errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    PromptuneError,
    RateLimitError,
    ServiceUnavailableError,
    UnprocessableEntityError,
    UnsupportedMediaTypeError,
)
from promptune._transport import Backoff
from promptune._types import (
    Backbone,
    ClassMetrics,
    Dataset,
    Job,
    JobError,
    JobEvent,
    Method,
    Page,
    Prediction,
    Report,
    TopK,
    TunedModel,
)
from promptune._version import __version__

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "Backbone",
    "Backoff",
    "BadRequestError",
    "ClassMetrics",
    "Client",
    "ConflictError",
    "Dataset",
    "InternalServerError",
    "Job",
    "JobError",
    "JobEvent",
    "Method",
    "NotFoundError",
    "Page",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "Prediction",
    "PromptuneError",
    "RateLimitError",
    "Report",
    "ServiceUnavailableError",
    "TopK",
    "TunedModel",
    "UnprocessableEntityError",
    "UnsupportedMediaTypeError",
    "__version__",
]
